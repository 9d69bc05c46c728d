#!/usr/bin/env bash
# FCN R50-D8 semantic segmentation on one checkpoint and one dataset (PROTOCOLS.md A.7, B §6):
#   scripts/segmentation.sh CKPT DATA_ROOT [voc12aug|cityscapes] [key=value ...]
#   e.g. NPROC=4 scripts/segmentation.sh byol.pth /datasets cityscapes
# The recipe's per-GPU batch is fixed (VOC 4, Cityscapes 2): NPROC=4 gives mmseg's usual global batch (16 / 8).
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 CKPT DATA_ROOT [voc12aug|cityscapes] [key=value ...]" >&2; exit 2; }
ckpt=$1 data_root=$2
shift 2
dataset=voc12aug
if [[ $# -gt 0 && "$1" != *=* ]]; then dataset=$1; shift; fi
case "$dataset" in
  voc12aug) preset=fcn_r50-d8_4xb4-20k_voc12aug-512x512 ;;
  cityscapes) preset=fcn_r50-d8_4xb2-40k_cityscapes-769x769 ;;
  *) echo "error: dataset must be voc12aug or cityscapes, got '$dataset'" >&2; exit 2 ;;
esac
if [[ "${NPROC:-1}" -gt 1 ]]; then
  exec torchrun --standalone --nproc-per-node "$NPROC" -m benchmarks.segmentation --preset "$preset" \
    --ckpt "$ckpt" --data-root "$data_root" "$@"
fi
exec python -m benchmarks.segmentation --preset "$preset" --ckpt "$ckpt" --data-root "$data_root" "$@"
