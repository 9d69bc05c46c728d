#!/usr/bin/env bash
# Semi-supervised fine-tuning on 1 % or 10 % of the ImageNet labels, the 3 x 3 grid in one process
# (PROTOCOLS.md A.5, B §4):
#   scripts/semi_sup.sh CKPT DATA_ROOT [1pct|10pct] [key=value ...]
#   e.g. scripts/semi_sup.sh byol.pth /datasets 1pct subset_list=/lists/1percent.txt
# Several GPUs: NPROC=4 scripts/semi_sup.sh ... (torchrun; the global batch stays 256).
# One cell per job (SLURM array): PRESET=resnet50_head10_4xb64-steplr1e-2-20e_in1k-1pct scripts/semi_sup.sh ...;
# afterwards the grid run trains nothing the jobs finished and writes the record with the best cell (docs/SEMI_SUP.md).
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 CKPT DATA_ROOT [1pct|10pct] [key=value ...]" >&2; exit 2; }
ckpt=$1 data_root=$2
shift 2
fraction=1pct
if [[ $# -gt 0 && "$1" != *=* ]]; then fraction=$1; shift; fi
case "$fraction" in
  1pct|10pct) preset=${PRESET:-resnet50_grid9_4xb64-steplr-20e_in1k-$fraction} ;;
  *) echo "error: fraction must be 1pct or 10pct, got '$fraction'" >&2; exit 2 ;;
esac
if [[ "${NPROC:-1}" -gt 1 ]]; then
  exec torchrun --standalone --nproc-per-node "$NPROC" -m benchmarks.semi_sup --preset "$preset" \
    --ckpt "$ckpt" --data-root "$data_root" "$@"
fi
exec python -m benchmarks.semi_sup --preset "$preset" --ckpt "$ckpt" --data-root "$data_root" "$@"
