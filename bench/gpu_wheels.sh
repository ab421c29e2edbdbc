#!/usr/bin/env bash
# Download, on a machine with package-index access, the wheels bench/gpu_check.sh installs on a GPU
# machine that has torch but no network (the non-torch requirements and what they need; CPython 3.12,
# manylinux x86_64). Put the resulting .whl/ folder next to the checkout on the GPU machine.
#
#   bash bench/gpu_wheels.sh [PYTHON_VERSION]      # default 3.12
set -euo pipefail
cd "$(dirname "$0")/.."
pyver=${1:-3.12}
mkdir -p .whl
for spec in open_clip_torch==3.3.0 yacs==0.1.8 ftfy wcwidth; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$spec"
done
ls .whl
