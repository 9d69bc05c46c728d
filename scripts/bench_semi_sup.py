#!/usr/bin/env python
"""Semi-supervised grid speed: the 9-cell grid in one pass vs nine separate runs, on the same tiny-sized data.

Every figure is the wall time of real runner invocations (``python -m benchmarks.semi_sup``, each in its own
process and out folder, ``force=true``), on the embedded tiny ImageNet (``data/tiny``, generated into a temporary
folder when missing) with a seeded random-init checkpoint:

(a) **one pass**: the grid preset with ``grid=one_pass``: one process, each batch decoded and augmented once, the
    nine cells step on it in turn; val decoded once per evaluation for all cells;
(b) **nine separate runs**: one invocation per cell (``base_lrs=[lr] head_lr_mults=[m]``), as one job per cell (the
    reference's way, e.g. a SLURM array) would do it, one after the other;
(c) **sequential in one process** (``grid=sequential``, skipped with ``--skip-sequential``): the cells one after the
    other in one process, each with its own pass over the data: (b) without the per-process start-up, so (c)/(a)
    is the part of the gain that comes from sharing the data stream.

The runs use the preset (default ``tiny-imagenet_10pct``: 110 labelled images, 5 epochs, batch 32) at
``--image-size`` (default 112, test resize 256/224 of it). The per-cell top-1 of (a) and (b) must agree exactly
(``cells_agree``): one pass changes the cost, not the numbers.

    python scripts/bench_semi_sup.py                  # ResNet-18 at 112 px on this CPU
    python scripts/bench_semi_sup.py --json           # last line: one JSON object
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.semi_sup.runner import PRESET_DIR, SemiSupConfig, cell_name
from byol_bench.backbone import build_resnet, trunk_state_dict
from byol_bench.checkpoint import atomic_save
from byol_bench.cli import main_guard
from byol_bench.config import load_config
from byol_bench.records import load_records
from byol_bench.runlog import cpu_model
from byol_bench.tinydata import ensure_tiny_data

REPO = Path(__file__).resolve().parents[1]


def timed_run(preset: str, ckpt: Path, data: Path, out: Path, overrides: list[str], threads: int | None) -> float:
    """Wall seconds of one runner invocation (its own process, as a job would run)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    command = [sys.executable, "-m", "benchmarks.semi_sup", "--preset", preset, "--ckpt", str(ckpt), "--data-root",
               str(data), "--out-dir", str(out), "force=true", *overrides]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip().splitlines()[-1:]}")
    return seconds


def cell_top1(out: Path) -> dict[str, float]:
    (record,) = load_records(out / "records")
    return {name: cell["top1"] for name, cell in record["details"]["cells"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-imagenet_10pct", help="a semi_sup preset (the grid to time)")
    parser.add_argument("--arch", default="resnet18", help="random-init checkpoint architecture")
    parser.add_argument("--image-size", type=int, default=112, help="train/test crop (test resize keeps 256/224)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of every run (default: inherited); 1 is steadier on a shared machine")
    parser.add_argument("--skip-sequential", action="store_true", help="do not time (c), grid=sequential")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    cfg = load_config(SemiSupConfig, args.preset, preset_dir=PRESET_DIR)
    size = [f"image_size={args.image_size}", f"test_resize={round(args.image_size * 256 / 224)}"]
    cells = [(lr, m) for lr in cfg.base_lrs for m in cfg.head_lr_mults]
    data = REPO / "data" / "tiny"
    with tempfile.TemporaryDirectory(prefix="bench_semi_sup_") as tmp:
        if not (data / "TINY_DATA.json").is_file():
            data = ensure_tiny_data(Path(tmp) / "tiny")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            state = trunk_state_dict(build_resnet(args.arch))
        ckpt = atomic_save(state, Path(tmp) / f"random-init_{args.arch}.pth")
        load_start = os.getloadavg()

        one_pass = timed_run(args.preset, ckpt, data, Path(tmp) / "one_pass", [*size, "grid=one_pass"], args.threads)
        separate = [timed_run(args.preset, ckpt, data, Path(tmp) / f"cell{i}",
                              [*size, f"base_lrs=[{lr}]", f"head_lr_mults=[{m}]"], args.threads)
                    for i, (lr, m) in enumerate(cells)]
        sequential = None if args.skip_sequential else timed_run(args.preset, ckpt, data, Path(tmp) / "sequential",
                                                                 [*size, "grid=sequential"], args.threads)
        grid_top1 = cell_top1(Path(tmp) / "one_pass")
        alone_top1 = {name: top1 for i in range(len(cells)) for name, top1 in cell_top1(Path(tmp) / f"cell{i}").items()}

    result = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "threads_per_run": args.threads or os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads(),
        "load_avg_start": [round(x, 2) for x in load_start], "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "preset": args.preset, "arch": args.arch, "image_size": args.image_size, "cells": len(cells),
        "epochs": cfg.epochs, "global_batch_size": cfg.global_batch_size,
        "one_pass_s": round(one_pass, 2), "separate_runs_s": round(sum(separate), 2),
        "separate_run_each_s": {cell_name(*c): round(s, 2) for c, s in zip(cells, separate, strict=True)},
        "sequential_in_process_s": round(sequential, 2) if sequential is not None else None,
        "speedup_vs_separate_runs": round(sum(separate) / one_pass, 3),
        "speedup_vs_sequential_in_process": round(sequential / one_pass, 3) if sequential is not None else None,
        "cells_agree": grid_top1 == alone_top1,
    }
    print(f"CPU: {result['cpu']} ({result['cpu_count']} cores, {result['threads_per_run']} threads per run), load "
          f"{result['load_avg_start']} -> {result['load_avg_end']}")
    print(f"{args.preset} at {args.image_size} px, {args.arch}, {len(cells)} cells x {cfg.epochs} epochs:")
    print(f"  (a) one pass            {one_pass:8.1f} s")
    print(f"  (b) nine separate runs  {sum(separate):8.1f} s   -> speedup (b)/(a) {result['speedup_vs_separate_runs']}")
    if sequential is not None:
        print(f"  (c) sequential, 1 proc  {sequential:8.1f} s   -> (c)/(a) "
              f"{result['speedup_vs_sequential_in_process']}")
    print(f"  per-cell top-1 of (a) and (b) agree: {result['cells_agree']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main_guard(main)
