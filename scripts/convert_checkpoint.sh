#!/usr/bin/env bash
# Convert a self-supervised ResNet checkpoint for another library (thin wrapper over `python -m adapters convert`).
#   scripts/convert_checkpoint.sh IN OUT --to {torchvision,timm,detectron2,mmseg,mmdet} [--from auto|NAME] [--encoder online|target]
# Uses $PYTHON if set, else the repo's .venv. See docs/ADAPTERS.md.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m adapters convert "$@"
