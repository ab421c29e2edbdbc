#!/usr/bin/env bash
# The shared body of the per-family scripts (scripts/base2novel.sh, domains.sh, cifar.sh, lora.sh):
#   bash scripts/table.sh TABLE_SCRIPT DATASET SEED [METHOD ...]
# runs one dataset and one seed of a paper table (every method of the table, or the ones named), then
# writes the table over everything finished under the output root. Finished runs are skipped.
# Environment: DATA (data root, default DATA/), OUTPUT (output root, default the table's),
# BACKBONE (default the table's, ViT-B/16 for most), DRY_RUN=1 (print the commands only).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bash scripts/$(basename "${FAMILY:-table.sh}") DATASET SEED [METHOD ...]"
script=${1:?$usage}
dataset=${2:?$usage}
seed=${3:?$usage}
shift 3
args=(--root "${DATA:-DATA/}" --datasets "$dataset" --seeds "$seed")
[ -n "${OUTPUT:-}" ] && args+=(--output-root "$OUTPUT")
[ -n "${BACKBONE:-}" ] && args+=(--backbone "$BACKBONE")
[ $# -gt 0 ] && args+=(--methods "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then
    exec python "scripts/$script" "${args[@]}" --dry-run
fi
exec python "scripts/$script" "${args[@]}" --report
