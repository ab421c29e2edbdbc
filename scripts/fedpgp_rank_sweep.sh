#!/usr/bin/env bash
# FedPGP paper Table 11: Local accuracy over the rank of U V (BOTTLENECK 1 2 4 8) x shots (1 2 4 8 16),
# 10 clients, pathological split of ALL classes (the deleted published plot_few_shot.sh: subsample
# all, mu 0.5), 25 rounds of 2 local epochs, batch = shots as in the published scripts.
# A finished run (results.json present) is skipped, so the script can be re-run after an interruption.
#
#   DATA=/path/to/DATA SEEDS="1 2 3" bash scripts/fedpgp_rank_sweep.sh
#   DATASETS="toyworld" BACKBONE=tiny bash scripts/fedpgp_rank_sweep.sh   # offline smoke version
#
# Read the results with: python -m json.tool output_fedpgp/rank_sweep/<...>/results.json (final.local,
# mean_last5_local).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-DATA/}
DATASETS=${DATASETS:-"oxford_pets oxford_flowers dtd caltech101"}
BACKBONE=${BACKBONE:-ViT-B/16}
SEEDS=${SEEDS:-1}
ROUNDS=${ROUNDS:-25}
LR=${LR:-0.001}
# extra flags placed before the KEY VALUE overrides, e.g. EXTRA="--clip-weights none" for a smoke run
EXTRA=${EXTRA:-}
RANKS=${RANKS:-"1 2 4 8"}
SHOTS_LIST=${SHOTS_LIST:-"1 2 4 8 16"}
OUT=${OUT:-output_fedpgp/rank_sweep}
SLUG=$(echo "${BACKBONE}" | tr 'A-Z' 'a-z' | sed -e 's#vit-#vit_#' -e 's#/##g' -e 's#-##g')

for DATASET in ${DATASETS}; do
  for SEED in ${SEEDS}; do
    for RANK in ${RANKS}; do
      for SHOTS in ${SHOTS_LIST}; do
        DIR=${OUT}/${DATASET}/${SLUG}/rank${RANK}_${SHOTS}shots/seed${SEED}
        if [ -f "${DIR}/results.json" ]; then
          echo "skip ${DIR} (done)"
          continue
        fi
        # shellcheck disable=SC2086  # EXTRA is a list of words
      python federated_main.py --root "${DATA}" --trainer FedPGP --backbone "${BACKBONE}" \
          --dataset-config-file "configs/datasets/${DATASET}.yaml" \
          --num-users 10 --frac 1 --rounds "${ROUNDS}" --local-epochs 2 --lr "${LR}" \
          --num-shots "${SHOTS}" --train-batch-size "${SHOTS}" --subsample all --partition pathological \
          --seed "${SEED}" --output-dir "${DIR}" ${EXTRA} \
          TRAINER.FEDPGP.BOTTLENECK "${RANK}" TRAINER.FEDPGP.MU 0.5 TRAINER.FEDPGP.TEMP 0.5
      done
    done
  done
done
