#!/usr/bin/env bash
# One command on a fresh GPU machine, from a clean checkout, in under 8 minutes:
#
#   bash bench/gpu_check.sh [OUT_DIR]          # default OUT_DIR: $OUT, else ./gpu_check_out
#
# Writes into OUT_DIR:
#   env.txt            GPU, driver, torch / CUDA versions, what was installed
#   cuda_tests.txt     pytest -m cuda (tests/test_cuda.py) + junit XML cuda_tests.xml
#   bench_paper.txt    bench/run.py --size paper: s/round and peak memory, fast (bf16) vs --reference-mode
#   bench_paper_fp32.txt  FedPGP with the fast path in fp32 (--fast-prec fp32)
#   scaling.txt        memory / scale sweep: 10-1000 clients x 10 classes, 10 clients x 10-1000 classes
#   profile_*.txt      torch.profiler summary of a few fast-path rounds (share of time in kernels)
#   summary.txt        one line per step: exit code and seconds (124 = stopped at its time budget)
#
# Installs what is missing: the non-torch requirements, from ./.whl if that folder exists (wheels
# carried to a machine without network: bench/gpu_wheels.sh makes them), else from the package index.
# An existing torch with CUDA is kept (the pinned CPU/CUDA wheel is not forced onto a GPU image).
# Each step has a time budget; a step that overruns is stopped and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-$PWD/gpu_check_out}}
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 FLWR_TELEMETRY_ENABLED=0
export FEDTV_CACHE=${FEDTV_CACHE:-$(mktemp -d)}
PY=${PYTHON:-python3}
START=$SECONDS
TOTAL_BUDGET=${GPU_CHECK_BUDGET:-470}
: > "$OUT_DIR/summary.txt"

step() {  # step NAME BUDGET_S CMD...: run with min(budget, time left), log to OUT_DIR/NAME.txt
  local name=$1 budget=$2; shift 2
  local left=$((TOTAL_BUDGET - (SECONDS - START)))
  (( budget > left )) && budget=$left
  if (( budget < 10 )); then echo "$name skipped (no time left)" | tee -a "$OUT_DIR/summary.txt"; return; fi
  local t0=$SECONDS
  timeout --kill-after=5 "$budget" "$@" > "$OUT_DIR/$name.txt" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - t0)) budget=$budget" | tee -a "$OUT_DIR/summary.txt"
}

{
  echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "no nvidia-smi"
} > "$OUT_DIR/env.txt"

if ! "$PY" -c "import open_clip, yacs, safetensors, scipy, matplotlib, tensorboard" 2>/dev/null; then
  grep -vE '^(torch|torchvision)==' requirements.txt > "$OUT_DIR/requirements-nontorch.txt"
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --find-links .whl --target /tmp/fedtv-site .whl/*.whl \
      >> "$OUT_DIR/env.txt" 2>&1 && export PYTHONPATH=/tmp/fedtv-site${PYTHONPATH:+:$PYTHONPATH}
  else
    "$PY" -m pip install -q -r "$OUT_DIR/requirements-nontorch.txt" >> "$OUT_DIR/env.txt" 2>&1
  fi
fi
"$PY" - >> "$OUT_DIR/env.txt" 2>&1 <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "bf16", torch.cuda.is_bf16_supported())
import open_clip
print("open_clip", open_clip.__version__)
EOF
cat "$OUT_DIR/env.txt"

step cuda_tests 150 "$PY" -m pytest -q -m cuda tests/test_cuda.py --junitxml="$OUT_DIR/cuda_tests.xml" -p no:cacheprovider
step bench_paper 150 "$PY" bench/run.py --size paper --rounds 3 --trainers PromptFL FedPGP FedTV \
  --scaling-clients --scaling-classes
step bench_paper_fp32 60 "$PY" bench/run.py --size paper --rounds 3 --trainers FedPGP --fast-prec fp32 \
  --scaling-clients --scaling-classes
step scaling 60 "$PY" bench/run.py --size paper --trainers --scaling-clients 10 100 1000 --scaling-classes 100 1000
step profile 45 "$PY" bench/profile_round.py --trainer FedPGP --size paper --rounds 3 --out "$OUT_DIR"
step bench_paper_more 120 "$PY" bench/run.py --size paper --rounds 3 --trainers CoOp FedOTP FLoRA \
  --scaling-clients --scaling-classes
echo "total seconds=$((SECONDS - START))" | tee -a "$OUT_DIR/summary.txt"
