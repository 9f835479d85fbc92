#!/usr/bin/env bash
# The checks a lent GPU is for, in one command (under 8 minutes on one GPU):
#   1. the CUDA tests, and the kernel tests compiled for the GPU (TRITON_INTERPRET=0) against
#      their torch reference;
#   2. scoring throughput against the device's own copy bandwidth, and the recording overhead
#      of a ResNet-50 step at batch 256 (benchmarks/gpu_check.py), written as a markdown table
#      to benchmarks/results/gpu_check.md.
# Without a GPU it says so and exits 0 (CI runs it that way).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no GPU: skipped"
  exit 0
fi
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name())"
TRITON_INTERPRET=0 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests
TRITON_INTERPRET=0 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels.py
"$PY" benchmarks/gpu_check.py "$@"
