#!/usr/bin/env python
"""The one prepared GPU check: every figure only a GPU can give, in one JSON file, in one command.

    python scripts/gpu_check.py --out gpu_check.json               # one GPU: ~8 minutes + the rehearsal (<= 5)
    python scripts/gpu_check.py --dry-run --out /tmp/gpu_check.json  # CPU, tiny shapes, < 2 minutes

Steps (each a benchmark script of scripts/ run with ``--json``, or the pretrainer itself; one failing step is
recorded with its error and the others still run):

* ``pretrain``: images/s of the BYOL trainer (ResNet-50, 224 px, bf16, batch 256, data pipeline included) vs the
  reference loop and the compute-only bound (scripts/bench_pretrain.py);
* ``linear_probe``: images/s of the multi-head linear probe, same comparison (scripts/bench_linear.py);
* ``svm``: the VOC07-sized batched SVM solver's wall time on the GPU (scripts/bench_svm.py; the sklearn
  reference runs a 1 % slice on the CPU cores and is extrapolated);
* ``semi_sup``: the 9-cell fine-tuning grid in one pass vs nine separate runs (GPU only);
* ``detection_c4``, ``detection_mask_rcnn``, ``segmentation``: training iterations/s of the detection and
  segmentation models at the reference sizes (native vs the optional engine when importable, else vs
  torchvision's stock models), and sliding-window inference images/s;
* ``rehearsal``: the rehearsals (scripts/rehearse.sh, docs/REHEARSAL.md) of the full presets whose first GPU run is
  the riskiest, chosen by cost (:data:`GPU_REHEARSAL`): per preset its wall time, peak GPU memory, time per
  optimizer step and extrapolated full run, on a random-init ResNet-50 and the real-size data (GPU only);
* ``learning``: the tiny BYOL recipe (configs/pretrain/tiny.yaml) run for ~3,400 steps (100 epochs of the
  embedded ImageNet) on the GPU; passes when its kNN top-1 on the embedded val set beats the random-init
  backbone's by >= 10 points (the check a 2-core CPU cannot afford: docs/PRETRAIN.md).

``--dry-run`` runs every step on the CPU with tiny shapes (and 1 pretraining epoch): it shows that the script
works before a GPU is spent on it (tests/test_gpu_check.py runs it); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LEARNING_MARGIN = 10.0  # kNN top-1 points over random init (issue 17)
# The full presets a GPU check rehearses: the largest per-GPU memory and the shapes a CPU rehearsal runs slowest
# (a 256-image BYOL step, the 512-image frozen forward, 1333x800 Mask R-CNN, 769x769 slides over 2048x1024).
# scripts/rehearse.sh rehearses them all; a GPU check cannot afford every one.
GPU_REHEARSAL = ("pretrain:byol_resnet50_16xb256-coslr-200e_in1k,linear_avgpool:linear-avgpool_resnet50_8xb512-"
                 "coslr-90e_in1k,det_coco,segmentation:fcn_r50-d8_4xb2-40k_cityscapes-769x769")
REHEARSAL_TIMEOUT_S = 300


@dataclass(frozen=True)
class Step:
    """One benchmark: a script of scripts/ and its arguments on a GPU and in a dry run."""

    name: str
    script: str
    gpu_args: tuple[str, ...]
    dry_args: tuple[str, ...] | None  # None: not run in a dry run (the reason is recorded)
    timeout_s: int


def _steps(data_root: Path) -> list[Step]:
    data = ("--data-root", str(data_root))
    return [
        Step("pretrain", "bench_pretrain.py",
             ("--device", "cuda", "--arch", "resnet50", "--image-size", "224", "--batch", "256", "--workers", "12",
              "--precision", "bf16", "--steps", "8", "--warmup", "3", "--rounds", "1", "--jpeg-size", "400", *data),
             ("--device", "cpu", "--arch", "resnet18", "--image-size", "32", "--batch", "4", "--workers", "1",
              "--steps", "1", "--warmup", "0", "--rounds", "1", *data), 150),
        Step("linear_probe", "bench_linear.py",
             ("--device", "cuda", "--arch", "resnet50", "--image-size", "224", "--batch", "256", "--workers", "12",
              "--precision", "bf16", "--iters", "10", "--warmup", "5", "--rounds", "1", "--jpeg-size", "400", *data),
             ("--device", "cpu", "--arch", "resnet18", "--image-size", "32", "--batch", "4", "--workers", "1",
              "--num-classes", "10", "--iters", "1", "--warmup", "0", "--rounds", "1", *data), 120),
        Step("svm", "bench_svm.py",
             ("--device", "cuda", "--sklearn-fraction", "0.01", "--workers", str(os.cpu_count() or 2)),
             ("--device", "cpu", "--n-train", "200", "--n-test", "100", "--dim", "64", "--ks", "1,2", "--samples",
              "1", "--sklearn-fraction", "0.2", "--workers", "1"), 150),
        # nine runner launches vs one: minutes on a CPU even at tiny sizes, so GPU only
        Step("semi_sup", "bench_semi_sup.py", ("--image-size", "112", "--skip-sequential"), None, 240),
        Step("detection_c4", "bench_det.py", ("--device", "cuda", "--model", "c4"),
             ("--device", "cpu", "--model", "c4", "--size", "64", "--rois", "4", "--iters", "1", "--warmup", "1",
              "--batch", "1"), 150),
        Step("detection_mask_rcnn", "bench_det.py", ("--device", "cuda", "--model", "mask_rcnn"),
             ("--device", "cpu", "--model", "mask_rcnn", "--size", "64", "--rois", "4", "--iters", "1", "--warmup",
              "1", "--batch", "1"), 150),
        Step("segmentation", "bench_seg.py",
             ("--device", "cuda", "--arch", "resnet50", "--crop", "512", "--batch", "4", "--image", "2048x1024",
              "--test-crop", "769", "--test-stride", "513", "--iters", "10", "--rounds", "1"),
             ("--device", "cpu", "--crop", "64", "--batch", "1", "--image", "128x64", "--test-crop", "48",
              "--test-stride", "32", "--iters", "1", "--warmup", "0", "--rounds", "1"), 150),
    ]


def run_step(step: Step, dry_run: bool) -> dict:
    """Run one benchmark script with ``--json``; its last stdout line is its figures."""
    script = REPO / "scripts" / step.script
    if not script.is_file():
        return {"status": "not available", "why": f"{script.relative_to(REPO)} does not exist yet"}
    if dry_run and step.dry_args is None:
        return {"status": "not available", "why": "GPU only: too slow for a CPU dry run"}
    argv = [sys.executable, str(script), *(step.dry_args if dry_run else step.gpu_args), "--json"]
    return _run_json(argv, step.timeout_s)


def _run_json(argv: list[str], timeout_s: int) -> dict:
    began = time.time()
    try:
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout_s": timeout_s, "command": " ".join(argv[1:])}
    wall = round(time.time() - began, 1)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"status": "failed", "exit": done.returncode, "wall_s": wall, "command": " ".join(argv[1:]),
                "stderr_tail": done.stderr.strip().splitlines()[-5:]}
    try:
        figures = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"status": "failed", "why": "the last output line is not JSON", "wall_s": wall, "last_line": lines[-1]}
    return {"status": "ok", "wall_s": wall, "figures": figures}


def learning_check(data_root: Path, work: Path, dry_run: bool) -> dict:
    """The tiny BYOL recipe for thousands of GPU steps: does it beat random init in the kNN monitor by 10 points?"""
    epochs, device, workers = ("1", "cpu", "1") if dry_run else ("100", "cuda", "8")
    argv = [sys.executable, "-m", "pretrain", "--preset", "tiny", f"data_root={data_root}", f"out_dir={work}",
            f"epochs={epochs}", f"device={device}", f"num_workers={workers}", "ckpt_every_steps=100000",
            "log_every_steps=50", "knn_random_init_baseline=true"]
    if dry_run:  # smallest shapes that still go through every stage (train, checkpoint, both kNN passes, record)
        # every 16th train image (69: all classes, 2 steps, the kNN bank) and every 5th val image (50: all classes)
        for split, every in (("train", 16), ("val", 5)):
            lines = (data_root / "imagenet" / "meta" / f"{split}.txt").read_text().splitlines()
            (work / f"{split}_subset.txt").write_text("\n".join(lines[::every]) + "\n")
            argv.append(f"{split}_list={work / f'{split}_subset.txt'}")
        argv += ["image_size=32", "projector_hidden_dim=256"]
    began = time.time()
    try:
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300 if dry_run else 330)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "command": " ".join(argv[1:])}
    records = sorted((work / "records").glob("*.json")) if (work / "records").is_dir() else []
    if done.returncode != 0 or not records:
        return {"status": "failed", "exit": done.returncode, "stderr_tail": done.stderr.strip().splitlines()[-5:]}
    metrics = json.loads(records[-1].read_text())["metrics"]
    margin = metrics["knn_top1"] - metrics["knn_top1_random_init"]
    return {"status": "ok", "wall_s": round(time.time() - began, 1), "epochs": int(epochs),
            "knn_top1": metrics["knn_top1"], "knn_top1_random_init": metrics["knn_top1_random_init"],
            "margin_points": round(margin, 2), "required_margin_points": LEARNING_MARGIN,
            # a dry run's one epoch says nothing about learning: only that the path works
            "passed": None if dry_run else bool(margin >= LEARNING_MARGIN)}


def rehearsal_check(work: Path, dry_run: bool) -> dict:
    """The :data:`GPU_REHEARSAL` presets through scripts/rehearse.py: its rows, or why there are none."""
    if dry_run:
        return {"status": "not available", "why": "GPU only: real-size rehearsals take minutes on a CPU "
                                                  "(scripts/rehearse.sh runs them there)"}
    ckpt, rows = work / "random-init_resnet50.pth", work / "rehearsal.json"
    subprocess.run([sys.executable, "scripts/make_random_checkpoint.py", "--arch", "resnet50", "--seed", "0",
                    "--out", str(ckpt)], cwd=REPO, check=True, capture_output=True)
    argv = [sys.executable, "scripts/rehearse.py", str(ckpt), "--only", GPU_REHEARSAL, "--json", str(rows),
            "--data-root", str(REPO / "data" / "real-size"), "--out", str(work / "rehearsal")]
    began = time.time()
    try:
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=REHEARSAL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout_s": REHEARSAL_TIMEOUT_S, "command": " ".join(argv[1:])}
    if not rows.is_file():
        return {"status": "failed", "exit": done.returncode, "stderr_tail": done.stderr.strip().splitlines()[-5:]}
    return {"status": "ok" if done.returncode == 0 else "failed", "wall_s": round(time.time() - began, 1),
            "rows": json.loads(rows.read_text())["rows"]}


def machine() -> dict:
    import torch

    from byol_bench.runlog import cpu_model

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "cuda": torch.version.cuda}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: check that the script works")
    parser.add_argument("--data-root", type=Path, default=REPO / "data" / "tiny",
                        help="embedded data (generated there when missing)")
    parser.add_argument("--only", default="", help="comma-separated step names (default: all)")
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"error: {args.out} exists; pass another --out (a previous check is never overwritten)")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("error: no CUDA device visible; run on a GPU machine, or pass --dry-run to check the script on CPU")
    sys.path.insert(0, str(REPO))
    from byol_bench.tinydata import ensure_tiny_data

    data_root = ensure_tiny_data(args.data_root)
    only = {s for s in args.only.split(",") if s}
    report: dict = {"dry_run": args.dry_run, "machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "steps": {}}
    began = time.time()
    for step in _steps(data_root):
        if not only or step.name in only:
            print(f"== {step.name}", flush=True)
            report["steps"][step.name] = run_step(step, args.dry_run)
            print(f"   {report['steps'][step.name]['status']}", flush=True)
    if not only or "rehearsal" in only:
        print("== rehearsal", flush=True)
        with tempfile.TemporaryDirectory() as work:
            report["steps"]["rehearsal"] = rehearsal_check(Path(work), args.dry_run)
        print(f"   {report['steps']['rehearsal']['status']}", flush=True)
    if not only or "learning" in only:
        print("== learning", flush=True)
        with tempfile.TemporaryDirectory() as work:
            report["steps"]["learning"] = learning_check(data_root, Path(work), args.dry_run)
        print(f"   {report['steps']['learning']['status']}", flush=True)
    report["wall_s"] = round(time.time() - began, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out} ({report['wall_s']} s)")
    failed = [name for name, result in report["steps"].items() if result["status"] not in ("ok", "not available")]
    if failed:
        sys.exit(f"error: steps {', '.join(failed)} did not complete; see {args.out}")


if __name__ == "__main__":
    main()
