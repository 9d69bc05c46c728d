"""``--plan``: what the full presets cost before a GPU hour is spent (docs/CLUSTER.md).

Per preset: the GPUs of its recipe, its schedule (optimizer steps), the images it trains on (an epoch recipe:
epochs x the real train split; an iteration recipe: iterations x the global batch), a rate in images per second
per GPU, the GPU-hours that follow (training images / rate, plus the evaluations at three times the rate: a forward
pass only), and the wall time on the planned cluster (``--gpus`` per node x ``--nodes``): each job on its recipe's
GPU count (fewer when the cluster has fewer), the jobs started in the list's order as GPUs free up.

The rate comes from a ``scripts/gpu_check.py`` JSON when one is given and it rehearsed the preset on a GPU (its
measured steady-state images/s per process, and the full run it extrapolated); otherwise from
:data:`REFERENCE_RATES`, estimates for one A100-class GPU in mixed precision, documented in docs/CLUSTER.md.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass
from pathlib import Path

from benchmarks.suite.jobs import runner_config
from byol_bench.protocols import Protocol, Selection
from byol_bench.rehearsal import REAL_SPLIT_IMAGES

# Images per second per GPU (A100-class, mixed precision, data loading with 8-10 cores per GPU), by protocol or
# preset: estimates from ResNet-50 throughput, see docs/CLUSTER.md. gpu_check's rehearsal replaces them by
# measurements.
REFERENCE_RATES: dict[str, float] = {
    "pretrain": 500.0,  # two views forward-backward online + forward target: ~2.7 supervised steps per image
    "voc07_svm": 40.0,  # features of every layer (one pass) + the SVM cost grid on the CPU, per image
    "linear_mhead": 1000.0,  # frozen trunk, forward only: data loading bound
    "linear_avgpool": 1000.0,
    "semi_sup": 130.0,  # nine fine-tuned ResNet-50s per image (a grid preset)
    "det_voc": 8.0,  # Faster R-CNN R50-C4, 800 px
    "det_coco": 16.0,  # Mask R-CNN R50-FPN, 640-800 px
    "fcn_r50-d8_4xb4-20k_voc12aug-512x512": 12.0,  # dilated ResNet-50 at stride 8, 512 crops
    "fcn_r50-d8_4xb2-40k_cityscapes-769x769": 4.0,  # 769 crops; 2049x1025 slide evaluation
}
EVAL_SPEEDUP = 3.0  # evaluation images cost a forward pass: a third of a training image
TRAIN_SPLIT = {"voc0712": "voc0712/trainval", "coco": "coco/train2017", "voc12aug": "voc12aug/trainaug"}
VAL_SPLIT = {"imagenet_1pct": "imagenet/val", "imagenet_10pct": "imagenet/val", "voc0712": "voc07/test",
             "coco": "coco/val2017"}


@dataclass(frozen=True)
class Row:
    protocol: str
    preset: str
    gpus: int
    schedule: str
    images: int  # training images (repeats counted)
    eval_images: int
    rate: float  # images per second per GPU
    source: str
    gpu_hours: float


def load_rates(path: Path | None) -> dict[str, dict]:
    """The GPU rehearsal rows of a gpu_check JSON by preset (``{}`` without one).

    Raises:
        ValueError: the file is not a gpu_check JSON.
    """
    if path is None:
        return {}
    fix = "pass the JSON that `python scripts/gpu_check.py --out FILE` wrote"
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--rates {path}: not readable as JSON ({exc}); {fix}") from None
    if not isinstance(report, dict) or not {"machine", "steps"} <= report.keys():
        raise ValueError(f"--rates {path}: not a gpu_check JSON (no 'machine' and 'steps'); {fix}")
    if report.get("dry_run") or not report["machine"].get("gpu"):
        raise ValueError(f"--rates {path}: a CPU dry run of gpu_check measures no GPU rate; {fix} on a GPU")
    rows = report["steps"].get("rehearsal", {}).get("rows", [])
    gpu = report["machine"]["gpu"]
    return {row["preset"]: {**row, "gpu": gpu} for row in rows if row.get("status") == "ok" and row.get("images_per_s")}


def work(protocol: Protocol, preset: str, gpus: int) -> tuple[str, int, int, int]:
    """``(schedule, optimizer steps, training images, evaluation images)`` of a full preset on the real splits."""
    runner, cfg = runner_config(protocol, ("--preset", preset))
    if protocol.name == "voc07_svm":  # trains nothing: features of trainval and test
        images = REAL_SPLIT_IMAGES["voc07/trainval"] + REAL_SPLIT_IMAGES["voc07/test"]
        return f"{len(cfg.layers)} layers x SVM grid", 0, images, 0
    dataset = getattr(cfg, "dataset", None) or runner.DATASET
    train = REAL_SPLIT_IMAGES[TRAIN_SPLIT.get(dataset, f"{dataset}/train")]
    val = REAL_SPLIT_IMAGES[VAL_SPLIT.get(dataset, f"{dataset}/val")]
    batch = getattr(cfg, "global_batch_size", None) or cfg.batch_size_per_device * gpus * getattr(cfg, "accum_steps", 1)
    trials = getattr(cfg, "trials", 1)
    if hasattr(cfg, "max_iters"):
        steps = cfg.max_iters * trials
        return f"{cfg.max_iters:,} iters x {batch}" + (f" x {trials} trials" if trials > 1 else ""), steps, \
            steps * batch, val * trials
    steps = cfg.epochs * math.ceil(train / batch) * trials
    every = getattr(cfg, "eval_every_epochs", cfg.epochs)
    evals = sum(1 for e in range(1, cfg.epochs + 1) if e % every == 0 or e == cfg.epochs)
    return f"{cfg.epochs} epochs x {batch}", steps, cfg.epochs * train * trials, evals * val


def plan(selection: Selection, rates: dict[str, dict]) -> list[Row]:
    """One row per (protocol, full preset) of ``selection`` (:func:`byol_bench.protocols.select`)."""
    rows = []
    for protocol, presets in selection:
        for preset in presets:
            gpus = protocol.gpus(preset)
            schedule, _, images, eval_images = work(protocol, preset, gpus)
            measured = rates.get(preset)
            if measured:
                rate, source = float(measured["images_per_s"]), f"gpu_check ({measured['gpu']})"
            else:
                rate, source = REFERENCE_RATES.get(preset) or REFERENCE_RATES[protocol.name], "reference"
            hours = (images + eval_images / EVAL_SPEEDUP) / rate / 3600
            if measured and measured.get("full_run_device_hours"):
                hours = float(measured["full_run_device_hours"])  # its own extrapolation: steps x measured step time
            rows.append(Row(protocol.name, preset, gpus, schedule, images, eval_images, rate, source, hours))
    return rows


def schedule_wall(rows: list[Row], cluster_gpus: int) -> tuple[list[float], float]:
    """Each job's wall hours on ``cluster_gpus`` and the suite's: jobs start in order as soon as their GPUs are free
    (a job on fewer GPUs than its recipe's takes proportionally longer)."""
    free, clock, running, finish = cluster_gpus, 0.0, [], 0.0
    walls = []
    for row in rows:
        gpus = min(row.gpus, cluster_gpus)
        while free < gpus:  # wait for the next job to end
            clock, released = heapq.heappop(running)
            free += released
        wall = row.gpu_hours / gpus
        walls.append(wall)
        heapq.heappush(running, (clock + wall, gpus))
        free -= gpus
        finish = max(finish, clock + wall)
    return walls, finish


def render(rows: list[Row], gpus_per_node: int, nodes: int) -> str:
    cluster = gpus_per_node * nodes
    walls, total_wall = schedule_wall(rows, cluster)
    lines = [f"Plan: the full presets on {nodes} node(s) x {gpus_per_node} GPUs ({cluster} GPUs)", "",
             "| protocol | preset | GPUs | schedule | train images | eval images | img/s/GPU | rate from | GPU-h "
             "| wall (h) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row, wall in zip(rows, walls, strict=True):
        lines.append(f"| {row.protocol} | {row.preset} | {min(row.gpus, cluster)}"
                     f"{'' if row.gpus <= cluster else f' (recipe {row.gpus})'} | {row.schedule} | {row.images:,} "
                     f"| {row.eval_images:,} | {row.rate:g} | {row.source} | {row.gpu_hours:,.1f} | {wall:,.1f} |")
    lines += ["", "GPU-hours per protocol: " + ", ".join(
        f"{name} {sum(r.gpu_hours for r in rows if r.protocol == name):,.1f}" for name in dict.fromkeys(
            r.protocol for r in rows)),
        f"Total: {sum(r.gpu_hours for r in rows):,.1f} GPU-hours; {total_wall:,.1f} h wall "
        f"({total_wall / 24:,.1f} days) on {cluster} GPUs, jobs started in order as GPUs free up."]
    if any(r.source == "reference" for r in rows):
        lines.append("Reference rates are estimates (docs/CLUSTER.md); measure yours with scripts/gpu_check.py "
                     "and pass --rates gpu_check.json.")
    return "\n".join(lines)
