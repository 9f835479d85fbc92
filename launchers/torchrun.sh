#!/usr/bin/env bash
# Record a trajectory with plain torch DDP on the GPUs of one machine.
#   launchers/torchrun.sh --out runs/cifar100 --dataset cifar100 --data-root /data/cifar --model resnet18 --epochs 12
# NPROC (default: number of visible GPUs, or 2 on a CPU machine) processes; all options go to `dprune train`.
set -euo pipefail
if [ -z "${NPROC:-}" ]; then
  NPROC=$(python -c "import torch; print(torch.cuda.device_count() or 2)")
fi
exec torchrun --standalone --nproc_per_node="$NPROC" -m dprune train "$@"
