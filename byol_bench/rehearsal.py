"""Rehearsal of a full preset (``rehearsal=true``): every size of the preset, two optimizer steps, a short evaluation.

A full preset's first run should not be its first run anywhere: a shape error, an out-of-memory or a 10x slowdown
found after an hour on the GPUs costs the hour. With ``rehearsal=true`` a runner (and the pretrainer) runs the preset
exactly as written (input and crop sizes, multi-scale sizes, model widths, heads, batch per device, accumulation
window, precision, feature dimensions, SVM grids, slide windows, evaluation code and result files) and cuts only the
amount of work (docs/REHEARSAL.md):

* **one process of the reference world**: the per-device batch and accumulation window are those of one process of
  the world the preset names (``8xb32``: 8 processes of 32 images; :func:`reference_world`), whatever the number
  of processes here: that is what each GPU of the real job holds;
* :data:`STEPS` optimizer steps, each a full window (the training data is cut to exactly that many images);
* evaluation on the first :data:`EVAL_IMAGES` images of each evaluated split;
* one trial of a multi-trial protocol; schedules (warm-up, milestones) compressed to the steps run.

The record says ``rehearsal: true`` (the tables leave it out) and its ``details.rehearsal`` holds what
:class:`Clock` measured, plus the extrapolated time of the full run from :data:`REAL_SPLIT_IMAGES`.
``scripts/rehearse.sh`` runs every full preset this way and prints the table.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

STEPS = 2  # optimizer steps of a rehearsal: the second one is steady state (the first pays start-up)
EVAL_IMAGES = 8  # images of each evaluated split (the first ones, in the split's order)

# Images of the real splits the full presets read, for the extrapolated full-run time (docs/DATASETS.md). Detection
# train sets count the images with annotations (the ones a run trains on).
REAL_SPLIT_IMAGES: dict[str, int] = {
    "imagenet/train": 1_281_167, "imagenet/val": 50_000,
    "imagenet_1pct/train": 12_811, "imagenet_10pct/train": 128_116,
    "inat18/train": 437_513, "inat18/val": 24_426,
    "places205/train": 2_448_873, "places205/val": 20_500,
    "voc07/trainval": 5_011, "voc07/test": 4_952,
    "voc0712/trainval": 16_551,
    "coco/train2017": 117_266, "coco/val2017": 5_000,
    "voc12aug/trainaug": 10_582, "voc12aug/val": 1_449,
    "cityscapes/train": 2_975, "cityscapes/val": 500,
}

_WORLD = re.compile(r"(?:^|[_-])(\d+)xb\d+")


def reference_world(preset: str) -> int:
    """The process count a preset is written for, from its name (``..._8xb32-...`` -> 8; docs/RUNNERS.md names).

    Raises:
        ValueError: the name does not say it (a custom preset: name it ``<model>_<N>xb<B>-...``).
    """
    found = _WORLD.search(preset)
    if not found:
        raise ValueError(f"preset {preset!r}: a rehearsal needs the reference world size from the preset name "
                         "(<N>xb<B>, e.g. ..._8xb32-...; docs/RUNNERS.md); rehearse a named full preset")
    return int(found.group(1))


def real_images(split: str) -> int:
    """Images of a real split (a key of :data:`REAL_SPLIT_IMAGES`, e.g. ``imagenet/train``).

    Raises:
        ValueError: a split the table does not know (a rehearsal extrapolates to the real datasets only).
    """
    if split not in REAL_SPLIT_IMAGES:
        raise ValueError(f"a rehearsal extrapolates to the real datasets; {split!r} is not one of "
                         f"{', '.join(REAL_SPLIT_IMAGES)}")
    return REAL_SPLIT_IMAGES[split]


def first(dataset: Dataset, count: int, what: str) -> Subset:
    """The first ``count`` items of ``dataset`` (a rehearsal's cut of a split).

    Raises:
        ValueError: the split holds fewer (the rehearsal data is too small for one window of this preset).
    """
    if len(dataset) < count:  # type: ignore[arg-type]
        raise ValueError(f"{what}: {len(dataset)} images, a rehearsal of this preset needs {count} (its two "  # type: ignore[arg-type]
                         "steps); rehearse on the real-size data (scripts/make_tiny_data.py --real-size), which "
                         "holds enough for every full preset")
    return Subset(dataset, range(count))


def first_eval(dataset: Dataset) -> Subset:
    """The first :data:`EVAL_IMAGES` images of an evaluated split (all of them when it holds fewer: a rehearsal's
    evaluation checks the code path and its cost per image, any count does)."""
    return Subset(dataset, range(min(EVAL_IMAGES, len(dataset))))  # type: ignore[arg-type]


def peak_gpu_mem_gib(device: torch.device) -> float | None:
    """The process's peak CUDA memory allocated on ``device`` (GiB), None off CUDA."""
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def epoch_full_run(cfg: Any, train: str, val: str, world: int, evaluated_models: int = 1) -> dict[str, int]:
    """``full_steps`` and ``full_eval_images`` of an epoch recipe (an ``EpochTrainerConfig``) on the real splits.

    Args:
        train, val: keys of :data:`REAL_SPLIT_IMAGES`.
        world: the reference world (each process evaluates its share of val).
        evaluated_models: models scored at each evaluation (a fine-tuning grid's cells).
    """
    steps = cfg.epochs * math.ceil(REAL_SPLIT_IMAGES[train] / cfg.global_batch_size)
    evals = sum(1 for e in range(1, cfg.epochs + 1) if e % cfg.eval_every_epochs == 0 or e == cfg.epochs)
    return {"full_steps": steps,
            "full_eval_images": evals * evaluated_models * math.ceil(REAL_SPLIT_IMAGES[val] / world)}


class Clock:
    """Times a rehearsal's optimizer steps and evaluation, on the device's clock (CUDA synchronised).

    Create it right before the training loop; call :meth:`step` after each optimizer step, wrap the evaluation in
    :meth:`evaluating`; :meth:`summary` is the record's ``details.rehearsal``. Outside a rehearsal
    (``enabled=False``) it does nothing, so a loop calls it unconditionally and a real run never synchronises the GPU
    for it.
    """

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.device, self.enabled = device, enabled
        self.steps: list[float] = []
        self.eval_s = 0.0
        self.eval_images = 0
        if enabled and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self._mark = self._now() if enabled else 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def step(self) -> None:
        """One optimizer step ended (its time counts from the previous step's end, data loading included)."""
        if not self.enabled:
            return
        now = self._now()
        self.steps.append(now - self._mark)
        self._mark = now

    @contextmanager
    def evaluating(self, images: int) -> Iterator[None]:
        """Times an evaluation of ``images`` images (per process)."""
        if not self.enabled:
            yield
            return
        began = self._now()
        yield
        self.eval_s += self._now() - began
        self.eval_images += images
        self._mark = self._now()

    def summary(self, *, images_per_step: int, reference_world: int, full_steps: int, full_eval_images: int,
                **extra: Any) -> dict[str, Any]:
        """What the rehearsal measured and the full run it extrapolates to.

        Args:
            images_per_step: images one process trains on per optimizer step (batch per device x window).
            reference_world: the preset's process count (the full run's world; each of its devices does the same
                per-step work as this one did).
            full_steps: optimizer steps of the full run (every trial, every grid cell's shared step).
            full_eval_images: images one process of the reference world evaluates over the whole full run.
            extra: protocol-specific figures (e.g. the SVM's solve time).
        """
        if not self.steps:
            raise RuntimeError("Clock.summary() before any step")
        step_s = self.steps[-1]  # steady state: the last step
        per_eval_image = self.eval_s / self.eval_images if self.eval_images else 0.0
        full_s = step_s * full_steps + per_eval_image * full_eval_images
        out = {
            "steps": len(self.steps), "step_times_s": [round(s, 3) for s in self.steps],
            "first_step_s": round(self.steps[0], 3), "step_s": round(step_s, 3),
            "images_per_step": images_per_step, "images_per_s": round(images_per_step / step_s, 2),
            "eval_images": self.eval_images, "eval_s": round(self.eval_s, 3),
            "reference_world": reference_world, "full_steps": full_steps, "full_eval_images": full_eval_images,
            "full_run_s": round(full_s, 1), "full_run_device_hours": round(full_s * reference_world / 3600, 2),
            "peak_gpu_mem_gib": peak_gpu_mem_gib(self.device),
            **extra,
        }
        return out
