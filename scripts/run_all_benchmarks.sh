#!/usr/bin/env bash
# Run every available benchmark protocol on one checkpoint and print the model-zoo tables.
#
#   scripts/run_all_benchmarks.sh [CKPT] [--data-root DIR] [--preset tiny|full] [--only a,b] [--out DIR] [--force]
#
# With no CKPT this is the demo: it generates the embedded mini-datasets (data/tiny), pretrains the tiny BYOL
# checkpoint (or, without the pretrainer, writes a seeded random-init ResNet-18 labelled as such), and runs every
# protocol at the tiny preset. Each runner skips work whose record already exists for the same checkpoint sha256
# and config (--force redoes it). A failing protocol does not stop the others; failures are listed at the end and
# the exit code is non-zero.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

# Protocols in table order; a protocol runs when its module exists. RUN_ALL_PROTOCOLS/RUN_ALL_MODULE_PREFIX let the
# tests drive the orchestration with stand-in runners.
PROTOCOLS=(${RUN_ALL_PROTOCOLS:-voc07_svm linear_mhead linear_avgpool semi_sup det_voc det_coco segmentation})
MODULE_PREFIX=${RUN_ALL_MODULE_PREFIX:-benchmarks.}
# Full-scale preset(s) per protocol (self-describing names, configs/<protocol>/<preset>.yaml); a new runner adds its line
# (docs/RUNNERS.md; tests/test_runner_conventions.py checks it). Several space-separated presets run one after the
# other (one per dataset of a runner that fills several tables).
declare -A FULL_PRESET=(
  [voc07_svm]=voc07_svm_mmselfsup
  [linear_mhead]="linear-mhead_resnet50_8xb32-steplr-90e_in1k linear-mhead_resnet50_8xb32-steplr-84e_inat18 linear-mhead_resnet50_8xb32-steplr-28e_places205"
  [linear_avgpool]="linear-avgpool_resnet50_8xb32-steplr-100e_in1k linear-avgpool_resnet50_8xb32-steplr-100e_inat18 linear-avgpool_resnet50_8xb32-steplr-100e_places205"
  [semi_sup]="resnet50_grid9_4xb64-steplr-20e_in1k-1pct resnet50_grid9_4xb64-steplr-20e_in1k-10pct"
  [det_voc]=faster-rcnn_resnet50-c4_8xb2-24k_voc0712
  [det_coco]=mask-rcnn_resnet50-fpn_8xb2-ms-1x_coco
  [segmentation]="fcn_r50-d8_4xb4-20k_voc12aug-512x512 fcn_r50-d8_4xb2-40k_cityscapes-769x769"
)
# Tiny presets of a protocol that has several (one per dataset); the others run `tiny`.
declare -A TINY_PRESETS=(
  [linear_mhead]="tiny tiny-inat18 tiny-places205"
  [linear_avgpool]="tiny tiny-inat18 tiny-places205"
  [semi_sup]="tiny tiny-imagenet_10pct"
  [segmentation]="tiny tiny-cityscapes"
)

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

CKPT="" DATA_ROOT="" PRESET=tiny ONLY="" OUT="" FORCE=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data-root) DATA_ROOT=$2; shift 2 ;;
    --preset) PRESET=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --force) FORCE=(--force); shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) [[ -z "$CKPT" ]] || { echo "error: only one checkpoint, got '$CKPT' and '$1'" >&2; exit 2; }
       CKPT=$1; shift ;;
  esac
done
[[ "$PRESET" == tiny || "$PRESET" == full ]] || { echo "error: --preset must be tiny or full, got '$PRESET'" >&2; exit 2; }

if [[ -z "$CKPT" ]]; then  # ---------------------------------------------------------------- the demo
  DATA_ROOT=${DATA_ROOT:-data/tiny}
  OUT=${OUT:-results/demo}
  if [[ ! -f "$DATA_ROOT/TINY_DATA.json" && -f scripts/make_tiny_data.py ]]; then
    echo "== generating the embedded mini-datasets in $DATA_ROOT"
    "$PY" scripts/make_tiny_data.py --out "$DATA_ROOT"
  fi
  if [[ -f pretrain/__main__.py ]]; then
    CKPT=work_dirs/pretrain/tiny/byol_resnet18_tiny.pth
    if [[ ! -f "$CKPT" ]]; then
      echo "== pretraining the tiny BYOL checkpoint (ResNet-18, embedded ImageNet layout)"
      "$PY" -m pretrain --preset tiny data_root="$DATA_ROOT" out_dir=work_dirs/pretrain/tiny
    fi
  else
    CKPT=work_dirs/random-init_resnet18_seed0.pth
    echo "== no pretrainer yet: using a seeded random-init ResNet-18 ($CKPT)"
    [[ -f "$CKPT" ]] || "$PY" scripts/make_random_checkpoint.py --arch resnet18 --seed 0 --out "$CKPT"
  fi
fi
[[ -f "$CKPT" ]] || { echo "error: checkpoint $CKPT not found; pass the path of a .pth file" >&2; exit 2; }
DATA_ROOT=${DATA_ROOT:-data}
OUT=${OUT:-results/$(basename "${CKPT%.*}")}

FAILED=() RAN=()
mkdir -p "$OUT"
TIMINGS="$OUT/run_times.tsv"  # protocol, preset, seconds, status of this invocation: the closing summary
: > "$TIMINGS"
for proto in "${PROTOCOLS[@]}"; do
  if [[ -n "$ONLY" && ",$ONLY," != *",$proto,"* ]]; then continue; fi
  module="$MODULE_PREFIX$proto"
  if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" 2>/dev/null; then
    echo "-- $proto: not available yet, skipped"
    continue
  fi
  presets=${TINY_PRESETS[$proto]:-tiny}
  [[ "$PRESET" == full ]] && presets=${FULL_PRESET[$proto]:-full}
  for preset in $presets; do
    label=$proto
    [[ "$presets" == *" "* ]] && label="$proto:$preset"
    echo "== $proto (preset $preset)"
    began=$SECONDS
    if "$PY" -m "$module" --preset "$preset" --ckpt "$CKPT" --data-root "$DATA_ROOT" --out-dir "$OUT" ${FORCE[@]+"${FORCE[@]}"}; then
      RAN+=("$label") status=ok
    else
      echo "!! $proto ($preset) failed (exit $?)" >&2
      FAILED+=("$label") status=FAILED
    fi
    printf '%s\t%s\t%s\t%s\n' "$proto" "$preset" "$((SECONDS - began))" "$status" >> "$TIMINGS"
  done
done

if [[ -d "$OUT/records" ]]; then
  # Published rows (results/published/) go beside the measured ones; the report links the runs' plots.
  "$PY" scripts/make_tables.py --records "$OUT/records" --published --out "$OUT/model_zoo.md" \
    --all-csv "$OUT/all_records.csv" --timings "$TIMINGS"
  echo "report (tables, published rows, links to every plot): $OUT/model_zoo.md"
  echo "records: $OUT/records/   run folders (logs, curves, result files): $OUT/runs/   all metrics: $OUT/all_records.csv"
fi
echo "protocols run: ${RAN[*]:-none}"
if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "FAILED protocols: ${FAILED[*]}" >&2
  exit 1
fi
