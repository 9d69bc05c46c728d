#!/usr/bin/env bash
# Rehearse every full preset (rehearsal=true: real sizes, two optimizer steps each) on the real-size data, and print
# one row per preset: wall time, peak memory, time per step, images/s, extrapolated full-run time (docs/REHEARSAL.md).
#
#   scripts/rehearse.sh CKPT [--only PROTOCOLS] [--json FILE] [--data-root DIR] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" scripts/rehearse.py "$@"
