#!/usr/bin/env bash
# Faster R-CNN R50-C4 on VOC07+12 (MoCo detection protocol; PROTOCOLS.md A.6, B §5.1; docs/DETECTION.md):
#   scripts/det_voc.sh CKPT DATA_ROOT [key=value ...]
#   e.g. NPROC=8 scripts/det_voc.sh byol.pth /datasets trials=5      (the protocol: 8 GPUs x 2 images)
#        scripts/det_voc.sh byol.pth /datasets batch_size_per_device=16   (one large GPU, same batch of 16)
# Fewer images per step than 16 keep the recipe by gradient accumulation (small_world=accumulate, the default) or
# scale lr and iterations linearly (small_world=scale); the record says which.
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 CKPT DATA_ROOT [key=value ...]" >&2; exit 2; }
ckpt=$1 data_root=$2
shift 2
preset=faster-rcnn_resnet50-c4_8xb2-24k_voc0712
if [[ "${NPROC:-1}" -gt 1 ]]; then
  exec torchrun --standalone --nproc-per-node "$NPROC" -m benchmarks.det_voc --preset "$preset" \
    --ckpt "$ckpt" --data-root "$data_root" "$@"
fi
exec python -m benchmarks.det_voc --preset "$preset" --ckpt "$ckpt" --data-root "$data_root" "$@"
