#!/usr/bin/env bash
# One prepared script for a lent GPU machine (see the README's "CUDA" section): builds pyslim with
# PYSLIM_ENABLE_CUDA=ON against the machine's own torch, runs the CUDA parity tests, then times the CUDA
# kernels against torch's CUDA fake-quant ops side by side. Writes its log to $OUT (or ./cuda_check_out).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/cuda_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
PY=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  SITE=/tmp/pyslim-site
  rm -rf "$SITE"
  PYSLIM_ENABLE_CUDA=ON $PY -m pip install -q --no-build-isolation --no-deps --target "$SITE" .
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  (cd /tmp && $PY -c "import pyslim; print(pyslim.native_info())")
  cmake -S . -B /tmp/pyslim-cuda-build -G Ninja -DPYSLIM_ENABLE_CUDA=ON -DPYSLIM_BUILD_PYTHON=OFF \
    -DPYSLIM_BUILD_TESTS=ON >/dev/null && cmake --build /tmp/pyslim-cuda-build --target pyslim_cuda_parity
  /tmp/pyslim-cuda-build/pyslim_cuda_parity
  (cd /tmp && $PY -m pytest -q -p no:cacheprovider --import-mode=importlib "$OLDPWD/tests/ops/test_cuda.py")
  (cd /tmp && $PY "$OLDPWD/bench/cuda_bench.py")
} 2>&1 | tee "$OUT/cuda_check.log"
