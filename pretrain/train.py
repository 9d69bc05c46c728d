"""BYOL pretraining: the mmselfsup v0.5.0 recipe (PROTOCOLS.md A.2, B §1), resumable, torchrun-native.

Canonical commands (docs/PRETRAIN.md has multi-node torchrun and SLURM/srun)::

    python -m pretrain --preset tiny data_root=data/tiny out_dir=work_dirs/pretrain/tiny           # 1 CPU process
    torchrun --nproc_per_node 8 -m pretrain --preset byol_resnet50_8xb32-accum16-coslr-200e_in1k \\
        data_root=data out_dir=work_dirs/pretrain/byol_r50_200e                                   # 8 GPUs, 1 node

Fixed recipe (Grill et al. 2020, arXiv 2006.07733; mmselfsup ``byol_resnet50_8xb32-accum16-coslr-200e_in1k``):
ResNet-50 + projector/predictor MLPs 4096 -> 256; loss = Σ over both directions of 2 − 2 cos(p, sg(z)); two
asymmetric views (blur 1.0/0.1, solarize 0/0.2); LARS lr 0.3 x B/256, momentum 0.9, wd 1e-6 with norm parameters
and biases excluded; 10 warm-up epochs then cosine; target EMA 0.99 -> 1 after every optimizer step; 32 images per
GPU x 8 GPUs x 16 accumulation = 4096 per step; SyncBN; 200 epochs.

A run folder holds ``config.yaml``, ``resolved.json``, ``provenance.json``, ``log.jsonl``, ``latest.pth`` (every
``ckpt_every_steps``), ``final.pth`` + ``<name>.pth`` (the same file), ``loss_curve.png`` and ``records/``.

``rehearsal=true`` (byol_bench.rehearsal, docs/REHEARSAL.md) resolves the run for the preset's world on the real
ImageNet train split (batch, lr, schedules and ``total_steps`` are the full run's), trains its first two optimizer
steps (each a full accumulation window of every process) on the first train images, and scores the kNN monitor with
a bank of ``knn_k`` train images and the first val images.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from byol_bench import dist, preflight, rehearsal
from byol_bench.backbone import build_resnet
from byol_bench.checkpoint import CheckpointError, atomic_save, load_state_dict_strict, safe_load
from byol_bench.config import config_hash, to_dict
from byol_bench.lars import LARS, param_groups
from byol_bench.records import read_record
from byol_bench.runlog import Progress
from byol_bench.scaffold import Run, open_run
from byol_bench.training import DivergenceGuard, check_finite_weights, report_resume, resume_point
from pretrain.augment import BatchAugmenter, eval_transform
from pretrain.config import PretrainConfig, Resolved, resolve
from pretrain.data import EpochBatchSampler, TwoViewDataset, iterate_batches, make_loader, open_split
from pretrain.knn import knn_monitor
from pretrain.model import BYOL, mmselfsup_loss
from pretrain.schedules import lr_schedule, momentum_schedule

CHECKPOINT_FORMAT = "byol-bench"
CHECKPOINT_VERSION = 1
# Resolved values a resumed run must share with the run that wrote the checkpoint.
RESUME_INVARIANTS = ("world_size", "global_batch_size", "iters_per_epoch", "total_steps")


def run(cfg: PretrainConfig) -> dict[str, float]:
    """Pretrain (or continue pretraining) BYOL as ``cfg`` says; return the final metrics.

    Returns:
        ``step``, ``loss`` (the last logged window) and, when the run is complete and ``cfg.knn``, ``knn_top1``,
        ``knn_top5`` (and ``knn_top1_random_init`` if asked).
    """
    # out_dir is locked before its resume checkpoint is read; the checkpoint is named when it exists (end)
    with open_run("pretrain", cfg.dataset, cfg, run_dir=cfg.out_dir) as run:
        info, device = run.info, run.info.device
        out_dir = Path(cfg.out_dir)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes (mmselfsup sets it too)

        # ================================================================ data
        images = open_split(cfg, "train")
        world, train_images = info.world_size, len(images)
        if cfg.rehearsal:  # the full run's resolution; its first steps, each a whole window, on the first images
            world = rehearsal.reference_world(cfg.preset)
            train_images = rehearsal.real_images(f"{cfg.dataset}/train")
            images = rehearsal.first(images, rehearsal.STEPS * cfg.accum_steps * cfg.batch_size_per_device
                                     * info.world_size, str(images.split_dir))
        checked = {"train": images}
        if cfg.knn:  # the kNN monitor reads the val split at the end (its bank is train images)
            val = open_split(cfg, "val")
            checked["val"] = rehearsal.first(val, rehearsal.EVAL_IMAGES, str(val.split_dir)) if cfg.rehearsal else val
        data_check = preflight.check(checked, cfg.preflight, "pretrain")
        train_set = TwoViewDataset(images, cfg.image_size, (cfg.crop_scale_min, 1.0))
        res = resolve(cfg, world, train_images, device)
        sampler = EpochBatchSampler(len(train_set), cfg.batch_size_per_device, info.rank, info.world_size, cfg.seed)
        loader = make_loader(train_set, sampler, cfg.num_workers, device)
        augmenter = BatchAugmenter(device, res.channels_last)

        # ================================================================ networks
        byol = initial_byol(cfg)
        if cfg.sync_bn and device.type == "cuda":
            byol = dist.maybe_sync_bn(byol)  # NOTE: SyncBN needs CUDA; CPU processes keep per-process statistics
        byol = byol.to(device, memory_format=torch.channels_last if res.channels_last else torch.preserve_format)
        ddp = None
        if info.world_size > 1:
            ddp = DistributedDataParallel(byol, device_ids=[device.index] if device.type == "cuda" else None,
                                          broadcast_buffers=False)  # mmselfsup's setting; SyncBN keeps stats equal
        model: nn.Module = ddp or byol
        if cfg.compile:
            model = torch.compile(model)

        # ================================================================ loss
        # The symmetrised BYOL loss lives in BYOL.forward (pretrain/model.py); it is in [0, 8] and mmselfsup logs the
        # same quantity minus 4.

        # ================================================================ optimizer
        optimizer = LARS(param_groups(byol, cfg.weight_decay), lr=res.lr, momentum=cfg.lars_momentum,
                         weight_decay=cfg.weight_decay, eta=cfg.lars_eta)

        # ================================================================ schedules
        lrs = lr_schedule(peak_lr=res.lr, total_steps=res.total_steps, accum_steps=cfg.accum_steps,
                          iters_per_epoch=res.iters_per_epoch, epochs=cfg.epochs, warmup_iters=res.warmup_iters,
                          warmup_ratio=cfg.warmup_ratio, min_lr=cfg.min_lr, cosine=cfg.lr_cosine)
        momentums = momentum_schedule(base=cfg.target_momentum, end=cfg.target_momentum_end,
                                      total_steps=res.total_steps)

        # ================================================================ resume
        # Everything is checked before the run folder is written to, so a mismatched resume changes nothing there.
        resume_path = find_resume_checkpoint(cfg, out_dir)
        start_step, earlier_wall_s = 0, 0.0
        if resume_path is not None:
            start_step, earlier_wall_s = load_checkpoint(resume_path, cfg, res, byol, optimizer)
        log = run.start(res, run_dir=out_dir)
        log.drop_after_step(start_step)  # rows past the resume point (all of them when training afresh) are stale
        if resume_path is not None:
            log.log(event="resume", checkpoint=str(resume_path), step=start_step)
            report_resume("pretrain", resume_path, start_step, "step")
        last_step = rehearsal.STEPS if cfg.rehearsal else res.total_steps  # the run is complete there
        stop_step = last_step
        if cfg.stop_after_steps > 0:
            stop_step = min(last_step, start_step + cfg.stop_after_steps)

        # ================================================================ loop
        batches = iterate_batches(loader, sampler, start_step * cfg.accum_steps)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=res.precision == "bf16")
        bar = Progress(last_step, "byol", initial=start_step, unit="step")  # plain lines off a terminal
        # Per-step losses stay on the device until the next log line: reading one every step would stall the GPU.
        window_losses: list[torch.Tensor] = []
        guard = DivergenceGuard("pretrain", out_dir / "latest.pth")  # on each window's mean over the processes
        step, loss_value, throughput = start_step, math.nan, math.nan
        tick = time.perf_counter()
        tick_step = start_step
        # The ETA averages from the end of the first log window: the first steps also pay for worker start-up,
        # torch.compile and kernel autotuning, which would otherwise inflate it for the whole run.
        steady_since, steady_step = tick, start_step
        clock = rehearsal.Clock(device, enabled=cfg.rehearsal)
        while step < stop_step:
            step_loss = train_step(model, byol, ddp, optimizer, lambda: augmenter(next(batches)[1]),
                                   accum_steps=cfg.accum_steps, lr=float(lrs[step]), momentum=float(momentums[step]),
                                   autocast=autocast)
            clock.step()
            window_losses.append(step_loss)
            step += 1
            if step % cfg.log_every_steps == 0 or step == stop_step:
                loss_value = float(dist.all_reduce_mean(torch.stack(window_losses).mean()))
                guard.observe(loss_value, step, float(lrs[step - 1]))  # every process sees the same value: all stop
                now = time.perf_counter()
                # images trained here (the global batch, except in a rehearsal: one process of the world per process)
                throughput = ((step - tick_step) * cfg.batch_size_per_device * cfg.accum_steps * info.world_size
                              / (now - tick))
                eta_s = (last_step - step) * (now - steady_since) / (step - steady_step)
                if steady_step == start_step:
                    steady_since, steady_step = now, step
                stats = {"loss": loss_value, "loss_mmselfsup": mmselfsup_loss(loss_value), "lr": float(lrs[step - 1]),
                         "momentum": float(momentums[step - 1]), "img_per_s": throughput, "eta_s": eta_s}
                log.log(step=step, epoch=(step * cfg.accum_steps - 1) // res.iters_per_epoch, **stats)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{stats['lr']:.3g}", m=f"{stats['momentum']:.5f}",
                                **{"img/s": f"{throughput:.1f}"})
                window_losses, tick, tick_step = [], now, step
            bar.update(1)

            # ============================================================ checkpoint
            if step in (last_step, stop_step) or step % cfg.ckpt_every_steps == 0:
                # Never save past a diverged loss on any process, nor weights that a bad gradient already spoiled.
                guard.observe(float(dist.all_reduce_mean(step_loss)), step, float(lrs[step - 1]))
                name = "final.pth" if step == last_step else "latest.pth"
                check_finite_weights({"BYOL": byol}, out_dir / name, step)
                save_checkpoint(out_dir / name, cfg, res, byol, optimizer, step, lrs, momentums,
                                            wall_time_s=earlier_wall_s + time.time() - run.started)
        bar.close()
        dist.barrier()
        metrics: dict[str, float] = {"step": float(step), "loss": loss_value}
        if step < last_step:
            return metrics  # stopped early on purpose (stop_after_steps): no monitor, no record

        final = out_dir / "final.pth"
        if info.is_main:
            link_named_checkpoint(final, out_dir / f"{cfg.name}.pth")
            plot_loss_curve(out_dir / "log.jsonl", out_dir / "loss_curve.png",
                            f"BYOL pretraining\n{cfg.name} · {cfg.preset}")
        dist.barrier()

        # ================================================================ kNN monitor
        done = run.identify(final)  # a rerun of a finished run: same checkpoint and config
        # every rank looks before rank 0 can write this run's record (run.finish): a rank that looked later would
        # find it, return, and leave rank 0 alone in the record's barrier
        dist.barrier()
        if done is not None:
            return {**metrics, **done}
        knn: dict[str, float] = {}
        if cfg.knn:
            with clock.evaluating(rehearsal.EVAL_IMAGES + cfg.knn_k):
                knn = run_knn_monitor(cfg, res, byol.online.backbone, augmenter)
            metrics.update(knn)
            log.log(event="knn", **knn)

        # ================================================================ record
        scored = {k: v for k, v in metrics.items() if k != "step" and math.isfinite(v)}
        details = {"resolved": res.to_dict(),
                   "img_per_s_last_window": throughput if math.isfinite(throughput) else None,
                   "knn": {"k": cfg.knn_k, "temperature": cfg.knn_temperature, "weighting": "exp(cos/T)",
                           "features": "global-pooled online backbone, eval mode, centre crop"},
                   "loss_curve_plot": str(out_dir / "loss_curve.png"),
                   "steps_this_invocation": step - start_step,
                   "wall_time_s_this_invocation": time.time() - run.started,
                   "loss_range": "[0, 8]; mmselfsup logs loss - 4"}
        if cfg.rehearsal:  # the full run's kNN monitor: its bank and the whole val split, shared by the processes
            knn_images = (min(cfg.knn_max_train_images or res.train_images, res.train_images)
                          + rehearsal.real_images(f"{cfg.dataset}/val"))
            details["rehearsal"] = clock.summary(
                images_per_step=cfg.batch_size_per_device * cfg.accum_steps, reference_world=res.world_size,
                full_steps=res.total_steps, full_eval_images=math.ceil(knn_images / res.world_size))
        details["preflight"] = data_check
        run.finish(scored, checkpoint={"format": CHECKPOINT_FORMAT, "arch": cfg.arch, "encoder": "online"},
                   seeds={"seed": cfg.seed}, batch_size_per_device=cfg.batch_size_per_device, model=cfg.name,
                   wall_time_s=earlier_wall_s + time.time() - run.started, details=details)
        if cfg.force and info.is_main:
            drop_replaced_records(run, final)
        return metrics



# -------------------------------------------------------------------- helpers -----------------------------------


def train_step(model: nn.Module, byol: BYOL, ddp: DistributedDataParallel | None, optimizer: LARS,
               next_views: Callable[[], tuple[torch.Tensor, torch.Tensor]], *, accum_steps: int, lr: float,
               momentum: float, autocast: torch.autocast) -> torch.Tensor:
    """One optimizer step: ``accum_steps`` forward/backward passes, the LARS step, then the target EMA update.

    Args:
        model: what to call for the loss (``byol``, its DDP wrapper, or a compiled version of either).
        byol: the unwrapped networks (for the EMA update).
        ddp: the DDP wrapper when distributed (gradients are all-reduced on the last pass only), else None.
        optimizer: LARS over the online network and the predictor.
        next_views: returns the next two augmented view batches, on the device.
        accum_steps: data iterations per optimizer step.
        lr: learning rate of this step.
        momentum: target EMA momentum of this step.
        autocast: the precision context (disabled for fp32).

    Returns:
        The step's mean loss (a 0-dim tensor on the device; reading it waits for the device).
    """
    window_loss = None
    for micro in range(accum_steps):
        view1, view2 = next_views()
        last = micro == accum_steps - 1
        with contextlib.nullcontext() if ddp is None or last else ddp.no_sync():
            with autocast:
                loss = model(view1, view2)
            (loss / accum_steps).backward()
        window_loss = loss.detach() if window_loss is None else window_loss + loss.detach()
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    byol.update_target(momentum)  # after the step, once per optimizer step (A.2)
    return window_loss / accum_steps


def initial_byol(cfg: PretrainConfig) -> BYOL:
    """The networks a run starts from: seeded with ``cfg.seed`` (global torch RNG), the same on every rank.

    DDP checks the ranks agree by broadcasting from rank 0; ``pretrain.heldout`` rebuilds the same weights.
    """
    torch.manual_seed(cfg.seed)
    return BYOL(build_resnet(cfg.arch), cfg.projector_hidden_dim, cfg.projector_out_dim)


def load_networks(byol: BYOL, ckpt: dict[str, Any], path: Path) -> None:
    """Load the online network, predictor and target of a checkpoint dict (:func:`checkpoint_state`), strictly."""
    for module, state in ((byol.online.backbone, ckpt["online"]["backbone"]),
                          (byol.online.projector, ckpt["online"]["projector"]),
                          (byol.predictor, ckpt["online"]["predictor"]),
                          (byol.target.backbone, ckpt["target"]["backbone"]),
                          (byol.target.projector, ckpt["target"]["projector"])):
        load_state_dict_strict(module, state, path)


def checkpoint_state(cfg: PretrainConfig, res: Resolved, byol: BYOL, optimizer: LARS, step: int,
                     lrs: np.ndarray, momentums: np.ndarray, wall_time_s: float) -> dict[str, Any]:
    """The checkpoint dict (docs/PRETRAIN.md, "Run folder and resuming"): tensors, numbers, strings, lists, dicts.

    ``wall_time_s`` is the run's wall time up to this checkpoint, summed over the invocations that resumed it.
    """
    def cpu(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    iteration = step * cfg.accum_steps
    return {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "arch": cfg.arch,
        "online": {"backbone": cpu(byol.online.backbone), "projector": cpu(byol.online.projector),
                   "predictor": cpu(byol.predictor)},
        "target": {"backbone": cpu(byol.target.backbone), "projector": cpu(byol.target.projector)},
        "optimizer": optimizer.state_dict(),
        "step": step, "iteration": iteration, "epoch": iteration // res.iters_per_epoch,
        "schedules": {"lr": torch.from_numpy(lrs), "momentum": torch.from_numpy(momentums)},
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "config": to_dict(cfg), "config_hash": config_hash(cfg), "resolved": res.to_dict(),
        "wall_time_s": wall_time_s,
    }


def save_checkpoint(path: Path, cfg: PretrainConfig, res: Resolved, byol: BYOL, optimizer: LARS, step: int,
                    lrs: np.ndarray, momentums: np.ndarray, wall_time_s: float) -> Path:
    """Write the checkpoint atomically on rank 0; every rank returns the path."""
    if dist.is_main():
        atomic_save(checkpoint_state(cfg, res, byol, optimizer, step, lrs, momentums, wall_time_s), path)
    return path


def drop_replaced_records(run: Run, final: Path) -> None:
    """After a ``--force`` run: the records of the model it replaced go. They name ``final`` too, but the sha256 of
    a checkpoint that was overwritten (a checkpoint holds its wall time, so a retrained one is a new file even when
    its weights are equal), so they describe a model that no longer exists."""
    for path in run.records_dir.glob(f"{run.protocol}_{run.dataset}_*.json"):
        if path != run.record_path and Path(read_record(path)["checkpoint"]["path"]) == final:
            path.unlink()


def find_resume_checkpoint(cfg: PretrainConfig, out_dir: Path) -> Path | None:
    """The checkpoint to continue from: the runners' rule (:func:`byol_bench.training.resume_point`: ``--force``
    trains afresh, ``resume=auto|none|<path>``) over the run's two checkpoints, ``final.pth`` first (the newest
    whenever it exists).

    Raises:
        ValueError: ``resume=none`` but ``out_dir`` already holds a checkpoint (it would be overwritten).
        CheckpointError: an explicit path that does not exist.
    """
    return resume_point(out_dir, cfg, "final.pth") or resume_point(out_dir, cfg, "latest.pth")


def load_checkpoint(path: Path, cfg: PretrainConfig, res: Resolved, byol: BYOL,
                    optimizer: LARS) -> tuple[int, float]:
    """Restore networks, optimizer and RNG from ``path``.

    Returns:
        The optimizer step to continue from, and the run's wall time up to that checkpoint.

    Raises:
        CheckpointError: not a byol-bench checkpoint, or written by a different config or world size.
    """
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a byol-bench pretraining checkpoint; resume needs one written by "
                              "python -m pretrain")
    if ckpt["config_hash"] != config_hash(cfg):
        raise CheckpointError(f"{path}: written with config {ckpt['config_hash']}, this run is {config_hash(cfg)}; "
                              "resume with the same preset and overrides, or choose another out_dir")
    changed = [k for k in RESUME_INVARIANTS if ckpt["resolved"][k] != getattr(res, k)]
    if changed:
        # data_root is not part of the config hash (the same run may move between machines), so a different
        # image list reaches this check as well as a different number of processes.
        diffs = ", ".join(f"{k} {ckpt['resolved'][k]} -> {getattr(res, k)}" for k in changed)
        raise CheckpointError(f"{path}: {diffs}; resume with the same number of processes and the same training "
                              "images (data_root, train_list), or choose another out_dir")
    load_networks(byol, ckpt, path)
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if torch.cuda.is_available() and ckpt["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    return int(ckpt["step"]), float(ckpt.get("wall_time_s", 0.0))  # 0 for checkpoints written before the key


def link_named_checkpoint(final: Path, named: Path) -> None:
    """Make ``<name>.pth`` the same file as ``final.pth`` (hard link; a copy where links are unsupported)."""
    tmp = named.with_name(f".{named.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(final, tmp)
    except OSError:
        import shutil

        shutil.copyfile(final, tmp)
    os.replace(tmp, named)


def plot_loss_curve(log_path: Path, png_path: Path, title: str) -> None:
    """Loss (and lr) against optimizer step, from the JSON-lines log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r and "step" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [float(r["loss"]) for r in rows], label="loss (2 views, ∈ [0, 8])")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("BYOL loss")
    lr_ax = ax.twinx()
    lr_ax.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="tab:orange", alpha=0.6, label="lr")
    lr_ax.set_ylabel("learning rate")
    ax.set_title(title)
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def run_knn_monitor(cfg: PretrainConfig, res: Resolved, backbone: nn.Module,
                    augmenter: BatchAugmenter) -> dict[str, float]:
    """kNN top-1/top-5 of the online backbone (and optionally of a random-init one) on the val split."""
    transform = eval_transform(cfg.image_size)
    bank_set, val_set = open_split(cfg, "train", transform), open_split(cfg, "val", transform)
    bank_size = cfg.knn_max_train_images
    if cfg.rehearsal:  # a bank of k images (evenly spaced over the classes) and the first val images
        bank_size = cfg.knn_k
        val_set = rehearsal.first(val_set, rehearsal.EVAL_IMAGES, str(val_set.split_dir))
    kwargs = {"k": cfg.knn_k, "temperature": cfg.knn_temperature, "max_train_images": bank_size,
              "batch_size": cfg.knn_batch_size, "num_workers": cfg.num_workers, "precision": res.precision}
    scores = knn_monitor(backbone, bank_set, val_set, augmenter, **kwargs)
    out = {"knn_top1": scores["top1"], "knn_top5": scores["top5"]}
    if cfg.knn_random_init_baseline:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # the online backbone's own step-0 weights
            random_init = build_resnet(cfg.arch)
        random_init.fc = nn.Identity()
        memory_format = torch.channels_last if res.channels_last else torch.preserve_format
        baseline = knn_monitor(random_init.to(device=augmenter.device, memory_format=memory_format), bank_set,
                               val_set, augmenter, **kwargs)
        out.update(knn_top1_random_init=baseline["top1"], knn_top5_random_init=baseline["top5"])
    return out
