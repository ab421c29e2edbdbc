#!/usr/bin/env bash
# FedPGP Tables 2 and 4, leave-one-domain-out on the multi-domain datasets.
#   bash scripts/domains.sh DATASET SEED [METHOD ...]      e.g. bash scripts/domains.sh office 1
# DATASET: office domainnet. Seeds of the paper: 1.
# Environment: DATA (data root, default DATA/), OUTPUT, BACKBONE, DRY_RUN=1 (scripts/table.sh).
FAMILY=domains.sh exec bash "$(dirname "$0")/table.sh" table2_4_leave_one_domain_out.py "$@"
