#!/usr/bin/env bash
# FedPGP Table 5, CIFAR with Dirichlet label skew (100 clients, 10 % per round).
#   bash scripts/cifar.sh DATASET SEED [METHOD ...]      e.g. bash scripts/cifar.sh cifar100 1
# DATASET: cifar10 cifar100. Seeds of the paper: 1 2 3.
# Environment: DATA (data root, default DATA/), OUTPUT, BACKBONE, DRY_RUN=1 (scripts/table.sh).
FAMILY=cifar.sh exec bash "$(dirname "$0")/table.sh" table5_cifar_dirichlet.py "$@"
