#!/usr/bin/env bash
# Mask R-CNN R50-FPN 1x on COCO 2017, box and mask AP (PROTOCOLS.md A.6, B §5.3):
#   scripts/det_coco.sh CKPT DATA_ROOT [key=value ...]
#   e.g. scripts/det_coco.sh byol.pth /datasets small_world=scale
# Several GPUs: NPROC=8 scripts/det_coco.sh ... (torchrun; the recipe is 8 GPUs x 2 images, SyncBN; fewer GPUs keep
# the global batch of 16 by gradient accumulation unless small_world=scale).
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 CKPT DATA_ROOT [key=value ...]" >&2; exit 2; }
ckpt=$1 data_root=$2
shift 2
preset=mask-rcnn_resnet50-fpn_8xb2-ms-1x_coco
if [[ "${NPROC:-1}" -gt 1 ]]; then
  exec torchrun --standalone --nproc-per-node "$NPROC" -m benchmarks.det_coco --preset "$preset" \
    --ckpt "$ckpt" --data-root "$data_root" "$@"
fi
exec python -m benchmarks.det_coco --preset "$preset" --ckpt "$ckpt" --data-root "$data_root" "$@"
