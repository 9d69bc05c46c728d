#!/usr/bin/env python
"""Rehearse every full preset: each runs for the first time here, at its real sizes, before a GPU hour is spent.

    scripts/rehearse.sh CKPT [--only PROTOCOLS] [--json FILE] [--data-root DIR] [--out DIR]

CKPT is any ResNet-50 checkpoint (a random-init one is fine: ``scripts/make_random_checkpoint.py --arch resnet50``).
Every full preset of the pretrainer and of the seven protocols runs with ``rehearsal=true`` (byol_bench.rehearsal,
docs/REHEARSAL.md: the preset's sizes, two optimizer steps of one process of its world, evaluation on the first
images), one after another, on the real-size data (``scripts/make_tiny_data.py --real-size``, generated into
``--data-root`` on first use). ``--only`` takes protocols (``pretrain``, ``det_coco``, ...) or single presets
(``semi_sup:resnet50_head1_4xb64-steplr1e-1-20e_in1k-1pct``), comma-separated.

Printed (and written with ``--json``): one row per preset with its wall time, the peak memory of its process tree
(proportional set size: shared pages count once), the peak GPU memory (on a GPU), the time of one optimizer step
(steady state: the second step), images per second, and the extrapolated time of the full run: on the reference
world of such devices, and in device-hours.
The exit code is non-zero when a preset failed.

Two kinds of preset are not run as written, and their rows say so:

* semi_sup's 18 single-cell presets (``resnet50_head<M>_4xb64-steplr<lr>-...``): each is one cell of a grid preset
  (tests/test_semi_sup.py proves it from the files), and the grid's rehearsal trains every cell;
* on a CPU only, the pretrainer's 256-image-per-device presets: a 256-image BYOL step of a ResNet-50 holds about
  70 GB of activations in fp32, so the CPU rehearsal runs the same 256 images per step as 8 accumulated
  micro-batches of 32 (BatchNorm then sees 32 at a time). A GPU rehearses them as written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

from byol_bench.cli import main_guard
from byol_bench.protocols import PRETRAIN
from byol_bench.protocols import PROTOCOLS as SUITE
from byol_bench.records import load_records
from byol_bench.runlog import cpu_model

REPO = Path(__file__).resolve().parent.parent

# (protocol, the module that runs it) in the order they run: the pretrainer, then the tables' order.
PROTOCOLS = tuple((p.name, p.module) for p in (PRETRAIN, *SUITE))
SINGLE_CELL = "_head"  # semi_sup presets of one grid cell: covered by their grid preset
CPU_FIT = {  # preset -> (overrides on a CPU, why)
    preset: (("batch_size_per_device=32", "accum_steps=8"),
             "256 images per step as 8 x 32 micro-batches: a 256-image BYOL step needs ~70 GB on a CPU")
    for preset in ("byol_resnet50_16xb256-coslr-200e_in1k", "byol_resnet50_16xb256-paper-1000e_in1k")
}
CPU_WORKERS = 2  # DataLoader workers on a CPU: the presets' 4-10 are sized for a GPU node's cores
# The generator's families a preset reads, by the dataset at the end of its name (docs/RUNNERS.md naming).
FAMILIES = (("voc07_svm", ("voc2007",)), ("voc0712", ("voc2007", "voc2012")), ("voc12aug", ("voc2012",)),
            ("cityscapes", ("cityscapes",)), ("coco", ("coco",)), ("inat18", ("inat18",)),
            ("places205", ("places205",)), ("in1k", ("imagenet",)))


def full_presets(protocol: str) -> list[str]:
    """The full presets of a protocol: its ``configs/<protocol>/*.yaml`` but the tiny ones."""
    return sorted(p.stem for p in (REPO / "configs" / protocol).glob("*.yaml") if not p.stem.startswith("tiny"))


def plan(only: str) -> list[tuple[str, str, str, str]]:
    """``(protocol, module, preset, skip reason or "")`` of the presets to rehearse, in order."""
    wanted = [w for w in only.split(",") if w] if only else []
    known = dict(PROTOCOLS)
    for item in wanted:
        protocol, _, preset = item.partition(":")
        if protocol not in known:
            raise ValueError(f"--only {item}: unknown protocol; valid: {', '.join(known)}")
        if preset and preset not in full_presets(protocol):
            raise ValueError(f"--only {item}: no full preset {preset!r} in configs/{protocol}/")
    rows = []
    for protocol, module in PROTOCOLS:
        named = [w.partition(":")[2] for w in wanted if w.partition(":")[0] == protocol]
        if wanted and not named:
            continue
        for preset in full_presets(protocol):
            if named and "" not in named and preset not in named:
                continue
            skip = ""
            if protocol == "semi_sup" and SINGLE_CELL in preset and preset not in named:
                skip = "one cell of the grid preset of its fraction: its rehearsal trains this cell"
            rows.append((protocol, module, preset, skip))
    return rows


def families(presets: list[str]) -> list[str]:
    """The real-size data families that ``presets`` read (only those are generated)."""
    needed: list[str] = []
    for preset in presets:
        found = next((names for key, names in FAMILIES if key in preset), None)
        if found is None:
            raise ValueError(f"preset {preset}: no dataset in its name that rehearse.py knows ({FAMILIES})")
        needed += [name for name in found if name not in needed]
    return needed


def command(protocol: str, module: str, preset: str, ckpt: Path, data_root: Path, out: Path,
            on_gpu: bool) -> tuple[list[str], str]:
    """The rehearsal's command line, and the note of what differs from the preset (CPU only)."""
    args = [sys.executable, "-m", module, "--preset", preset]
    if protocol == "pretrain":
        args += [f"data_root={data_root}", f"out_dir={out / 'pretrain' / preset}"]
    else:
        args += ["--ckpt", str(ckpt), "--data-root", str(data_root), "--out-dir", str(out)]
    args += ["rehearsal=true", "force=true"]
    note = ""
    if not on_gpu:
        args.append(f"num_workers={CPU_WORKERS}")
        if preset in CPU_FIT:
            overrides, note = CPU_FIT[preset]
            args += list(overrides)
    return args, note


class TreeMemory:
    """Peak memory of a process and its descendants, sampled from /proc every ``interval`` s: the sum of their
    proportional set sizes (PSS: a page shared by n processes counts 1/n in each), so the DataLoader workers' copies
    of the libraries and the dataset index count once, as the machine holds them."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):  # the process ended meanwhile
                    todo += [int(c) for c in task.read_text().split()]
        return pids

    def _watch(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                with contextlib.suppress(OSError, StopIteration, ValueError):  # ended between listing and reading
                    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                    total += int(next(line for line in rollup if line.startswith("Pss:")).split()[1]) * 1024
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def rehearse(protocol: str, module: str, preset: str, ckpt: Path, data_root: Path, out: Path,
             on_gpu: bool, log_dir: Path) -> dict:
    """Run one preset's rehearsal; return its row."""
    args, note = command(protocol, module, preset, ckpt, data_root, out, on_gpu)
    log_file = log_dir / f"{protocol}__{preset}.log"
    print(f"== {protocol} {preset} (log: {log_file})", flush=True)
    began = time.time()
    with open(log_file, "w") as log:
        process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        memory = TreeMemory(process.pid)
        rc = process.wait()
        peak_mem = memory.stop()
    row = {"protocol": protocol, "preset": preset, "status": "ok" if rc == 0 else f"FAILED (exit {rc})",
           "wall_s": round(time.time() - began, 1), "peak_mem_gib": round(peak_mem / 2**30, 2), "note": note,
           "command": " ".join(args), "log": str(log_file)}
    if rc != 0:
        tail = log_file.read_text().strip().splitlines()[-1:] or [""]
        row["error"] = tail[0]
        print(f"!! {protocol} {preset} failed: {tail[0]}", flush=True)
        return row
    # force=true rewrote this preset's rehearsal record (its name is the checkpoint's and the config's)
    records_dir = (out / "pretrain" / preset if protocol == "pretrain" else out) / "records"
    mine = [r for r in load_records(records_dir) if r["rehearsal"] and r["preset"] == preset]
    if not mine:
        row["status"], row["error"] = "FAILED (no rehearsal record)", f"nothing new in {records_dir}"
        return row
    row.update(max(mine, key=lambda r: r["created"])["details"]["rehearsal"])
    return row


def _fmt(value: object, digits: int = 2) -> str:
    if value is None or value == "":
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render(rows: list[dict]) -> str:
    """The markdown table of the rows."""
    header = ("protocol", "preset", "status", "wall (s)", "peak mem (GiB)", "peak GPU (GiB)", "step (s)",
              "img/s", "full run (h)", "device-h", "note")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        full_h = r["full_run_s"] / 3600 if isinstance(r.get("full_run_s"), (int, float)) else None
        cells = (r["protocol"], r["preset"], r["status"], _fmt(r.get("wall_s"), 0), _fmt(r.get("peak_mem_gib")),
                 _fmt(r.get("peak_gpu_mem_gib")), _fmt(r.get("step_s")), _fmt(r.get("images_per_s"), 1),
                 _fmt(full_h, 1), _fmt(r.get("full_run_device_hours"), 1), r.get("note", ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", type=Path, help="a ResNet-50 checkpoint (any format adapters read)")
    parser.add_argument("--only", default="", help="protocols or protocol:preset, comma-separated")
    parser.add_argument("--json", type=Path, help="also write the rows (and the machine) to this file")
    parser.add_argument("--data-root", type=Path, default=REPO / "data" / "real-size",
                        help="the real-size data (generated here on first use)")
    parser.add_argument("--out", type=Path, default=REPO / "work_dirs" / "rehearsal",
                        help="records, run folders and one log per preset")
    args = parser.parse_args()
    if not args.ckpt.is_file():
        raise FileNotFoundError(f"{args.ckpt}: checkpoint not found; pass a ResNet-50 .pth (e.g. "
                                "scripts/make_random_checkpoint.py --arch resnet50 --out r50.pth)")
    selected = plan(args.only)

    import torch  # after the argument checks: a typo costs no torch import

    from byol_bench.tinydata import ensure_tiny_data

    on_gpu = torch.cuda.is_available()
    print(f"== real-size data in {args.data_root} (generated where missing)", flush=True)
    ensure_tiny_data(args.data_root, only=families([preset for _, _, preset, skip in selected if not skip]),
                     sizes="real")
    log_dir = args.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": torch.cuda.get_device_name() if on_gpu else None,
               "torch": torch.__version__, "python": platform.python_version(),
               "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"== rehearsing {sum(not s for *_, s in selected)} presets on {machine['gpu'] or machine['cpu']} "
          f"({machine['cores']} cores)", flush=True)
    rows, began = [], time.time()
    for protocol, module, preset, skip in selected:
        if skip:
            rows.append({"protocol": protocol, "preset": preset, "status": "covered", "note": skip})
        else:
            rows.append(rehearse(protocol, module, preset, args.ckpt, args.data_root, args.out, on_gpu, log_dir))
            print(render(rows[-1:]).splitlines()[-1], flush=True)
        machine["total_wall_s"] = round(time.time() - began, 1)
        if args.json:  # after every preset: an interrupted rehearsal keeps the rows it has
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    print(f"\n{render(rows)}\n\n{machine['gpu'] or machine['cpu']}, {machine['cores']} cores, torch "
          f"{machine['torch']}; total {machine['total_wall_s'] / 60:.1f} min")
    failed = [f"{r['protocol']}:{r['preset']}" for r in rows if r["status"].startswith("FAILED")]
    if failed:
        raise SystemExit(f"failed rehearsals: {', '.join(failed)}")


if __name__ == "__main__":
    main_guard(main)
