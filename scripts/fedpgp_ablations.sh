#!/usr/bin/env bash
# FedPGP paper Tables 6 and 7: ablations of the adaptation and of the contrastive loss, in the
# published base-to-novel setting (10 clients, 16 shots of the base classes, pathological split,
# 25 rounds of 2 local epochs, rank 8, mu 0.5, tau 0.5, batch = shots). Every run reports Local, Base,
# Novel and HM (results.json: final.{local,base,novel,hm}); Table 6 reads Local/Base/Novel/HM, Table 7
# reads Local.
#   full          FedPGP
#   wo_positive   CONTRAST_POSITIVE False: L_con = mean_c cos(z_G, z_i)          (Table 6)
#   wo_negative   CONTRAST_NEGATIVE False: L_con = mean_c 1 - cos(z_G, z_C)      (Table 7)
#   fullrank      ADAPTATION fullrank: personal term a free (n_ctx, d) matrix     (Table 6)
#   published_zc  HANDCRAFTED published: z_C from "X X ... X classname." as the published code does
# A finished run (results.json present) is skipped.
#
#   DATA=/path/to/DATA SEEDS="1 2 3" bash scripts/fedpgp_ablations.sh
#   DATASETS="toyworld" BACKBONE=tiny bash scripts/fedpgp_ablations.sh   # offline smoke version
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-DATA/}
DATASETS=${DATASETS:-"oxford_pets oxford_flowers dtd caltech101 food101"}
BACKBONE=${BACKBONE:-ViT-B/16}
SEEDS=${SEEDS:-1}
ROUNDS=${ROUNDS:-25}
LR=${LR:-0.001}
# extra flags placed before the KEY VALUE overrides, e.g. EXTRA="--clip-weights none" for a smoke run
EXTRA=${EXTRA:-}
SHOTS=${SHOTS:-16}
VARIANTS=${VARIANTS:-"full wo_positive wo_negative fullrank published_zc"}
OUT=${OUT:-output_fedpgp/ablations}
SLUG=$(echo "${BACKBONE}" | tr 'A-Z' 'a-z' | sed -e 's#vit-#vit_#' -e 's#/##g' -e 's#-##g')

variant_opts() {
  case "$1" in
    full) echo "" ;;
    wo_positive) echo "TRAINER.FEDPGP.CONTRAST_POSITIVE False" ;;
    wo_negative) echo "TRAINER.FEDPGP.CONTRAST_NEGATIVE False" ;;
    fullrank) echo "TRAINER.FEDPGP.ADAPTATION fullrank" ;;
    published_zc) echo "TRAINER.FEDPGP.HANDCRAFTED published" ;;
    *) echo "unknown variant '$1' (valid: full wo_positive wo_negative fullrank published_zc)" >&2; exit 2 ;;
  esac
}

for DATASET in ${DATASETS}; do
  for SEED in ${SEEDS}; do
    for VARIANT in ${VARIANTS}; do
      OPTS=$(variant_opts "${VARIANT}")
      DIR=${OUT}/${DATASET}/${SLUG}/${VARIANT}_${SHOTS}shots/seed${SEED}
      if [ -f "${DIR}/results.json" ]; then
        echo "skip ${DIR} (done)"
        continue
      fi
      # shellcheck disable=SC2086  # EXTRA and OPTS are lists of words
      python federated_main.py --root "${DATA}" --trainer FedPGP --backbone "${BACKBONE}" \
        --dataset-config-file "configs/datasets/${DATASET}.yaml" \
        --num-users 10 --frac 1 --rounds "${ROUNDS}" --local-epochs 2 --lr "${LR}" \
        --num-shots "${SHOTS}" --train-batch-size "${SHOTS}" --subsample base --partition pathological \
        --seed "${SEED}" --output-dir "${DIR}" ${EXTRA} \
        TRAINER.FEDPGP.BOTTLENECK 8 TRAINER.FEDPGP.MU 0.5 TRAINER.FEDPGP.TEMP 0.5 ${OPTS}
    done
  done
done
