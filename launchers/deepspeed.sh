#!/usr/bin/env bash
# Record a trajectory with DeepSpeed (ZeRO from launchers/ds_config.json).
#   launchers/deepspeed.sh --out runs/msmt --dataset imagefolder --data-root /data/x --model resnet50 --epochs 12
# One machine: all visible GPUs.  Several: HOSTFILE=launchers/hostfile.example (one "host slots=N" line each,
# passwordless ssh between them).  All options go to `dprune train`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
config=${DS_CONFIG:-$here/ds_config.json}
hostargs=()
if [ -n "${HOSTFILE:-}" ]; then hostargs=(--hostfile "$HOSTFILE"); fi
if [ -n "${NUM_GPUS:-}" ]; then hostargs+=(--num_gpus "$NUM_GPUS"); fi
exec deepspeed "${hostargs[@]}" --no_local_rank --module dprune train --backend deepspeed --deepspeed-config "$config" "$@"
