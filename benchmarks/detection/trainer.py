"""The iteration-based detection trainer (detectron2 ``SimpleTrainer`` semantics) for any torchvision-style model.

A model qualifies when ``model(images, targets)`` in train mode returns a dict of scalar losses and ``model(images)``
in eval mode returns one dict of detections per image (``boxes`` in input-image pixels, ``scores``, ``labels``,
optionally ``masks``), with ``images`` a list of float32 ``(3, H, W)`` RGB tensors in [0, 1] at their original size:
torchvision's ``GeneralizedRCNN`` family. The model resizes and normalises its inputs itself (its ``transform``;
:class:`~benchmarks.detection.rcnn.ShortestEdgeTransform` for detectron2's multi-scale resize) and maps detections
back to the input size.

One iteration = ``accumulate`` micro-batches of ``batch_size_per_device`` images per process (gradients summed,
losses averaged), then one SGD step at the iteration's precomputed learning rate. Everything random in an iteration
(the batch, the flips, the train scale, the RPN/RoI sampling) is a function of ``(seed, iteration, rank)``, so a
run resumed from its ``latest.pth`` ends with the same weights as one that never stopped (tested on CPU).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from benchmarks.detection.data import FlipSamples, GroupedBatchStream, collate, to_device
from byol_bench import dist, training
from byol_bench.rehearsal import Clock
from byol_bench.runlog import Progress, RunLog
from byol_bench.runner_config import TrainerResolved
from byol_bench.seeding import rng_for

# Parameters of these modules get ``weight_decay_norm`` (detectron2 ``WEIGHT_DECAY_NORM``; 0 in the protocols).
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass(frozen=True)
class TrainSettings:
    """One detection training run (the recipe's values, already resolved for this machine).

    Attributes:
        max_iters: optimizer steps.
        base_lr, steps, gamma, warmup_iters, warmup_factor: ``training.warmup_multistep_lr``.
        momentum, weight_decay, weight_decay_norm: SGD; norm-layer parameters get ``weight_decay_norm``.
        batch_size_per_device: images per process per micro-batch.
        accumulate: micro-batches per optimizer step (keeps the recipe's global batch on fewer devices).
        flip_prob: horizontal-flip probability.
        seed: seed of the data stream and of every random draw of the model.
        precision: ``fp32`` or ``bf16`` (autocast of the forward passes).
        ckpt_every_iters: write ``latest.pth`` every this many iterations (and at the end).
        stop_after_iters: stop after this many iterations, checkpointed (0: never; tests of resume).
        num_workers: DataLoader workers per process.
    """

    max_iters: int
    base_lr: float
    steps: tuple[int, ...]
    gamma: float = 0.1
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    batch_size_per_device: int = 2
    accumulate: int = 1
    flip_prob: float = 0.5
    seed: int = 0
    precision: str = "fp32"
    ckpt_every_iters: int = 2000
    stop_after_iters: int = 0
    num_workers: int = 4

    def lrs(self) -> Any:
        """The per-iteration learning rates (numpy array of ``max_iters``)."""
        return training.warmup_multistep_lr(self.base_lr, self.max_iters, self.steps, self.gamma, self.warmup_iters,
                                            self.warmup_factor)


@dataclass(frozen=True)
class DetectionResolved(TrainerResolved):
    """What both detection runners derive from the config and the machine (:func:`batch_policy`), written as the run
    folder's ``resolved.json``: the batch, precision and device, and the schedule as run."""

    accumulate: int  # micro-batches per optimizer step
    batch_policy: str  # "recipe", "accumulate" or "scale"
    lr: float  # as run
    max_iters: int
    steps: tuple[int, ...]  # iterations at which the lr drops
    warmup_iters: int  # as run


def batch_policy(cfg: Any, world_size: int) -> tuple[int, int, str]:
    """How the recipe's ``global_batch_size`` runs on ``world_size`` processes (both detection runners' configs):
    ``(accumulate, images per optimizer step, policy)``.

    ``batch_size_per_device x world_size`` images per micro-step; fewer than the recipe's global batch are
    accumulated to it (``small_world=accumulate``, policy ``accumulate``) or run as they are (``small_world=scale``,
    policy ``scale``: the caller scales lr and lengths by ``global_batch_size / images per step``). detectron2
    splits its global batch over the processes it launches itself: always the recipe's.

    Raises:
        ValueError: the global batch is not a multiple of the images per micro-step.
    """
    per_step = cfg.global_batch_size if cfg.engine == "detectron2" else cfg.batch_size_per_device * world_size
    if per_step < cfg.global_batch_size and cfg.small_world == "scale":
        return 1, per_step, "scale"
    if cfg.global_batch_size % per_step:
        raise ValueError(f"global_batch_size={cfg.global_batch_size} is not a multiple of batch_size_per_device "
                         f"x processes = {per_step}; change batch_size_per_device or the process count")
    accumulate = cfg.global_batch_size // per_step
    return accumulate, cfg.global_batch_size, "recipe" if accumulate == 1 else "accumulate"


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did: iterations completed, whether it reached ``max_iters``, the seconds spent training
    (over all invocations of a resumed run), the last logged losses and the loss-curve PNG."""

    iters_done: int
    finished: bool
    train_time_s: float
    last_losses: dict[str, float]
    loss_plot: Path | None


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """SyncBatchNorm in a multi-GPU job (``dist.maybe_sync_bn``; per-process BN on CPU, where SyncBN has no kernels),
    then ``model.to(device)``. Call before :func:`train`; use the returned module from then on."""
    if device.type == "cuda":
        model = dist.maybe_sync_bn(model)
    return model.to(device)


def norm_name(model: nn.Module) -> str:
    """The class name of the model's batch norms (``BatchNorm2d`` or ``SyncBatchNorm``), for the record."""
    names = sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)})
    return "+".join(names) or "none"


def param_groups(model: nn.Module, weight_decay: float, weight_decay_norm: float = 0.0) -> list[dict[str, Any]]:
    """SGD groups: parameters of norm layers (:data:`NORM_TYPES`) with ``weight_decay_norm``, all others
    (conv/linear weights and biases) with ``weight_decay`` (detectron2 ``get_default_optimizer_params``).
    Parameters with ``requires_grad=False`` are left out; shared ones are listed once."""
    seen: set[int] = set()
    norm, other = [], []
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (norm if isinstance(module, NORM_TYPES) else other).append(param)
    return [{"name": "decay", "params": other, "weight_decay": weight_decay},
            {"name": "norm", "params": norm, "weight_decay": weight_decay_norm}]


def train(model: nn.Module, dataset: Dataset, groups: Sequence[int], settings: TrainSettings, *,
          device: torch.device, run_dir: Path, config_hash: str, log: RunLog, resume_from: Path | None,
          desc: str, plot_title: str = "", clock: Clock | None = None) -> TrainResult:
    """Train ``model`` (from :func:`prepare`) in place for ``settings.max_iters`` iterations.

    Args:
        model: the unwrapped model on ``device`` (DDP is added here in a multi-process job).
        dataset: training samples ``(uint8 image, target)`` (see :mod:`benchmarks.detection.data`); flipped here.
        groups: aspect-ratio group per sample (``data.orientation_groups``).
        settings: the run's :class:`TrainSettings`.
        device: this process's device.
        run_dir: ``latest.pth`` and ``loss.png`` go here.
        config_hash: written into checkpoints; a resume with another config is refused.
        log: the run's JSON-lines log: one row per iteration (``step``, ``lr``, ``loss``, each loss term).
        resume_from: a checkpoint of this run to continue from (``training.resume_point``), or None.
        desc: label of the progress line (and of the loss plot without ``plot_title``).
        plot_title: the loss plot's title (``Run.plot_title``: checkpoint and preset).
        clock: a rehearsal's step clock (``byol_bench.rehearsal.Clock``), told of every optimizer step.

    Raises:
        training.DivergenceError: a loss that is not finite or above the guard's bound (one line: the iteration,
            the loss, the lr, the last good checkpoint).
    """
    info_rank, world = dist.get_rank(), dist.get_world_size()
    model.train()
    ddp = training.wrap_ddp(model, device)
    optimizer = torch.optim.SGD(param_groups(model, settings.weight_decay, settings.weight_decay_norm),
                                lr=settings.base_lr, momentum=settings.momentum)
    lrs = settings.lrs()
    start, extra = 0, {"train_time_s": 0.0, "last_losses": {}}
    if resume_from is not None:
        start, extra = training.load_training_state(resume_from, modules={"model": model}, optimizer=optimizer,
                                                    config_hash=config_hash)
        training.report_resume(desc, resume_from, start, "iteration")
    log.drop_after_step(start)  # rows of iterations this invocation trains (again)
    guard = training.DivergenceGuard(desc, run_dir / "latest.pth", unit="iteration")  # read every iteration anyway

    stream = GroupedBatchStream(groups, settings.batch_size_per_device, settings.seed, info_rank, world,
                                start=start * settings.accumulate)
    loader = DataLoader(FlipSamples(dataset, settings.flip_prob), batch_sampler=stream, collate_fn=collate,
                        num_workers=settings.num_workers, pin_memory=device.type == "cuda")
    batches = iter(loader) if start < settings.max_iters else iter(())
    progress = Progress(settings.max_iters, desc, initial=start, unit="iter")
    done = start
    for it in range(start, settings.max_iters):
        began = time.time()
        # NOTE: reseeded from (seed, iteration, rank) each iteration: the train scale and the RPN/RoI sampling of a
        # resumed run are those of an uninterrupted one, on every rank (a saved RNG state would be rank 0's only).
        torch.manual_seed(training.epoch_seed(settings.seed, it, info_rank))
        for group in optimizer.param_groups:
            group["lr"] = float(lrs[it])
        optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for micro in range(settings.accumulate):
            images, targets = to_device(*next(batches), device)
            last = micro == settings.accumulate - 1
            sync = contextlib.nullcontext() if last or not isinstance(ddp, DistributedDataParallel) else ddp.no_sync()
            with sync:
                with training.autocast(device, settings.precision):
                    losses = ddp(images, targets)
                (sum(losses.values()) / settings.accumulate).backward()
            for key, value in losses.items():
                totals[key] = totals.get(key, 0) + value.detach().float() / settings.accumulate
        names = sorted(totals)
        values = dist.all_reduce_mean(torch.stack([totals[k] for k in names])).tolist()  # logged: mean over ranks
        terms = dict(zip(names, values, strict=True))
        loss = sum(values)
        guard.observe(loss, it + 1, float(lrs[it]))  # before the step: a diverged loss never reaches the weights
        optimizer.step()
        if clock is not None:
            clock.step()
        done = it + 1
        extra["train_time_s"] += time.time() - began
        extra["last_losses"] = terms
        log.log(step=done, lr=float(lrs[it]), loss=loss, **terms)
        progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lrs[it]:.3g}")
        progress.update()
        if done % settings.ckpt_every_iters == 0 or done == settings.max_iters or done == settings.stop_after_iters:
            training.save_training_state(run_dir / "latest.pth", modules={"model": model}, optimizer=optimizer,
                                         done=done, config_hash=config_hash, extra=extra)
        if done == settings.stop_after_iters and done < settings.max_iters:
            break
    progress.close()
    del batches  # ends the DataLoader workers of the infinite stream
    plot = None
    if dist.is_main():
        plot = training.plot_log(log.path, run_dir / "loss.png", "step", ["loss", *sorted(extra["last_losses"])],
                                 plot_title or desc, "loss")
    return TrainResult(done, done >= settings.max_iters, float(extra["train_time_s"]), dict(extra["last_losses"]),
                       plot)


@torch.no_grad()
def precise_bn(model: nn.Module, dataset: Dataset, groups: Sequence[int], settings: TrainSettings, *,
               device: torch.device, num_iters: int = 200) -> int:
    """Recompute every BatchNorm's running statistics as the average of ``num_iters`` batch statistics (fvcore
    ``update_bn_stats``, detectron2 ``PreciseBN``): train-mode forward passes on a fresh stream of training batches.

    A batch here is one iteration's images (``batch_size_per_device x accumulate`` per process, in one forward
    pass), so the statistics come from as many images as the recipe's batch norms see (with SyncBN, over all
    processes). Returns the number of BN layers updated.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or num_iters <= 0:
        return 0
    rank, world = dist.get_rank(), dist.get_world_size()
    stream = GroupedBatchStream(groups, settings.batch_size_per_device * settings.accumulate, settings.seed, rank,
                                world, tag="precise-bn")
    loader = DataLoader(FlipSamples(dataset, settings.flip_prob), batch_sampler=stream, collate_fn=collate,
                        num_workers=settings.num_workers)
    was_training = model.training
    model.train()
    torch.manual_seed(int(rng_for(settings.seed, "precise-bn", rank).integers(2**62)))
    momenta = [bn.momentum for bn in bns]
    means = [torch.zeros_like(bn.running_mean) for bn in bns]
    variances = [torch.zeros_like(bn.running_var) for bn in bns]
    for bn in bns:
        bn.momentum = 1.0  # running stats := this batch's statistics
    for i, (images, targets) in enumerate(itertools.islice(loader, num_iters)):
        images, targets = to_device(images, targets, device)
        with training.autocast(device, settings.precision):
            model(images, targets)
        for k, bn in enumerate(bns):
            means[k] += (bn.running_mean - means[k]) / (i + 1)
            variances[k] += (bn.running_var - variances[k]) / (i + 1)
    for k, bn in enumerate(bns):
        bn.running_mean.copy_(means[k])
        bn.running_var.copy_(variances[k])
        bn.momentum = momenta[k]
    model.train(was_training)
    return len(bns)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, *, device: torch.device, precision: str, batch_size: int = 1,
            num_workers: int = 0, convert: Callable[[dict[str, torch.Tensor], dict[str, Any]], Any] | None = None,
            desc: str = "predict") -> list[Any]:
    """Detections for every sample of ``dataset`` (``(uint8 image, target)``), in dataset order, on every rank.

    Each process predicts a disjoint stride of the samples (eval mode); the results are gathered over processes.

    Args:
        convert: applied on the predicting process to ``(detections on CPU, the sample's target)``, e.g. to encode
            masks compactly before they are gathered; default: the detections themselves.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = range(rank, len(dataset), world)
    loader = DataLoader(Subset(dataset, mine), batch_size, collate_fn=collate, num_workers=num_workers)
    was_training = model.training
    model.eval()
    outputs: list[Any] = []
    with Progress(len(mine), desc, unit="image") as progress:
        for images, targets in loader:
            inputs, _ = to_device(images, None, device)
            with training.autocast(device, precision):
                detections = model(inputs)
            for det, target in zip(detections, targets, strict=True):
                det = {k: v.cpu().float() if v.is_floating_point() else v.cpu() for k, v in det.items()}
                outputs.append(convert(det, target) if convert is not None else det)
            progress.update(len(images))
    model.train(was_training)
    result: list[Any] = [None] * len(dataset)
    for r, part in enumerate(dist.all_gather_objects(outputs)):
        for index, out in zip(range(r, len(dataset), world), part, strict=True):
            result[index] = out
    return result
