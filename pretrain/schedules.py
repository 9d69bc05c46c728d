"""Per-optimizer-step schedules, precomputed as arrays (as DINO does): ``lr[step]`` and ``momentum[step]``.

Optimizer step ``s`` (0-based) happens at the end of its accumulation window, i.e. at data iteration
``it = (s + 1) * accum_steps - 1``; the learning rate it uses is the one the reference sets for that iteration.
"""

from __future__ import annotations

import math

import numpy as np


def lr_schedule(*, peak_lr: float, total_steps: int, accum_steps: int, iters_per_epoch: int, epochs: int,
                warmup_iters: int, warmup_ratio: float, min_lr: float, cosine: str) -> np.ndarray:
    """Learning rate of every optimizer step.

    ``cosine="per_epoch"`` is mmcv's ``CosineAnnealing`` + linear warm-up by epoch, exactly (B §1.6): the cosine
    value is recomputed once per epoch from ``epoch / epochs``; during the first ``warmup_iters`` iterations the
    rate is that value times ``1 - (1 - it / W)(1 - warmup_ratio)``, updated every iteration.

    ``cosine="per_step"`` is the paper's and mmselfsup 1.x's form: linear warm-up from ``warmup_ratio * peak`` over
    the warm-up steps, then a cosine from ``peak`` to ``min_lr`` over the remaining steps.

    Raises:
        ValueError: unknown ``cosine`` name.
    """
    steps = np.arange(total_steps, dtype=np.float64)
    if cosine == "per_epoch":
        it = (steps + 1) * accum_steps - 1
        epoch = np.floor(it / iters_per_epoch)
        regular = min_lr + (peak_lr - min_lr) * (1 + np.cos(np.pi * epoch / epochs)) / 2
        if warmup_iters == 0:
            return regular
        factor = np.where(it < warmup_iters, 1 - (1 - it / warmup_iters) * (1 - warmup_ratio), 1.0)
        return regular * factor
    if cosine == "per_step":
        warmup_steps = min(math.ceil(warmup_iters / accum_steps), total_steps)
        warm = peak_lr * (warmup_ratio + (1 - warmup_ratio) * steps / max(warmup_steps, 1))
        decay_len = max(total_steps - warmup_steps, 1)
        cos = min_lr + (peak_lr - min_lr) * (1 + np.cos(np.pi * (steps - warmup_steps) / decay_len)) / 2
        return np.where(steps < warmup_steps, warm, cos)
    raise ValueError(f"unknown lr_cosine {cosine!r}; valid: per_epoch, per_step")


def momentum_schedule(*, base: float, end: float, total_steps: int) -> np.ndarray:
    """Target EMA momentum of every optimizer step: ``end - (end - base)(cos(π s / S) + 1) / 2``.

    "τ ≜ 1 − (1 − τ_base)·(cos(πk/K) + 1)/2 with k the current training step and K the maximum number of training
    steps" (paper §3.2). k counts optimizer steps (PROTOCOLS.md A.2); mmselfsup counts data iterations (B §1.4).
    """
    steps = np.arange(total_steps, dtype=np.float64)
    return end - (end - base) * (np.cos(np.pi * steps / total_steps) + 1) / 2
