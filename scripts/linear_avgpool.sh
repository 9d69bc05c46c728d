#!/usr/bin/env bash
# AvgPool linear probe on one checkpoint (PROTOCOLS.md A.4, B §3.3); the MoCo setting on ImageNet by default:
#   scripts/linear_avgpool.sh CKPT DATA_ROOT [key=value ...]          e.g. scripts/linear_avgpool.sh byol.pth /datasets
#   GPUS=8 scripts/linear_avgpool.sh byol.pth /datasets               # torchrun on this node; the global batch stays
#   PRESET=linear-avgpool_resnet50_8xb32-steplr-100e_inat18 scripts/linear_avgpool.sh byol.pth /datasets
# Presets: configs/linear_avgpool/ (..._in1k, ..._inat18, ..._places205: MoCo setting; ...8xb512-coslr-90e_in1k:
# SimSiam setting). An interrupted run continues from its latest.pth when started again (resume=auto).
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 CKPT DATA_ROOT [key=value ...]" >&2; exit 2; }
ckpt=$1 data_root=$2
shift 2
PY=${PYTHON:-python}
preset=${PRESET:-linear-avgpool_resnet50_8xb32-steplr-100e_in1k}
args=(-m benchmarks.linear_avgpool --preset "$preset" --ckpt "$ckpt" --data-root "$data_root" "$@")
if [[ ${GPUS:-1} -gt 1 ]]; then
  exec "$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" "${args[@]}"
fi
exec "$PY" "${args[@]}"
