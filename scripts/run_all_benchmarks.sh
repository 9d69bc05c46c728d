#!/usr/bin/env bash
# Run every benchmark protocol on one checkpoint and write one model-zoo report: locally, under torchrun or on SLURM.
#
#   scripts/run_all_benchmarks.sh [CKPT] [--preset tiny|full] [--launcher local|torchrun|slurm] [--dry-run] [--plan]
#
# A thin wrapper over `python -m benchmarks.suite` (the protocols are listed once, in byol_bench/protocols.py);
# --help documents every option and launcher, docs/CLUSTER.md shows them at work. PYTHON picks the interpreter.
set -euo pipefail
# the checkout on the path, not as the working directory: paths on the command line are the caller's
PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python}" -m benchmarks.suite "$@"
