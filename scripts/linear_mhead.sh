#!/usr/bin/env bash
# Multi-head linear probe (feature1..5) on one checkpoint and one dataset (PROTOCOLS.md A.4, B §3.1-3.2):
#   scripts/linear_mhead.sh CKPT DATA_ROOT [imagenet|inat18|places205] [key=value ...]
#   e.g. scripts/linear_mhead.sh byol.pth /datasets places205 device=cuda
# Several GPUs: NPROC=8 scripts/linear_mhead.sh ... (torchrun; the global batch stays 256).
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 CKPT DATA_ROOT [imagenet|inat18|places205] [key=value ...]" >&2; exit 2; }
ckpt=$1 data_root=$2
shift 2
dataset=imagenet
if [[ $# -gt 0 && "$1" != *=* ]]; then dataset=$1; shift; fi
case "$dataset" in
  imagenet) preset=linear-mhead_resnet50_8xb32-steplr-90e_in1k ;;
  inat18) preset=linear-mhead_resnet50_8xb32-steplr-84e_inat18 ;;
  places205) preset=linear-mhead_resnet50_8xb32-steplr-28e_places205 ;;
  *) echo "error: dataset must be imagenet, inat18 or places205, got '$dataset'" >&2; exit 2 ;;
esac
if [[ "${NPROC:-1}" -gt 1 ]]; then
  exec torchrun --standalone --nproc-per-node "$NPROC" -m benchmarks.linear_mhead --preset "$preset" \
    --ckpt "$ckpt" --data-root "$data_root" "$@"
fi
exec python -m benchmarks.linear_mhead --preset "$preset" --ckpt "$ckpt" --data-root "$data_root" "$@"
