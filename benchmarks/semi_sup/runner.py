"""Semi-supervised ImageNet fine-tuning on 1 % / 10 % of the labels (mmselfsup v0.5.0
``imagenet_{1percent,10percent}/resnet50_head{1,10,100}_4xb64-steplr{1e-1,1e-2,1e-3}-20e_in1k-{1,10}pct.py``;
PROTOCOLS.md A.5, B §4): the seed table "Semi-Supervised Classification".

Canonical command (the 9-cell grid of one fraction in one process; ``..._in1k-10pct`` for 10 %)::

    python -m benchmarks.semi_sup --preset resnet50_grid9_4xb64-steplr-20e_in1k-1pct --ckpt byol.pth \\
        --data-root /datasets subset_list=1percent.txt

    torchrun --nproc-per-node 4 -m benchmarks.semi_sup --preset ... (global batch stays 256)

One cell per job (e.g. a SLURM array: one single-cell preset per task, ``resnet50_head10_4xb64-steplr1e-2-20e_in1k-
1pct`` ...) works too: the cells keep their state in ``<out_dir>/runs/semi_sup/cells/``, shared with the grid
presets, so a grid run afterwards trains nothing that the jobs finished and writes the record with the best cell.

Fixed protocol (B §4):
  * model: the checkpoint's ResNet (``adapters.load_backbone``), **every layer trained**, BN in train mode (SyncBN
    when distributed on GPUs) -> global average pool -> ``Linear(C -> 1000)``, Normal(0, 0.01), bias 0;
  * SGD momentum 0.9, weight decay 5e-4 (1 %) / 1e-4 (10 %) on **every** parameter (BN and biases too), global
    batch 256, 20 epochs, lr x 0.2 at epochs 12 and 16;
  * grid: base lr in {0.1, 0.01, 0.001} x head lr multiplier in {1, 10, 100} (``'\\Ahead.'`` lr_mult: the head's
    rate is M x the backbone's through the decays);
  * data: the labelled subset (below); train RandomResizedCrop 224 + horizontal flip, test Resize 256 ->
    CenterCrop 224 (``byol_bench.classification``), RGB; top-1/top-5 on the full val split every
    ``eval_every_epochs`` and at the final epoch;
  * the record holds every cell (top-1/top-5 per evaluation) and, as its metrics, the best cell by final val top-1
    (the seed README: "choose the best performing setting"); ``details.best_cell`` names it;
  * subsets: a SimCLR ``1percent.txt``/``10percent.txt`` (``subset_list=``; labels by wnid from ``label_map``,
    as ``convert_imagenet_subsets.py``) or a ``wnid/file label`` list; without one, a seeded class-balanced subset.
    The list used is saved next to the record (``.subset.txt``), its sha256 and origin in ``details.subset``.

NOTE: ``grid=one_pass`` (default) trains all cells in one process over one data stream: each batch is decoded and
augmented once, then every cell takes its step. The augmentations are drawn from (seed, epoch, rank) only, never
from a cell, so a cell of the grid is tensor-equal to the same cell trained alone (tested on CPU); ``grid=
sequential`` trains the cells one after another (one model in memory at a time: 9 x ResNet-50 with momentum is
~2.7 GB).
NOTE: a cell whose loss becomes non-finite (lr 0.1 x head 100 can) stops training and is reported as diverged;
the best cell is chosen among the others.
NOTE: ``deterministic=true`` (the seed asks for ``--deterministic``: cuDNN deterministic, no benchmark) also
turns on torch's deterministic algorithms in warn-only mode (an op without one warns rather than stops the grid);
it is in the full presets. CPU runs with the same seed and thread count are reproducible either way (tested:
two runs, identical records).
NOTE: on GPU the cells run under bf16 autocast with channels_last (``precision=auto``); the reference is fp32.
NOTE: ``subset_list`` / ``label_map`` enter the config hash by path, not by content (the list's sha256 is in the
record): after replacing a list file in place, rerun with ``force=true``.
NOTE: a multi-process CPU job (gloo; for testing) keeps per-process BatchNorm: SyncBN runs on GPUs only
(``details.bn``; ``torchrun --nproc-per-node 2`` on CPU was checked to run and score the full val split).
NOTE: ``rehearsal=true`` (byol_bench.rehearsal) runs one process of the preset's world (64 images per step for
4xb64) for one epoch of two steps of every cell over the first images of the labelled subset, and scores the first
val images with every cell. No cell resumes in a rehearsal (it times every cell, also after a single-cell one).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from adapters import load_backbone
from byol_bench import dist, preflight, rehearsal, training
from byol_bench.backbone import MultiLayerFeatures, feature_channels
from byol_bench.checkpoint import sha256_file
from byol_bench.classification import (
    crop_flip_transform,
    labelled_subset,
    open_split,
    open_subset,
    test_transform,
)
from byol_bench.config import CONFIG_ROOT, config_hash, opt, parse_args
from byol_bench.datasets.imagenet import write_image_list
from byol_bench.metrics import TopkCounter
from byol_bench.runlog import Progress
from byol_bench.runner_config import EpochTrainerConfig, TrainerResolved
from byol_bench.scaffold import open_run
from byol_bench.seeding import rng_for

PROTOCOL = "semi_sup"
DATASETS = ("imagenet_1pct", "imagenet_10pct")  # the record's dataset is cfg.dataset
FRACTIONS = {"imagenet_1pct": 0.01, "imagenet_10pct": 0.10}
PRESET_DIR = CONFIG_ROOT / PROTOCOL
TOPK = (1, 5)


@dataclass(frozen=True)
class SemiSupConfig(EpochTrainerConfig, protocol=PROTOCOL, num_workers=8, epochs=20):
    """Semi-supervised fine-tuning settings (defaults = the 1 % grid of the reference, B §4)."""

    dataset: Literal["imagenet_1pct", "imagenet_10pct"] = opt("imagenet_1pct", "the label fraction (and table cell)")
    subset_list: str = opt("", "the labelled subset: a SimCLR 1percent.txt/10percent.txt or a 'wnid/file label' "
                               "list (relative to <data_root>/imagenet or absolute); empty = a seeded class-balanced "
                               "subset of the fraction")
    label_map: str = opt("meta/train_labeled.txt", "'wnid/file label' list giving a SimCLR list its labels (B §4)")
    subset_seed: int = opt(0, "seed of the generated subset (without subset_list)")
    base_lrs: tuple[float, ...] = opt((0.1, 0.01, 0.001), "grid: base learning rates (global batch 256)", positive=True)
    head_lr_mults: tuple[float, ...] = opt((1.0, 10.0, 100.0), "grid: head lr multipliers (kept through decays)",
                                           positive=True)
    grid: Literal["one_pass", "sequential"] = opt(
        "one_pass", "one_pass: all cells step on each decoded batch (one data stream); sequential: one cell after "
        "another (less memory). Same numbers either way", identity=False)
    milestones: tuple[int, ...] = opt((12, 16), "epochs at which the lr is multiplied by gamma")
    gamma: float = opt(0.2, "lr decay factor at each milestone", positive=True)
    momentum: float = opt(0.9, "SGD momentum (not nesterov)")
    weight_decay: float = opt(5e-4, "SGD weight decay on every parameter: 5e-4 at 1 %, 1e-4 at 10 %")
    seed: int = opt(0, "seed of the head initialisation (the same in every cell), shuffling and augmentations")
    deterministic: bool = opt(False, "cuDNN deterministic + torch deterministic algorithms (the seed's "
                                     "--deterministic)")
    precision: Literal["auto", "fp32", "bf16"] = opt("auto", "autocast: auto = bf16 on CUDA, fp32 on CPU")


@dataclass(frozen=True)
class Resolved(TrainerResolved):
    """The batch (batch_size_per_device = global_batch_size / world_size), precision and device, and the grid's
    cells; written as the run folder's ``resolved.json``."""

    cells: tuple[str, ...]


class FineTuneNet(nn.Module):
    """mmselfsup ``Classification``: the whole ResNet trunk -> global average pool -> ``head`` (Linear).

    The head's init (Normal(0, 0.01), bias 0) is drawn from ``generator``, so every cell starts from the same head.
    """

    def __init__(self, resnet: nn.Module, num_classes: int, generator: torch.Generator) -> None:
        super().__init__()
        resnet.fc = nn.Identity()  # the trunk's own classifier is never used (and must not be decayed or synced)
        self.backbone = MultiLayerFeatures(resnet, ("feat5",), pooled=False)
        self.head = nn.Linear(feature_channels(resnet)["feat5"], num_classes)
        with torch.no_grad():
            self.head.weight.normal_(0.0, 0.01, generator=generator)
            self.head.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # mean over H, W rather than AdaptiveAvgPool2d: same numbers, and its CUDA backward is deterministic
        return self.head(self.backbone(images)["feat5"].mean(dim=(2, 3)).float())


@dataclass
class Cell:
    """One grid cell: its model, optimizer, lr schedule, state file and results so far."""

    base_lr: float
    head_lr_mult: float
    model: FineTuneNet
    ddp: nn.Module
    optimizer: torch.optim.SGD
    lrs: np.ndarray  # per-iteration base lr; the head group runs at head_lr_mult x this
    state_file: Path
    key: str  # config hash of this cell alone: a single-cell run and the grid share its state
    done: int = 0
    state: dict = field(default_factory=lambda: {"evals": [], "train_loss": [], "diverged_epoch": None})

    @property
    def name(self) -> str:
        return cell_name(self.base_lr, self.head_lr_mult)


def run(cfg: SemiSupConfig) -> dict[str, float]:
    """Fine-tune every grid cell on the labelled subset, evaluate, write the record (best cell); return its metrics."""
    check_inputs(cfg)
    with open_run(PROTOCOL, cfg.dataset, cfg, ckpt=cfg.ckpt) as run, deterministic_algorithms(cfg.deterministic):
        if run.done is not None:
            return run.done
        info, device = run.info, run.info.device
        # a rehearsal is one process of the preset's world: its share of the batch, two steps, one epoch
        world = rehearsal.reference_world(cfg.preset) if cfg.rehearsal else info.world_size
        per_device = training.batch_per_device(cfg.global_batch_size, world)
        epochs = 1 if cfg.rehearsal else cfg.epochs
        precision = training.resolve_precision(cfg.precision, device)
        grid = [(lr, m) for lr in cfg.base_lrs for m in cfg.head_lr_mults]
        log = run.start(Resolved(world_size=info.world_size, batch_size_per_device=per_device,
                                 global_batch_size=cfg.global_batch_size, precision=precision, device=str(device),
                                 cells=tuple(cell_name(*g) for g in grid)))

        # ------------------------------------------------------------ labelled subset (a list file) and data
        samples, subset = labelled_subset(cfg.data_root, FRACTIONS[cfg.dataset], subset_list=cfg.subset_list,
                                          label_map=cfg.label_map, seed=cfg.subset_seed, tiny=cfg.tiny)
        subset_file = run.run_dir / "subset.txt"
        if info.is_main:
            write_image_list(subset_file, samples)
        dist.barrier()
        train = open_subset(cfg.data_root, subset_file, crop_flip_transform(cfg.image_size), tiny=cfg.tiny)
        val = open_split("imagenet", cfg.data_root, "val", test_transform(cfg.test_resize, cfg.image_size),
                         tiny=cfg.tiny)
        if cfg.rehearsal:
            train.dataset = rehearsal.first(train.dataset, rehearsal.STEPS * per_device * info.world_size,
                                            str(train.source))
            val.dataset = rehearsal.first_eval(val.dataset)
        data_check = preflight.check({"train": train.dataset, "val": val.dataset}, cfg.preflight, PROTOCOL)
        sampler = DistributedSampler(train.dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=cfg.seed)
        loader = DataLoader(train.dataset, per_device, sampler=sampler, num_workers=cfg.num_workers,
                            pin_memory=device.type == "cuda")
        # Evaluation: every rank scores a disjoint stride of val (no padding), counts are summed over ranks.
        val_loader = DataLoader(Subset(val.dataset, range(info.rank, len(val.dataset), info.world_size)), per_device,
                                num_workers=cfg.num_workers)

        # ------------------------------------------------------------ the grid: a model and optimizer per cell
        backbone, report = load_backbone(cfg.ckpt, cfg.arch, cfg.encoder, sha256=run.ckpt_sha256)
        cells_dir = Path(cfg.out_dir) / "runs" / PROTOCOL / "cells"
        cells = [make_cell(cfg, backbone, train.num_classes, lr, m, epochs, len(loader), device, cells_dir,
                           run.ckpt_sha256) for lr, m in grid]
        for cell in cells:  # resume=auto: each cell from its own state (--force, a rehearsal: every cell afresh)
            # Its folder is shared by the runs that train this cell (the grid, the cell alone, another grid): held
            # by this run until it ends, so a second one is refused (or waits), and cleared of interrupted writes.
            run.hold(cell.state_file.parent)
            resume_from = None if cfg.rehearsal else training.resume_point(cell.state_file.parent, cfg)
            if resume_from is not None:
                cell.done, cell.state = training.load_training_state(
                    resume_from, modules={"model": cell.model}, optimizer=cell.optimizer, config_hash=cell.key)
                training.report_resume(f"{PROTOCOL} cell {cell.name}", resume_from, cell.done, "epoch")
        log.drop_after_step(min(c.done for c in cells) * len(loader))

        # ------------------------------------------------------------ loop: one data stream per group of cells
        started = time.time()
        progress = Progress(sum(epochs - c.done for c in cells) * len(loader), f"{PROTOCOL} {cfg.dataset}",
                            unit="step")
        groups = [cells] if cfg.grid == "one_pass" else [[c] for c in cells]
        stopped = False
        clock = rehearsal.Clock(device, enabled=cfg.rehearsal)
        for group in groups:
            stopped = train_cells(cfg, epochs, group, loader, sampler, val_loader, precision, device, log, progress,
                                  clock)
        progress.close()
        if stopped:
            print(f"{PROTOCOL}: stopped after epoch {cfg.stop_after_epochs} (stop_after_epochs); rerun to resume")
            return {}

        # ------------------------------------------------------------ best cell, metrics, record
        results = {c.name: cell_result(c) for c in cells}
        best = best_cell(results)
        metrics = {"top1": results[best]["top1"], "top5": results[best]["top5"]}
        subset_copy = run.record_path.with_suffix(".subset.txt")
        details = {
            "best_cell": {"name": best, **results[best],
                          "reference_config": reference_config(cfg.dataset, results[best]["base_lr"],
                                                               results[best]["head_lr_mult"])},
            "cells": results,
            "subset": {**asdict(subset), "list_file": str(subset_copy), "list_sha256": sha256_file(subset_file)},
            "grid": cfg.grid, "deterministic": cfg.deterministic,
            "global_batch_size": cfg.global_batch_size, "world_size": info.world_size,
            "batch_size_per_device": per_device, "precision": precision, "bn": _bn_kind(cells[0].model),
            "num_classes": train.num_classes, "train_images": len(train.dataset), "val_images": len(val.dataset),
            "train_time_s_this_invocation": round(time.time() - started, 2),
        }
        if cfg.rehearsal:  # a step: one batch through every cell of its group (one_pass: all nine cells)
            full = rehearsal.epoch_full_run(cfg, f"{cfg.dataset}/train", "imagenet/val", world,
                                            evaluated_models=len(cells))
            full["full_steps"] *= len(groups)  # grid=sequential: a pass over the data per cell
            details["rehearsal"] = clock.summary(images_per_step=per_device, reference_world=world, **full)
        if info.is_main:
            os.makedirs(subset_copy.parent, exist_ok=True)
            shutil.copyfile(subset_file, subset_copy)
            png = training.plot_log(log.path, run.run_dir / "val_curve.png", "eval_epoch",
                                    [f"top1_{c.name}" for c in cells],
                                    run.plot_title(f"fine-tuning grid, {cfg.dataset} val"),
                                    "val top-1 (%)")
            details["val_curve_plot"] = str(png) if png else None
        details["preflight"] = data_check
        metrics = run.finish(metrics, checkpoint=asdict(report),
                             seeds={"head_shuffle_augment": cfg.seed, "subset": cfg.subset_seed},
                             batch_size_per_device=per_device, details=details)
        if info.is_main:
            print(f"{PROTOCOL} {cfg.dataset}: best cell {best}: top-1 {metrics['top1']:.2f} top-5 "
                  f"{metrics['top5']:.2f}; record {run.record_path}")
        return metrics


def train_cells(cfg: SemiSupConfig, epochs: int, cells: list[Cell], loader: DataLoader, sampler: DistributedSampler,
                val_loader: DataLoader, precision: str, device: torch.device, log, progress: Progress,
                clock: rehearsal.Clock) -> bool:
    """Train ``cells`` to ``epochs`` (``cfg.epochs``; a rehearsal's one) over one data stream: each batch is decoded
    and augmented once, then every cell of the group that is at this epoch takes its step (one ``clock`` step).
    Returns True when ``stop_after_epochs`` stopped it."""
    rank = dist.get_rank()
    for epoch in range(min(c.done for c in cells), epochs):
        active = [c for c in cells if c.done == epoch and c.state["diverged_epoch"] is None]
        if active:
            sampler.set_epoch(epoch)  # shuffling and augmentations: functions of (seed, epoch, rank), not of a cell
            torch.manual_seed(training.epoch_seed(cfg.seed, epoch, rank))
            losses = {c.name: torch.zeros((), dtype=torch.float64, device=device) for c in active}
            step_losses: dict[str, list[torch.Tensor]] = {c.name: [] for c in active}  # read once, at the epoch's end
            seen = 0
            for i, (images, labels) in enumerate(loader):
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                if device.type == "cuda":
                    images = images.contiguous(memory_format=torch.channels_last)
                for cell in active:
                    loss = train_step(cell, images, labels, float(cell.lrs[epoch * len(loader) + i]), precision)
                    losses[cell.name] += loss.detach().double() * len(labels)
                    step_losses[cell.name].append(loss.detach().float())
                    progress.update()
                clock.step()
                seen += len(labels)
            total = float(dist.all_reduce_sum(torch.tensor(float(seen), device=device)))
            row = {}
            for cell in active:
                cell.done = epoch + 1
                # the epoch's mean over every process: the ranks agree on which cells go on
                loss = float(dist.all_reduce_sum(losses[cell.name])) / total
                cell.state["train_loss"].append(loss if math.isfinite(loss) else None)
                # The divergence rule of every trainer (training.divergence), per cell and step, on the losses
                # averaged over the processes (so they agree on which cells go on); the first is kept in the state.
                per_step = dist.all_reduce_mean(torch.stack(step_losses[cell.name])).tolist()
                for i, step_loss in enumerate(per_step):
                    why = training.divergence(step_loss, cell.state.get("first_loss"))
                    if why is not None:  # this cell stops; the record comes from the others
                        cell.state["diverged_epoch"] = epoch + 1
                        if dist.is_main():
                            print(f"{PROTOCOL}: cell {cell.name} diverged at step {epoch * len(loader) + i + 1}: loss "
                                  f"{step_loss:.4g} {why} (lr {cell.lrs[epoch * len(loader) + i]:.4g}); it stops, "
                                  "the other cells go on")
                        break
                    cell.state.setdefault("first_loss", step_loss)
                row[f"loss_{cell.name}"] = loss if math.isfinite(loss) else None
            log.log(step=(epoch + 1) * len(loader), epoch=epoch + 1, **row)
            progress.set_postfix(epoch=epoch + 1)
            scoring = [c for c in active if c.state["diverged_epoch"] is None]
            if scoring and ((epoch + 1) % cfg.eval_every_epochs == 0 or epoch + 1 == epochs):
                with clock.evaluating(len(val_loader.dataset) * len(scoring)):  # image x cell
                    scores = evaluate(scoring, val_loader, precision, device)
                for cell, score in zip(scoring, scores, strict=True):
                    cell.state["evals"].append({"epoch": epoch + 1, **score})
                log.log(step=(epoch + 1) * len(loader), eval_epoch=epoch + 1,
                        **{f"{k}_{c.name}": v for c, s in zip(scoring, scores, strict=True) for k, v in s.items()})
            for cell in active:
                done = cell.done
                if (done % cfg.ckpt_every_epochs == 0 or done == epochs or done == cfg.stop_after_epochs
                        or cell.state["diverged_epoch"] is not None):
                    training.save_training_state(cell.state_file, modules={"model": cell.model},
                                                 optimizer=cell.optimizer, done=done, config_hash=cell.key,
                                                 extra=cell.state,
                                                 diverged=cell.state["diverged_epoch"] is not None)
        if epoch + 1 == cfg.stop_after_epochs and epoch + 1 < epochs:
            return True
    return False


def make_cell(cfg: SemiSupConfig, backbone: nn.Module, num_classes: int, base_lr: float, head_lr_mult: float,
              epochs: int, iters_per_epoch: int, device: torch.device, cells_dir: Path, ckpt_sha256: str) -> Cell:
    """A fresh cell: a copy of the loaded backbone, the seeded head, SGD over two groups, its lr schedule over
    ``epochs`` (``cfg.epochs``; a rehearsal's one)."""
    generator = torch.Generator().manual_seed(int(rng_for(cfg.seed, "head").integers(2**62)))
    model = FineTuneNet(copy.deepcopy(backbone), num_classes, generator)
    if device.type == "cuda":  # SyncBN in a multi-GPU job (as the reference); it has no CPU kernels
        model = dist.maybe_sync_bn(model).to(memory_format=torch.channels_last)
    model = model.to(device).train()
    key = config_hash(dataclasses.replace(cfg, preset="", base_lrs=(base_lr,), head_lr_mults=(head_lr_mult,)))
    return Cell(base_lr, head_lr_mult, model, training.wrap_ddp(model, device),
                build_optimizer(model, base_lr, head_lr_mult, cfg.momentum, cfg.weight_decay),
                training.step_lr(base_lr, epochs, iters_per_epoch, cfg.milestones, cfg.gamma),
                cells_dir / f"{ckpt_sha256[:8]}-{key}-{cell_name(base_lr, head_lr_mult)}" / "latest.pth", key)


def build_optimizer(model: FineTuneNet, base_lr: float, head_lr_mult: float, momentum: float,
                    weight_decay: float) -> torch.optim.SGD:
    """SGD with two groups, the trunk at ``lr_mult`` 1 and ``head.*`` at ``head_lr_mult`` (mmcv ``paramwise_options
    {'\\Ahead.': lr_mult}``); weight decay on every parameter, BN and biases included."""
    head = [p for n, p in model.named_parameters() if n.startswith("head.")]
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    return torch.optim.SGD([{"params": trunk, "lr_mult": 1.0}, {"params": head, "lr_mult": head_lr_mult}],
                           lr=base_lr, momentum=momentum, weight_decay=weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float) -> None:
    """Every group at ``lr_mult`` x the scheduled base rate (mmcv keeps each group's ratio through the decays)."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group["lr_mult"]


def train_step(cell: Cell, images: torch.Tensor, labels: torch.Tensor, base_lr: float,
               precision: str) -> torch.Tensor:
    """One SGD step of one cell on a batch (the batch is only read: the next cell steps on the same tensors)."""
    set_lr(cell.optimizer, base_lr)
    with training.autocast(images.device, precision):
        logits = cell.ddp(images)
    loss = F.cross_entropy(logits.float(), labels)
    cell.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    cell.optimizer.step()
    return loss


@torch.no_grad()
def evaluate(cells: list[Cell], loader: DataLoader, precision: str, device: torch.device) -> list[dict[str, float]]:
    """Top-1/top-5 (%) of every cell on the val split, each batch decoded once for all cells; counts over ranks."""
    for cell in cells:
        cell.model.eval()
    counter = TopkCounter([cell.name for cell in cells], TOPK)
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        for cell in cells:
            with training.autocast(device, precision):
                counter.add(cell.name, cell.model(images), labels)
    for cell in cells:
        cell.model.train()
    scores = counter.percent(device)
    return [scores[cell.name] for cell in cells]


def cell_result(cell: Cell) -> dict:
    """A cell's row of the record: its settings, final top-1/top-5 (None if it diverged) and its evaluations."""
    final = cell.state["evals"][-1] if cell.state["diverged_epoch"] is None else {"top1": None, "top5": None}
    return {"base_lr": cell.base_lr, "head_lr_mult": cell.head_lr_mult, "top1": final["top1"], "top5": final["top5"],
            "diverged_epoch": cell.state["diverged_epoch"], "val_curve": cell.state["evals"],
            "train_loss": cell.state["train_loss"]}


def best_cell(results: dict[str, dict]) -> str:
    """The cell with the highest final val top-1 (ties: higher top-5, then the first in grid order); diverged cells
    never win.

    Raises:
        training.DivergenceError: every cell diverged (one line, exit 2: no record).
    """
    scored = [(r["top1"], r["top5"], -i, name) for i, (name, r) in enumerate(results.items()) if r["top1"] is not None]
    if not scored:
        raise training.DivergenceError(
            f"{PROTOCOL}: training diverged in every cell of the grid (" + ", ".join(
                f"{name} in epoch {r['diverged_epoch']}" for name, r in results.items()) + "); stopped without a "
            "record, each cell's state is kept; rerun with a lower lr (base_lrs, head_lr_mults)")
    return max(scored)[3]


def cell_name(base_lr: float, head_lr_mult: float) -> str:
    """``lr0.01_head10``: the cell's key in the record and its state folder."""
    return f"lr{base_lr:g}_head{head_lr_mult:g}"


def reference_config(dataset: str, base_lr: float, head_lr_mult: float) -> str:
    """The seed's config file name of a cell, ``resnet50_head10_4xb64-steplr1e-2-20e_in1k-1pct`` (B §4)."""
    lr = f"{base_lr:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"resnet50_head{head_lr_mult:g}_4xb64-steplr{lr}-20e_in1k-{dataset.removeprefix('imagenet_')}"


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """The seed's ``--deterministic`` (mmcv ``set_random_seed``: cuDNN deterministic, benchmark off), plus torch's
    deterministic algorithms (warn-only); the previous settings come back afterwards."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible GEMMs
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def check_inputs(cfg: SemiSupConfig) -> None:
    """One-line errors for a bad config, before anything is written."""
    if not cfg.ckpt:
        raise ValueError("no checkpoint given: pass --ckpt PATH")
    if cfg.dataset not in DATASETS:
        raise ValueError(f"dataset {cfg.dataset!r} is not one of {', '.join(DATASETS)}")
    if not cfg.base_lrs or not cfg.head_lr_mults:
        raise ValueError(f"base_lrs={list(cfg.base_lrs)} and head_lr_mults={list(cfg.head_lr_mults)} must each "
                         "list at least one number")
    if len({cell_name(lr, m) for lr in cfg.base_lrs for m in cfg.head_lr_mults}) < \
            len(cfg.base_lrs) * len(cfg.head_lr_mults):
        raise ValueError(f"base_lrs={list(cfg.base_lrs)} x head_lr_mults={list(cfg.head_lr_mults)} repeats a cell")
    if cfg.resume not in ("auto", "none"):
        raise ValueError(f"resume={cfg.resume!r}: a grid resumes each cell from its own state; use auto or none")
    if cfg.test_resize < cfg.image_size:
        raise ValueError(f"test_resize={cfg.test_resize} is below image_size={cfg.image_size}")
    if cfg.stop_after_epochs < 0:
        raise ValueError(f"stop_after_epochs={cfg.stop_after_epochs} must be >= 0 (0 runs to the end)")


def _bn_kind(model: nn.Module) -> str:
    return next(type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def main() -> None:
    run(parse_args(SemiSupConfig, preset_dir=PRESET_DIR, description=__doc__))
