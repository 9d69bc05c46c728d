"""Pieces every trainer shares (linear probes, fine-tuning, detection, segmentation): small, so each loop stays visible.

What lives here, and nothing else:

* numerics policy: :func:`resolve_precision` (``auto`` = bf16 autocast on CUDA, fp32 elsewhere) and
  :func:`autocast`; channels_last is the runner's one-liner (``model.to(memory_format=torch.channels_last)``);
* distribution: :func:`wrap_ddp` (DDP only in a multi-process job; SyncBN conversion is ``dist.maybe_sync_bn``),
  :func:`batch_per_device` (the recipe fixes the global batch, whatever the process count);
* augmentation seeds: :func:`epoch_seed` (a resumed run redraws the same crops; processes draw different ones);
* schedules as per-iteration arrays (precomputed, logged, checkpointed): :func:`step_lr`, :func:`cosine_lr`
  (epoch-based recipes), :func:`warmup_multistep_lr` (detectron2/mmdet iteration recipes), :func:`poly_lr` (mmseg);
* checkpoints and ``resume=auto|none|<path>`` at epoch (or every-N-iteration) boundaries: :func:`resume_point` (the
  one resume rule of every trainer: ``--force`` trains afresh), :func:`find_resume`, :func:`save_training_state`,
  :func:`load_training_state` — the trainable modules, the optimizer, the epochs or iterations done, the RNG states
  and the config hash (a resumed run must be the same run) — and :func:`report_resume`, the one "resumed from"
  line;
* the divergence guard: :class:`DivergenceGuard` stops a run at the first loss that is not finite or exceeds
  :data:`DIVERGENCE_FACTOR` times the first one, with a one-line :class:`DivergenceError` (exit 2, no record), and
  :func:`save_training_state` refuses to overwrite the last good checkpoint with weights that are not finite;
* plots: :func:`plot_log` draws ``log.jsonl`` columns against a step/epoch column (loss curves, val curves);
  :func:`plot_bars` draws one value per class (per-class AP or IoU).

Progress/ETA lines are :class:`byol_bench.runlog.Progress`; run folders and records, :mod:`byol_bench.scaffold`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from byol_bench import dist
from byol_bench.checkpoint import CheckpointError, atomic_save, load_state_dict_strict, safe_load
from byol_bench.runner_config import TrainerConfig
from byol_bench.seeding import rng_for

CHECKPOINT_FORMAT = "byol-bench-train"

# A loss above this many times the first loss a run saw is divergence. Far above any healthy run (losses fall, and
# even a restart at a high learning rate stays within a few times its first loss), far below what a diverging run
# reaches within a few steps: lr=1e12 gives losses of 1e13 and more on the second step.
DIVERGENCE_FACTOR = 1e4


# ---------------------------------------------------------------- numerics and distribution


def resolve_precision(setting: str, device: torch.device) -> str:
    """``precision=auto|fp32|bf16`` -> ``fp32`` or ``bf16``: auto is bf16 autocast on CUDA, fp32 elsewhere."""
    if setting not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision={setting!r} is not one of auto, fp32, bf16")
    if setting != "auto":
        return setting
    return "bf16" if device.type == "cuda" else "fp32"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of a resolved precision (disabled for fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` in a multi-process job; ``module`` itself otherwise (one code path)."""
    if dist.get_world_size() == 1:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def batch_per_device(global_batch: int, world_size: int) -> int:
    """``global_batch / world_size``; a process count that does not divide the recipe's global batch is refused."""
    if global_batch % world_size:
        raise ValueError(f"global_batch_size={global_batch} does not divide by the {world_size} processes; launch a "
                         "process count that divides it (the recipe fixes the global batch)")
    return global_batch // world_size


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of one epoch's augmentations (and DataLoader worker seeds) on one process.

    A function of (seed, epoch, rank) only, so a run resumed at an epoch boundary draws the same crops as one that
    never stopped, and the processes of a job draw different ones.
    """
    return int(rng_for(seed, "augment", epoch, rank).integers(2**62))


# ---------------------------------------------------------------- schedules


def step_lr(base_lr: float, epochs: int, iters_per_epoch: int, milestones: Sequence[int],
            gamma: float = 0.1) -> np.ndarray:
    """Per-iteration learning rate of mmcv's step policy: ``base_lr * gamma ** (milestones passed)``, by epoch.

    The rate changes at the first iteration of each milestone epoch (epochs counted from 0; a milestone of 30 means
    epochs 30.. run at ``base_lr * gamma``). Milestones at or beyond ``epochs`` are never reached.
    """
    if epochs <= 0 or iters_per_epoch <= 0:
        raise ValueError(f"epochs={epochs} and iters_per_epoch={iters_per_epoch} must be positive")
    epoch_of_iter = np.arange(epochs * iters_per_epoch) // iters_per_epoch
    passed = (epoch_of_iter[:, None] >= np.asarray(sorted(milestones), dtype=np.int64)[None, :]).sum(1)
    return base_lr * gamma ** passed.astype(np.float64)


def cosine_lr(base_lr: float, total_iters: int, min_lr: float = 0.0) -> np.ndarray:
    """Per-iteration cosine decay from ``base_lr`` (iteration 0) towards ``min_lr`` (reached after the last one)."""
    if total_iters <= 0:
        raise ValueError(f"total_iters={total_iters} must be positive")
    t = np.arange(total_iters) / total_iters
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + np.cos(math.pi * t))


def warmup_multistep_lr(base_lr: float, total_iters: int, steps: Sequence[int], gamma: float = 0.1,
                        warmup_iters: int = 0, warmup_factor: float = 0.001) -> np.ndarray:
    """Per-iteration rate of detectron2's ``WarmupMultiStepLR`` (mmdet's step policy with linear warm-up).

    ``base_lr * gamma ** (steps passed)``, where step ``s`` is passed from iteration ``s`` on (iterations counted
    from 0), times a linear warm-up factor ``warmup_factor * (1 - t) + t`` with ``t = i / warmup_iters`` for
    ``i < warmup_iters`` (detectron2 ``_get_warmup_factor_at_iter``, method "linear").
    """
    if total_iters <= 0:
        raise ValueError(f"total_iters={total_iters} must be positive")
    i = np.arange(total_iters)
    passed = (i[:, None] >= np.asarray(sorted(steps), dtype=np.int64)[None, :]).sum(1)
    lr = base_lr * gamma ** passed.astype(np.float64)
    if warmup_iters > 0:
        t = np.minimum(i / warmup_iters, 1.0)
        lr = lr * np.where(i < warmup_iters, warmup_factor * (1 - t) + t, 1.0)
    return lr


def poly_lr(base_lr: float, total_iters: int, power: float = 0.9, min_lr: float = 0.0) -> np.ndarray:
    """Per-iteration rate of mmcv's ``PolyLrUpdaterHook`` / mmengine ``PolyLR`` (``by_epoch=False``).

    ``(base_lr - min_lr) * (1 - i / total_iters) ** power + min_lr`` at iteration ``i`` (counted from 0).
    """
    if total_iters <= 0:
        raise ValueError(f"total_iters={total_iters} must be positive")
    return (base_lr - min_lr) * (1 - np.arange(total_iters) / total_iters) ** power + min_lr


# ---------------------------------------------------------------- divergence


class DivergenceError(ValueError):
    """Training diverged; the one-line message names the step, the loss, the lr and the last good checkpoint.

    A ``ValueError``: the entry point prints it as one line and exits 2, and no record is written.
    """


class DivergenceGuard:
    """Stops a trainer at the first loss that is not finite or above ``factor`` times the first loss it saw.

    A run on NaN (or on losses of 1e13 that stay finite) would otherwise train to the end and write a record that
    looks valid. Losses may be device tensors: they are kept until ``every`` of them are pending and then read
    together (one device synchronisation per window instead of one per step; a trainer that reads its loss every
    step anyway passes floats and ``every=1``). :meth:`flush` reads what is pending (at an epoch's end, before a
    checkpoint). The first loss is this invocation's (a resumed run measures from its first step again).

    Args:
        label: the run's name in the message (the protocol).
        checkpoint: the trainer's checkpoint file, named in the message when it exists (the last good one: it
            was saved before the diverged step).
        unit: what ``step`` counts (``step``, ``iteration``, ``epoch``).
        every: losses read per device synchronisation.
        factor: the bound, in multiples of the first loss.
    """

    def __init__(self, label: str, checkpoint: Path | None, *, unit: str = "step", every: int = 1,
                 factor: float = DIVERGENCE_FACTOR) -> None:
        self.label, self.checkpoint, self.unit, self.every, self.factor = label, checkpoint, unit, every, factor
        self.first: float | None = None
        self.pending: list[tuple[int, float, torch.Tensor | float]] = []

    def observe(self, loss: torch.Tensor | float, step: int, lr: float) -> None:
        """Take the loss of ``step`` (trained at ``lr``); check it now, or with the next ``every - 1``."""
        self.pending.append((step, lr, loss.detach() if isinstance(loss, torch.Tensor) else loss))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        """Check every pending loss, in order.

        Raises:
            DivergenceError: the first that is not finite or above the bound.
        """
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        tensors = [v for _, _, v in pending if isinstance(v, torch.Tensor)]
        read = iter(torch.stack([t.float().reshape(()) for t in tensors]).tolist()) if tensors else iter(())
        for step, lr, value in pending:
            loss = next(read) if isinstance(value, torch.Tensor) else float(value)
            why = divergence(loss, self.first, self.factor)
            if why is not None:
                kept = (f"the last good checkpoint {self.checkpoint} is kept"
                        if self.checkpoint and self.checkpoint.is_file() else "no checkpoint was written")
                raise DivergenceError(f"{self.label}: training diverged at {self.unit} {step}: loss {loss:.4g} {why} "
                                      f"(lr {lr:.4g}); stopped without a record, {kept}; rerun with a lower lr")
            if self.first is None:
                self.first = loss


def divergence(loss: float, first: float | None, factor: float = DIVERGENCE_FACTOR) -> str | None:
    """Why ``loss`` means divergence (``is not finite``; ``exceeds 1e4 x the first loss (6.9)``), else None.

    ``first``: the run's first loss (None: ``loss`` is the first, and only its finiteness is checked).
    """
    if not math.isfinite(loss):
        return "is not finite"
    if first is not None and abs(loss) > factor * max(abs(first), 1e-12):
        return f"exceeds {factor:g} x the first loss ({first:.4g})"
    return None


def check_finite_weights(modules: Mapping[str, nn.Module], path: Path, done: int) -> None:
    """Refuse to save weights that are not finite (a step can spoil them without a non-finite loss).

    Raises:
        DivergenceError: naming ``path``, which keeps the last good state.
    """
    for name, module in modules.items():
        params = [p.detach() for p in module.parameters() if p.is_floating_point()]
        if params and not torch.isfinite(torch.stack(torch._foreach_norm(params)).sum()).item():
            kept = f"{path} keeps the last good state" if path.is_file() else "no checkpoint was written"
            raise DivergenceError(f"training diverged: the {name} weights are not finite at the checkpoint of "
                                  f"{done} done; not saved, stopped without a record, {kept}; rerun with a lower lr")


# ---------------------------------------------------------------- checkpoints and resume


def resume_point(run_dir: Path, cfg: TrainerConfig, name: str = "latest.pth") -> Path | None:
    """The checkpoint a trainer continues from, or None to train from scratch: the one resume rule of every trainer.

    ``--force`` redoes the run, so with ``resume=auto`` a finished (or interrupted) run's ``run_dir/name`` is not
    resumed from: training starts afresh and overwrites it. Otherwise :func:`find_resume` (``auto``: ``run_dir/name``
    if it exists; ``none``; an explicit path, also under ``--force``).

    Args:
        run_dir: the folder of the state (the run folder; a grid cell's or a trial's own folder).
        cfg: the runner's config (``resume``, ``force``).
        name: the state file in ``run_dir`` (an engine's own, e.g. mmengine's ``last_checkpoint``).

    Raises:
        ValueError: ``resume=none`` but ``run_dir/name`` exists (it would be overwritten).
        CheckpointError: an explicit path that does not exist.
    """
    if cfg.force and cfg.resume == "auto":
        set_aside_unreadable(run_dir / name)
        return None
    return find_resume(run_dir, cfg.resume, name)


def find_resume(run_dir: Path, resume: str, name: str = "latest.pth") -> Path | None:
    """The checkpoint to continue from: ``auto`` (``run_dir/name`` if it exists), ``none``, or a path.

    An unreadable ``run_dir/name`` (a truncated write, a full disk) is never resumed from: ``resume=none`` moves it
    aside (:func:`set_aside_unreadable`) and trains afresh, ``resume=auto`` stops and says so.

    Raises:
        ValueError: ``resume=none`` but ``run_dir`` holds a readable checkpoint (it would be overwritten).
        CheckpointError: ``resume=auto`` and ``run_dir/name`` is unreadable; an explicit path that does not exist.
    """
    latest = run_dir / name
    if resume == "auto":
        if latest.is_file() and not is_readable_checkpoint(latest):
            raise CheckpointError(f"{latest}: unreadable (truncated or not a torch checkpoint), so the run cannot "
                                  "resume from it; rerun with resume=none (or --force) to move it aside and train "
                                  "afresh")
        return latest if latest.is_file() else None
    if resume == "none":
        if set_aside_unreadable(latest) is None and latest.is_file():
            raise ValueError(f"{latest}: exists; continue with resume=auto, or use another out_dir")
        return None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found; resume takes auto, none or a .pth path")
    return path


def is_readable_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a complete torch (zip) checkpoint: its central directory, written last, can be read.

    Cheap (the directory, not the tensors): a write cut short by a kill or a full disk leaves no directory. Files
    that are not ``.pth`` (an engine's ``last_checkpoint`` pointer) are not judged here.
    """
    if path.suffix != ".pth":
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def set_aside_unreadable(path: Path) -> Path | None:
    """Move an unreadable checkpoint to ``<name>.unreadable[.<n>]`` (kept for inspection, not deleted), warning
    on stderr; return where it went, or None when ``path`` is absent or readable. Rank 0 moves it; the other ranks
    only see it gone."""
    if not path.is_file() or is_readable_checkpoint(path):
        return None
    aside, n = path.with_name(path.name + ".unreadable"), 0
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.unreadable.{n}")
    if dist.is_main():
        path.rename(aside)
        print(f"warning: {path} is unreadable (truncated or not a torch checkpoint); moved it to {aside} and "
              "training afresh", file=sys.stderr)
    return aside


def report_resume(label: str, path: Path, done: int, unit: str) -> None:
    """Print (rank 0) the one line every trainer prints when it resumes: ``<label>: resumed from <path> after
    <unit> <done>``."""
    if dist.is_main():
        print(f"{label}: resumed from {path} after {unit} {done}")


def save_training_state(path: Path, *, modules: Mapping[str, nn.Module], optimizer: torch.optim.Optimizer,
                        done: int, config_hash: str, extra: dict[str, Any] | None = None,
                        diverged: bool = False) -> None:
    """Write (rank 0, atomically) what :func:`load_training_state` needs to continue after ``done`` epochs/iterations.

    Args:
        path: the checkpoint file.
        modules: the trainable modules by name (unwrapped from DDP), e.g. ``{"heads": heads}``.
        optimizer: its state (momentum buffers) is saved too.
        done: epochs (or, for an iteration-based recipe, iterations) completed: the runner's unit.
        config_hash: the run's config hash; a resume with another config is refused.
        extra: anything else the runner wants back (e.g. the evaluations so far), JSON-like values only.
        diverged: the state of a run (a semi_sup grid cell) already stopped as diverged, kept to say so and never
            trained from again: its weights are saved whatever they hold. Otherwise weights that are not finite
            are refused (:func:`check_finite_weights`), so ``path`` keeps the last good state.
    """
    if not dist.is_main():
        return
    if not diverged:
        check_finite_weights(modules, Path(path), done)
    state = {
        "format": CHECKPOINT_FORMAT, "done": done, "config_hash": config_hash,
        "modules": {name: {k: v.detach().cpu() for k, v in m.state_dict().items()} for name, m in modules.items()},
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "extra": extra or {},
    }
    atomic_save(state, path)


def load_training_state(path: Path, *, modules: Mapping[str, nn.Module], optimizer: torch.optim.Optimizer,
                        config_hash: str) -> tuple[int, dict[str, Any]]:
    """Restore modules, optimizer and RNG from a :func:`save_training_state` file.

    Returns:
        The epochs (iterations) completed and the ``extra`` dict.

    Raises:
        CheckpointError: not such a checkpoint, written by another config, or weights that do not fit.
    """
    state = safe_load(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a byol-bench training checkpoint; resume=auto needs one this runner wrote")
    if state["config_hash"] != config_hash:
        raise CheckpointError(f"{path}: written with config {state['config_hash']}, this run is {config_hash}; resume "
                              "with the same preset and overrides, or use another out_dir")
    for name, module in modules.items():
        load_state_dict_strict(module, state["modules"][name], path)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if torch.cuda.is_available() and state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["done"]), dict(state["extra"])


# ---------------------------------------------------------------- curves


def plot_log(log_path: Path, png_path: Path, x: str, ys: Sequence[str], title: str, ylabel: str = "") -> Path | None:
    """Plot the ``ys`` columns of a JSON-lines log against column ``x`` (rows lacking ``x`` are skipped).

    Returns:
        The PNG path, or None when the log has no such rows.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: clusters and CI
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for y in ys:
        points = [(r[x], float(r[y])) for r in rows if x in r and y in r]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o" if len(points) < 30 else None, label=y)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel=x, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    os.makedirs(Path(png_path).parent, exist_ok=True)
    fig.savefig(png_path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(png_path)


def plot_bars(values: Mapping[str, float | None], png_path: Path, title: str, ylabel: str) -> Path:
    """One bar per class (per-class AP, IoU), in the given order; a class without a value (None) is marked n/a."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(values)
    heights = [0.0 if values[n] is None else float(values[n]) for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 1.5), 4))
    ax.bar(range(len(names)), heights, color="tab:blue")
    for i, name in enumerate(names):
        if values[name] is None:
            ax.text(i, 0.5, "n/a", ha="center", va="bottom", rotation=90, fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=title, ylim=(0, 100))
    ax.grid(axis="y", alpha=0.3)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return png_path
