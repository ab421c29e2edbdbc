#!/usr/bin/env bash
# FLoRA's IID / non-IID table: the LoRA family (FedFFT, FedLC, FedAA, FLoRA, CE-LoRA).
#   bash scripts/lora.sh DATASET SEED [METHOD ...]      e.g. bash scripts/lora.sh cifar10 1
# DATASET: cifar10 cifar100 tiny_imagenet oxford_pets oxford_flowers fgvc_aircraft dtd eurosat fashion_mnist. Seeds of the paper: 1.
# Environment: DATA (data root, default DATA/), OUTPUT, BACKBONE, DRY_RUN=1 (scripts/table.sh).
FAMILY=lora.sh exec bash "$(dirname "$0")/table.sh" flora_iid_noniid.py "$@"
