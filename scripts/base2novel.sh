#!/usr/bin/env bash
# FedPGP Table 1, base-to-novel: train on the base classes, Local / Base / Novel / HM.
#   bash scripts/base2novel.sh DATASET SEED [METHOD ...]      e.g. bash scripts/base2novel.sh oxford_pets 1
# DATASET: oxford_pets oxford_flowers dtd caltech101 food101. Seeds of the paper: 1 2 3.
# Environment: DATA (data root, default DATA/), OUTPUT, BACKBONE, DRY_RUN=1 (scripts/table.sh).
FAMILY=base2novel.sh exec bash "$(dirname "$0")/table.sh" table1_base2novel.py "$@"
