#!/usr/bin/env bash
# VOC07 SVM + low-shot SVM on one checkpoint (PROTOCOLS.md A.3):
#   scripts/voc07_svm.sh CKPT DATA_ROOT [key=value ...]     e.g. scripts/voc07_svm.sh byol.pth /datasets device=cuda
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 CKPT DATA_ROOT [key=value ...]" >&2; exit 2; }
ckpt=$1 data_root=$2
shift 2
exec python -m benchmarks.voc07_svm --preset voc07_svm_mmselfsup --ckpt "$ckpt" --data-root "$data_root" "$@"
