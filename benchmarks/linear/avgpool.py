"""AvgPool linear probe on a frozen backbone (mmselfsup v0.5.0 ``resnet50_8xb32-steplr-100e_in1k.py`` and
``resnet50_8xb512-coslr-90e_in1k.py``; PROTOCOLS.md A.4, B §3.3): the seed table's "AvgPool" column.

Canonical command (full scale; ``torchrun --nproc-per-node 8 -m benchmarks.linear_avgpool ...`` on 8 GPUs, or
``GPUS=8 scripts/linear_avgpool.sh byol.pth /datasets``: the global batch is the same on any GPU count)::

    python -m benchmarks.linear_avgpool --preset linear-avgpool_resnet50_8xb32-steplr-100e_in1k --ckpt byol.pth \\
        --data-root /datasets

Fixed protocol:
  * model: the checkpoint's ResNet trunk (via ``adapters.load_backbone``), eval mode, no gradients, its output
    ``layer4`` map -> global average pool -> ``Linear(C -> classes)`` (C = 2048 for ResNet-50), init Normal(0, 0.01),
    bias 0, **no BN** (``ClsHead(with_avg_pool=True)``); cross-entropy;
  * ``setting=moco`` (the default; what produced the seed's 67.68): SGD lr 30, momentum 0.9, wd 0, global batch
    256, 100 epochs, lr x 0.1 at epochs 60 and 80 (``training.step_lr``);
  * ``setting=simsiam`` (preset ``linear-avgpool_resnet50_8xb512-coslr-90e_in1k``): LARS (``byol_bench.lars``,
    eta 1e-3, **no parameter exclusions**: the bias is adapted too) lr 1.6, momentum 0.9, wd 0, global batch 4096,
    90 epochs, cosine to 0 stepped per epoch (mmcv ``CosineAnnealing``, ``by_epoch=True``);
  * data (B §3.3): train RandomResizedCrop 224 (scale 0.08-1, bilinear) + horizontal flip; test Resize 256 +
    CenterCrop 224; RGB, ImageNet mean/std (``byol_bench.classification``); ImageNet by default, iNat18 and
    Places205 with the same recipe and their class counts (``dataset=``);
  * evaluation: top-1/top-5 on the val split every ``eval_every_epochs`` epochs **and at the final epoch**; every
    evaluation is in the record (``details.val_curve``), the table's cell is the final epoch's top-1 (%);
  * frozenness proof: at the end every backbone tensor (BN running statistics included) equals what was loaded.

NOTE: the reference evaluates every epoch (``eval_every_epochs=1``); the presets evaluate every 10 epochs plus the
final epoch, which saves ~10 % of the run and reports the number the table uses; ``eval_every_epochs=1`` restores it.
NOTE: the global batch (``global_batch_size``) is fixed by the preset and split over the processes, so the recipe
does not change with the GPU count (the reference fixes 8 GPUs); it must divide by the world size.
NOTE: ``lr`` is the rate at ``lr_reference_batch``; a different global batch (the tiny presets) scales it linearly.
At the full presets the two are equal and the lr is the reference's.
NOTE: iNat18 and Places205 have no AvgPool config in the reference (the seed leaves those cells empty); we use the
MoCo setting unchanged (its augmentation, schedule and lr), which fills the cells comparably across datasets.
NOTE: the shuffling is ``DistributedSampler(seed).set_epoch(epoch)`` and the augmentations are reseeded per epoch
from (seed, epoch, rank), so a run resumed at an epoch boundary ends with the same head as an uninterrupted one.
NOTE: on GPU the backbone runs under ``torch.inference_mode()`` with bf16 autocast and channels_last
(``precision=auto``); the head (pool + linear) and its loss run in fp32.
NOTE: ``rehearsal=true`` (byol_bench.rehearsal) runs one process of the preset's world (32 images per step for
8xb32, 512 for 8xb512) for one epoch of two steps over the first train images, and scores the first val images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from adapters import load_backbone
from byol_bench import classification, dist, preflight, rehearsal
from byol_bench.backbone import MultiLayerFeatures, feature_channels
from byol_bench.config import CONFIG_ROOT, opt, parse_args
from byol_bench.features import assert_frozen, state_snapshot
from byol_bench.lars import LARS
from byol_bench.metrics import TopkCounter
from byol_bench.runlog import Progress
from byol_bench.runner_config import EpochTrainerConfig, TrainerResolved
from byol_bench.scaffold import open_run
from byol_bench.training import (
    DivergenceGuard,
    autocast,
    batch_per_device,
    cosine_lr,
    epoch_seed,
    load_training_state,
    plot_log,
    report_resume,
    resolve_precision,
    resume_point,
    save_training_state,
    step_lr,
    wrap_ddp,
)

PROTOCOL = "linear_avgpool"
DATASETS = classification.DATASETS  # the record's dataset is cfg.dataset: one runner, three tables' AvgPool cells
PRESET_DIR = CONFIG_ROOT / PROTOCOL
TOPK = (1, 5)


@dataclass(frozen=True)
class LinearAvgpoolConfig(EpochTrainerConfig, protocol=PROTOCOL, num_workers=8, epochs=100):
    """AvgPool linear-probe settings (defaults = the MoCo setting on ImageNet, B §3.3)."""

    dataset: Literal["imagenet", "inat18", "places205"] = opt("imagenet", "which dataset's table cell to fill")
    setting: Literal["moco", "simsiam"] = opt(
        "moco", "moco: SGD + step lr (the seed's 67.68); simsiam: LARS (no exclusions) + per-epoch cosine")
    milestones: tuple[int, ...] = opt((60, 80), "moco: epochs at which the lr drops x 0.1 (ignored by simsiam)")
    lr: float = opt(30.0, "learning rate at lr_reference_batch (30 for moco, 1.6 for simsiam)", positive=True)
    lr_reference_batch: int = opt(256, "the global batch lr is given for; another global batch scales lr linearly",
                                  positive=True)
    momentum: float = opt(0.9, "SGD / LARS momentum")
    weight_decay: float = opt(0.0, "weight decay of the head (0 in both reference settings)")
    seed: int = opt(0, "seed of the head's init, the sampler order and the augmentations")
    precision: Literal["auto", "fp32", "bf16"] = opt("auto", "auto: bf16 autocast of the backbone on CUDA, fp32 on CPU")


@dataclass(frozen=True)
class Resolved(TrainerResolved):
    """The batch, precision and device (batch_size_per_device = global_batch_size / world_size, precision: the
    backbone's autocast), and the optimizer as run; written as the run folder's ``resolved.json``."""

    lr: float  # cfg.lr x global_batch_size / lr_reference_batch
    optimizer: str
    schedule: str


class AvgPoolHead(nn.Module):
    """Global average pool of the last feature map, then a linear classifier (mmselfsup ``ClsHead``, no BN)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` map (any dtype) -> ``(N, classes)`` fp32 logits."""
        return self.fc(feature_map.float().mean(dim=(2, 3)))


def run(cfg: LinearAvgpoolConfig) -> dict[str, float]:
    """Train the AvgPool probe on ``cfg.dataset``, evaluate it, write the record; return its metrics."""
    _check_inputs(cfg)
    with open_run(PROTOCOL, cfg.dataset, cfg, ckpt=cfg.ckpt) as run:
        if run.done is not None:
            return run.done
        info, device = run.info, run.info.device
        # a rehearsal is one process of the preset's world: its share of the batch, two steps, one epoch
        world = rehearsal.reference_world(cfg.preset) if cfg.rehearsal else info.world_size
        per_device = batch_per_device(cfg.global_batch_size, world)
        epochs = 1 if cfg.rehearsal else cfg.epochs
        resolved = Resolved(world_size=info.world_size, batch_size_per_device=per_device,
                            global_batch_size=cfg.global_batch_size,
                            lr=cfg.lr * cfg.global_batch_size / cfg.lr_reference_batch,
                            optimizer=SETTINGS[cfg.setting]["optimizer"], schedule=SETTINGS[cfg.setting]["schedule"],
                            precision=resolve_precision(cfg.precision, device), device=str(device))
        log = run.start(resolved)

        # ------------------------------------------------------------ data (decode + crop in the workers)
        train = classification.open_split(cfg.dataset, cfg.data_root, "train",
                                          classification.crop_flip_transform(cfg.image_size), tiny=cfg.tiny)
        val = classification.open_split(cfg.dataset, cfg.data_root, "val",
                                        classification.test_transform(cfg.test_resize, cfg.image_size), tiny=cfg.tiny)
        if cfg.rehearsal:
            train.dataset = rehearsal.first(train.dataset, rehearsal.STEPS * per_device * info.world_size,
                                            str(train.source))
            val.dataset = rehearsal.first_eval(val.dataset)
        data_check = preflight.check({"train": train.dataset, "val": val.dataset}, cfg.preflight,
                                     f"{PROTOCOL} {cfg.dataset}")
        sampler = DistributedSampler(train.dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=cfg.seed)
        loader_args = {"batch_size": per_device, "num_workers": cfg.num_workers, "pin_memory": device.type == "cuda"}
        train_loader = DataLoader(train.dataset, sampler=sampler, **loader_args)
        # Val: each rank scores every world_size-th image, no padding, so the counts sum to exactly len(val).
        val_loader = DataLoader(Subset(val.dataset, range(info.rank, len(val.dataset), info.world_size)),
                                shuffle=False, **loader_args)

        # ------------------------------------------------------------ frozen backbone
        model, report = load_backbone(cfg.ckpt, cfg.arch, cfg.encoder, sha256=run.ckpt_sha256)
        model.eval().requires_grad_(False)
        loaded = state_snapshot(model)
        trunk = MultiLayerFeatures(model, ("feat5",), pooled=False).to(device)  # stem .. layer4, no pooling
        if device.type == "cuda":
            trunk = trunk.to(memory_format=torch.channels_last)

        # ------------------------------------------------------------ head, optimizer, schedule, resume
        torch.manual_seed(cfg.seed)
        head = AvgPoolHead(feature_channels(model)["feat5"], train.num_classes).to(device)
        optimizer = build_optimizer(cfg.setting, head, resolved.lr, cfg.momentum, cfg.weight_decay)
        lrs = lr_schedule(cfg, resolved.lr, len(train_loader), epochs)
        ddp_head = wrap_ddp(head, device)
        start_epoch, evals = 0, []
        latest = run.run_dir / "latest.pth"
        resume_from = resume_point(run.run_dir, cfg)  # --force: from scratch
        if resume_from is not None:
            start_epoch, extra = load_training_state(resume_from, modules={"head": head}, optimizer=optimizer,
                                                     config_hash=run.config_hash)
            evals = extra["evals"]
            report_resume(PROTOCOL, resume_from, start_epoch, "epoch")
        log.drop_after_step(start_epoch * len(train_loader))  # rows of epochs this invocation trains (again)
        guard = DivergenceGuard(PROTOCOL, latest, every=20)  # the loss stays on the device for 20 steps

        # ------------------------------------------------------------ loop
        bar = Progress(epochs * len(train_loader), f"{PROTOCOL} {cfg.dataset}",
                       initial=start_epoch * len(train_loader), unit="step")
        clock = rehearsal.Clock(device, enabled=cfg.rehearsal)
        for epoch in range(start_epoch, epochs):
            sampler.set_epoch(epoch)  # the shuffling: a function of (seed, epoch)
            torch.manual_seed(epoch_seed(cfg.seed, epoch, info.rank))  # the crops/flips (and worker seeds)
            loss_sum, seen = torch.zeros((), device=device), 0
            for i, (images, labels) in enumerate(train_loader):
                step = epoch * len(train_loader) + i
                for group in optimizer.param_groups:
                    group["lr"] = float(lrs[step])
                loss = train_step(trunk, ddp_head, optimizer, images, labels, device, resolved.precision)
                guard.observe(loss, step + 1, float(lrs[step]))
                clock.step()
                loss_sum += loss * len(labels)
                seen += len(labels)
                bar.update()
            guard.flush()
            train_loss = float(dist.all_reduce_sum(loss_sum)) / max(float(dist.all_reduce_sum(
                torch.tensor(float(seen), device=device))), 1.0)
            row = {"epoch": epoch + 1, "step": (epoch + 1) * len(train_loader), "train_loss": train_loss,
                   "lr": float(lrs[(epoch + 1) * len(train_loader) - 1])}
            if (epoch + 1) % cfg.eval_every_epochs == 0 or epoch + 1 == epochs:
                with clock.evaluating(len(val_loader.dataset)):
                    scores = evaluate(trunk, head, val_loader, device, resolved.precision)
                evals.append({"epoch": epoch + 1, **scores})
                row.update({f"val_{k}": v for k, v in scores.items()})
            log.log(**row)
            bar.set_postfix(epoch=epoch + 1, loss=f"{train_loss:.3f}", top1=f"{evals[-1]['top1']:.2f}" if evals
                            else "-")
            done = epoch + 1
            if done % cfg.ckpt_every_epochs == 0 or done == epochs or done == cfg.stop_after_epochs:
                save_training_state(latest, modules={"head": head}, optimizer=optimizer, done=done,
                                    config_hash=run.config_hash, extra={"evals": evals})
            if done == cfg.stop_after_epochs and done < epochs:
                bar.close()
                if info.is_main:
                    print(f"{PROTOCOL}: stopped after epoch {done} (stop_after_epochs); state in {latest}")
                return {}
        bar.close()

        # ------------------------------------------------------------ frozenness proof, metrics, record
        assert_frozen(model, loaded, cfg.ckpt)
        final = evals[-1]
        metrics = {"top1": final["top1"], "top5": final["top5"]}
        details = _details(cfg, resolved, train, val, evals, report.encoder, len(loaded))
        if cfg.rehearsal:
            details["rehearsal"] = clock.summary(
                images_per_step=per_device, reference_world=world,
                **rehearsal.epoch_full_run(cfg, f"{cfg.dataset}/train", f"{cfg.dataset}/val", world))
        if info.is_main:
            curve = plot_log(log.path, run.run_dir / "val_curve.png", x="epoch", ys=["val_top1", "val_top5"],
                             title=run.plot_title(f"AvgPool linear probe, {cfg.dataset} val"),
                             ylabel="val accuracy (%)")
            details["val_curve_plot"] = str(curve) if curve else None
        details["preflight"] = data_check
        metrics = run.finish(metrics, checkpoint=asdict(report), seeds={"head_and_sampler": cfg.seed},
                             batch_size_per_device=per_device, details=details)
        if info.is_main:
            print(f"{PROTOCOL}: {cfg.dataset} top-1 {metrics['top1']:.2f} top-5 {metrics['top5']:.2f} "
                  f"({cfg.setting} setting, epoch {final['epoch']}); record {run.record_path}")
        return metrics


# The two reference settings (B §3.3): which optimizer and which schedule; the numbers come from the config.
SETTINGS: dict[str, dict[str, str]] = {
    "moco": {"optimizer": "SGD", "schedule": "step"},
    "simsiam": {"optimizer": "LARS", "schedule": "cosine per epoch"},
}


def build_optimizer(setting: str, head: nn.Module, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """SGD (moco) or LARS over every head parameter, no exclusions (simsiam)."""
    if setting == "moco":
        return torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if setting == "simsiam":
        return LARS(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"setting {setting!r} is not one of {', '.join(SETTINGS)}")


def lr_schedule(cfg: LinearAvgpoolConfig, lr: float, iters_per_epoch: int, epochs: int | None = None) -> np.ndarray:
    """Per-iteration learning rates over ``epochs`` (default ``cfg.epochs``; a rehearsal's one): step at
    ``milestones`` (moco), or cosine stepped once per epoch (simsiam)."""
    epochs = cfg.epochs if epochs is None else epochs
    if cfg.setting == "moco":
        return step_lr(lr, epochs, iters_per_epoch, cfg.milestones)
    if cfg.setting == "simsiam":  # mmcv CosineAnnealing(min_lr=0), by_epoch=True: constant within an epoch
        return np.repeat(cosine_lr(lr, epochs), iters_per_epoch)
    raise ValueError(f"setting {cfg.setting!r} is not one of {', '.join(SETTINGS)}")


def train_step(trunk: nn.Module, head: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    """One SGD/LARS step of the head on a batch: frozen trunk features (no graph), cross-entropy; the detached loss."""
    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    with torch.inference_mode(), autocast(device, precision):
        features = trunk(_to_memory_format(images, device))["feat5"]
    loss = F.cross_entropy(head(features.clone()), labels)  # clone: out of inference mode
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.inference_mode()
def evaluate(trunk: nn.Module, head: nn.Module, loader: DataLoader, device: torch.device,
             precision: str) -> dict[str, float]:
    """Top-1/top-5 (%) over the whole val split: counts summed over batches and processes."""
    head.eval()
    counter = TopkCounter(["head"], TOPK)
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        with autocast(device, precision):
            features = trunk(_to_memory_format(images, device))["feat5"]
        counter.add("head", head(features), labels)
    head.train()
    return counter.percent(device)["head"]


def _to_memory_format(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else images


def _check_inputs(cfg: LinearAvgpoolConfig) -> None:
    """One-line errors for settings that cannot run, before anything is written."""
    if not cfg.ckpt:
        raise ValueError("no checkpoint given: pass --ckpt PATH")
    if cfg.test_resize < cfg.image_size:
        raise ValueError(f"test_resize={cfg.test_resize} is below image_size={cfg.image_size}; the center crop needs "
                         "test_resize >= image_size (256 for 224)")


def _details(cfg: LinearAvgpoolConfig, resolved: Resolved, train: classification.Split, val: classification.Split,
             evals: list[dict], encoder: str, frozen_tensors: int) -> dict:
    """Everything behind the table cell: the setting, the batch, the val curve, the frozenness proof."""
    return {
        "setting": cfg.setting,
        "optimizer": resolved.optimizer,
        "schedule": resolved.schedule if cfg.setting == "simsiam" else f"step x0.1 at {list(cfg.milestones)}",
        "lr": resolved.lr,
        "global_batch_size": resolved.global_batch_size,
        "batch_size_per_device": resolved.batch_size_per_device,
        "world_size": resolved.world_size,
        "epochs": cfg.epochs,
        "evaluated_epoch": evals[-1]["epoch"],
        "val_curve": evals,
        "encoder": encoder,
        "num_classes": train.num_classes,
        "train_images": len(train.dataset),
        "val_images": len(val.dataset),
        "frozen_backbone": {"checked": True, "tensors": frozen_tensors,
                            "what": "every backbone parameter and buffer (BN running statistics included) equals "
                                    "the loaded checkpoint's after the run"},
        "precision": resolved.precision,
    }


def main() -> None:
    run(parse_args(LinearAvgpoolConfig, preset_dir=PRESET_DIR, description=__doc__))
