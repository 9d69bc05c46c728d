"""Multi-head linear probe on frozen feature1..5 (Goyal et al. 2019; mmselfsup v0.5.0; PROTOCOLS.md A.4, B §3.1-3.2).

Canonical command (ImageNet; ``..._inat18`` / ``..._places205`` for the other two tables)::

    python -m benchmarks.linear_mhead --preset linear-mhead_resnet50_8xb32-steplr-90e_in1k --ckpt byol.pth \\
        --data-root /datasets

    torchrun --nproc-per-node 8 -m benchmarks.linear_mhead --preset ... (global batch stays 256)

Fixed protocol (B §3.1-3.2):
  * backbone: any checkpoint via ``adapters.load_backbone``, frozen and in eval mode (BN running statistics from
    pretraining), run once per batch for all five heads under ``torch.inference_mode()`` (bf16 autocast and
    channels_last on GPU);
  * heads: per feature1..5 the protocol pooling of the SVM (``MultiPooling('specified')``: 9216/9216/8192/9216/8192
    dims for ResNet-50 at 224) -> ``BatchNorm2d(C, momentum 0.1, affine=False)`` on the pooled 4-D map (SyncBN
    when distributed) -> flatten -> ``Linear(dim, num_classes)``, Normal(0, 0.01) weights, zero bias; fp32;
  * loss: the sum of the five cross-entropies; SGD lr 0.01, momentum 0.9, nesterov, wd 1e-4 (the head BNs have no
    affine parameters, so ``norm_decay_mult=0`` changes nothing); global batch 256;
  * step LR (gamma 0.1) at epoch milestones: ImageNet [30, 60] in 90 epochs, iNat18 [24, 48, 72] in 84,
    Places205 [7, 14, 21] in 28;
  * train augmentation per dataset (``byol_bench.classification.train_transform``), test Resize 256 ->
    CenterCrop 224; top-1/top-5 per head every ``eval_every_epochs`` and **at the final epoch**; the table reads
    the final epoch's top-1 (``feat1``..``feat5``, %).

NOTE: mmselfsup evaluates only every 10 epochs, so its iNat18 (84 e) and Places205 (28 e) runs never score the
final weights; we always evaluate the final epoch (A.4). The val curve is in the record's ``details``.
NOTE: the global batch is kept at ``global_batch_size`` (256) for any GPU count: each of ``world`` processes takes
``256 / world`` images; a world size that does not divide it is refused (no gradient accumulation).
NOTE: a multi-process CPU job (gloo; for testing) keeps per-process BatchNorm in the heads: SyncBN runs on GPUs only.
The record's ``details.head_bn`` says which ran.
NOTE: ``pooling=adaptive`` (tiny presets only) replaces the fixed pooling kernels, which need >= 192 px inputs, by
adaptive average pooling to the same grids (12/6/4/3/2), so 48 px tiny images keep the protocol's head shapes.
NOTE: augmentation randomness is re-seeded per epoch from (seed, epoch, rank), so a run resumed at an epoch
boundary (``resume=auto``) continues exactly as if it had not stopped (tested on CPU).
NOTE: ``rehearsal=true`` (byol_bench.rehearsal) runs one process of the preset's world (32 images per step for
8xb32) for one epoch of two steps over the first train images, and scores the first val images.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from adapters import load_backbone
from byol_bench import dist, preflight, rehearsal, training
from byol_bench.backbone import FEATURE_NAMES, MultiLayerFeatures, feature_channels
from byol_bench.classification import DATASETS, open_split, test_transform, train_transform
from byol_bench.config import CONFIG_ROOT, opt, parse_args
from byol_bench.features import assert_frozen, state_snapshot
from byol_bench.metrics import TopkCounter
from byol_bench.runlog import Progress
from byol_bench.runner_config import EpochTrainerConfig, TrainerResolved
from byol_bench.scaffold import open_run

PROTOCOL = "linear_mhead"  # the record's dataset is cfg.dataset, one of DATASETS (each fills its table)
PRESET_DIR = CONFIG_ROOT / PROTOCOL
# Output grid of the protocol pooling at 224 px (B §2.2); pooling=adaptive pools to these grids at any size.
POOL_GRIDS = {"feat1": 12, "feat2": 6, "feat3": 4, "feat4": 3, "feat5": 2}


@dataclass(frozen=True)
class LinearMheadConfig(EpochTrainerConfig, protocol=PROTOCOL, num_workers=8):
    """Multi-head linear probe settings (defaults = the mmselfsup ImageNet protocol)."""

    dataset: Literal["imagenet", "inat18", "places205"] = opt("imagenet", "the dataset (and table) to evaluate on")
    milestones: tuple[int, ...] = opt((30, 60, 90), "epochs at which the lr is multiplied by 0.1")
    lr: float = opt(0.01, "SGD learning rate (global batch 256)", positive=True)
    momentum: float = opt(0.9, "SGD momentum (nesterov)")
    weight_decay: float = opt(1e-4, "SGD weight decay")
    pooling: Literal["specified", "adaptive"] = opt(
        "specified", "specified = the protocol's fixed AvgPool kernels (needs >= 192 px); adaptive = pool to the "
        "same grids at any size (tiny presets)")
    seed: int = opt(0, "seed of the head initialisation and the augmentation / shuffling")
    precision: Literal["auto", "fp32", "bf16"] = opt("auto", "backbone autocast: auto = bf16 on CUDA, fp32 on CPU; "
                                                     "the heads always run in fp32", identity=False)


Resolved = TrainerResolved  # batch_size_per_device = global_batch_size / world_size; precision: the backbone's


class MultiHeads(nn.Module):
    """Five linear heads on pooled feature maps: per layer ``BN(C, affine=False)`` -> flatten -> ``Linear``.

    Args:
        channels: ``{layer: C}`` of the pooled maps.
        dims: ``{layer: C * h * w}``, the flattened size after pooling.
        num_classes: outputs of every head.
    """

    def __init__(self, channels: dict[str, int], dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.layers = tuple(channels)
        self.norms = nn.ModuleDict({k: nn.BatchNorm2d(c, momentum=0.1, affine=False) for k, c in channels.items()})
        self.fcs = nn.ModuleDict({k: nn.Linear(dims[k], num_classes) for k in self.layers})
        for fc in self.fcs.values():
            nn.init.normal_(fc.weight, std=0.01)
            nn.init.zeros_(fc.bias)

    def forward(self, pooled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: self.fcs[k](self.norms[k](pooled[k]).flatten(1)) for k in self.layers}


def run(cfg: LinearMheadConfig) -> dict[str, float]:
    """Train the five heads on frozen features of ``cfg.ckpt``; write the record; return its metrics."""
    check_inputs(cfg)
    with open_run(PROTOCOL, cfg.dataset, cfg, ckpt=cfg.ckpt) as run:
        if run.done is not None:
            return run.done
        info, device = run.info, run.info.device
        precision = training.resolve_precision(cfg.precision, device)
        # a rehearsal is one process of the preset's world: its share of the batch, two steps, one epoch
        world = rehearsal.reference_world(cfg.preset) if cfg.rehearsal else info.world_size
        per_device = training.batch_per_device(cfg.global_batch_size, world)
        epochs = 1 if cfg.rehearsal else cfg.epochs
        log = run.start(Resolved(world_size=info.world_size, batch_size_per_device=per_device,
                                 global_batch_size=cfg.global_batch_size, precision=precision, device=str(device)))

        # ------------------------------------------------------------ data (decode and crop in the workers)
        train = open_split(cfg.dataset, cfg.data_root, "train", train_transform(cfg.dataset, cfg.image_size),
                           tiny=cfg.tiny)
        val = open_split(cfg.dataset, cfg.data_root, "val", test_transform(cfg.test_resize, cfg.image_size),
                         tiny=cfg.tiny)
        if cfg.rehearsal:
            train.dataset = rehearsal.first(train.dataset, rehearsal.STEPS * per_device * info.world_size,
                                            str(train.source))
            val.dataset = rehearsal.first_eval(val.dataset)
        data_check = preflight.check({"train": train.dataset, "val": val.dataset}, cfg.preflight,
                                     f"{PROTOCOL} {cfg.dataset}")
        sampler = DistributedSampler(train.dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=cfg.seed)
        loader = DataLoader(train.dataset, per_device, sampler=sampler, num_workers=cfg.num_workers,
                            pin_memory=device.type == "cuda", persistent_workers=False)
        # Evaluation: every rank scores a disjoint stride of val (no padding), counts are summed over ranks.
        val_part = Subset(val.dataset, range(info.rank, len(val.dataset), info.world_size))
        val_loader = DataLoader(val_part, per_device, num_workers=cfg.num_workers)

        # ------------------------------------------------------------ backbone (frozen, eval mode)
        backbone, report = load_backbone(cfg.ckpt, cfg.arch, cfg.encoder, sha256=run.ckpt_sha256)
        backbone.eval().requires_grad_(False)
        loaded = state_snapshot(backbone)
        extractor = MultiLayerFeatures(backbone, FEATURE_NAMES, pooled=False).to(device).eval()
        if device.type == "cuda":
            extractor = extractor.to(memory_format=torch.channels_last)

        # ------------------------------------------------------------ heads, optimizer, schedule, resume
        torch.manual_seed(cfg.seed)
        channels = feature_channels(backbone)
        dims = head_dims(backbone, cfg.image_size, cfg.pooling)
        heads = MultiHeads(channels, dims, train.num_classes)
        if device.type == "cuda":  # SyncBN in a multi-GPU job (as the reference); it has no CPU kernels
            heads = dist.maybe_sync_bn(heads)
        heads = heads.to(device)
        head_bn = type(next(iter(heads.norms.values()))).__name__
        heads_ddp = training.wrap_ddp(heads, device)
        optimizer = torch.optim.SGD(heads.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay, nesterov=True)
        lrs = training.step_lr(cfg.lr, epochs, len(loader), cfg.milestones)
        start_epoch, state = 0, {"evals": [], "train_time_s": 0.0}
        resume_from = training.resume_point(run.run_dir, cfg)  # --force: from scratch
        if resume_from is not None:
            start_epoch, state = training.load_training_state(resume_from, modules={"heads": heads},
                                                              optimizer=optimizer, config_hash=run.config_hash)
            training.report_resume(PROTOCOL, resume_from, start_epoch, "epoch")
        log.drop_after_step(start_epoch * len(loader))  # rows of steps this invocation trains (again)
        guard = training.DivergenceGuard(PROTOCOL, run.run_dir / "latest.pth")  # the loss is read every step anyway

        # ------------------------------------------------------------ loop
        progress = Progress(epochs * len(loader), f"{PROTOCOL} {cfg.dataset}", initial=start_epoch * len(loader),
                            unit="step")
        clock = rehearsal.Clock(device, enabled=cfg.rehearsal)
        for epoch in range(start_epoch, epochs):
            started = time.time()
            torch.manual_seed(training.epoch_seed(cfg.seed, epoch, info.rank))  # augmentation: a function of the epoch
            sampler.set_epoch(epoch)
            heads.train()
            for i, (images, labels) in enumerate(loader):
                step = epoch * len(loader) + i
                for group in optimizer.param_groups:
                    group["lr"] = float(lrs[step])
                loss, losses = train_step(extractor, heads_ddp, optimizer, images, labels, cfg.pooling, precision,
                                          device)
                guard.observe(loss.item(), step + 1, float(lrs[step]))
                clock.step()
                progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lrs[step]:.2g}")
                progress.update()
                log.log(step=step + 1, epoch=epoch, loss=loss.item(), lr=float(lrs[step]),
                        **{f"loss_{k}": v.item() for k, v in losses.items()})
            state["train_time_s"] += time.time() - started
            done = epoch + 1
            if done % cfg.eval_every_epochs == 0 or done == epochs:
                with clock.evaluating(len(val_part)):
                    scores = evaluate(extractor, heads, val_loader, cfg.pooling, precision, device)
                state["evals"].append({"epoch": done, **scores})
                log.log(step=done * len(loader), eval_epoch=done, **scores)
                if info.is_main:
                    print(f"{PROTOCOL} {cfg.dataset} epoch {done}: " +
                          " ".join(f"{k}={scores[f'top1_{k}']:.2f}" for k in FEATURE_NAMES))
            if done % cfg.ckpt_every_epochs == 0 or done == epochs or done == cfg.stop_after_epochs:
                training.save_training_state(run.run_dir / "latest.pth", modules={"heads": heads},
                                             optimizer=optimizer, done=done, config_hash=run.config_hash,
                                             extra=state)
            if done == cfg.stop_after_epochs and done < epochs:
                progress.close()
                print(f"{PROTOCOL}: stopped after epoch {done} (stop_after_epochs); rerun to resume")
                return {}
        progress.close()

        # ------------------------------------------------------------ frozenness proof, metrics, record
        assert_frozen(backbone, loaded, cfg.ckpt)
        final = state["evals"][-1]
        metrics = {k: final[f"top1_{k}"] for k in FEATURE_NAMES}
        details = {
            "final_epoch": final["epoch"],
            "top5": {k: final[f"top5_{k}"] for k in FEATURE_NAMES},
            "val_curve": state["evals"],
            "eval_epochs": [e["epoch"] for e in state["evals"]],
            "encoder_evaluated": cfg.encoder,
            "frozen_backbone": {"checked": True, "tensors_equal_to_loaded": len(loaded),
                                "what": "every backbone parameter and buffer (BN running statistics included) "
                                        "equals the loaded checkpoint's after training"},
            "global_batch_size": cfg.global_batch_size, "world_size": info.world_size,
            "batch_size_per_device": per_device, "precision_backbone": precision, "precision_heads": "fp32",
            "num_classes": train.num_classes, "train_images": len(train.dataset), "val_images": len(val.dataset),
            "train_source": str(train.source), "val_source": str(val.source),
            "head_dims": dims, "pooling": cfg.pooling, "head_bn": head_bn,
            "train_time_s": round(state["train_time_s"], 2),
        }
        if cfg.rehearsal:
            details["rehearsal"] = clock.summary(
                images_per_step=per_device, reference_world=world,
                **rehearsal.epoch_full_run(cfg, f"{cfg.dataset}/train", f"{cfg.dataset}/val", world))
        if info.is_main:
            png = training.plot_log(log.path, run.run_dir / "val_curve.png", "eval_epoch",
                                    [f"top1_{k}" for k in FEATURE_NAMES],
                                    run.plot_title(f"multi-head linear probe, {cfg.dataset} val"),
                                    "val top-1 (%)")
            details["val_curve_plot"] = str(png)
        details["preflight"] = data_check
        metrics = run.finish(metrics, checkpoint=asdict(report), seeds={"heads_and_augmentation": cfg.seed},
                             batch_size_per_device=per_device, details=details)
        if info.is_main:
            print(f"{PROTOCOL} {cfg.dataset}: feat5 top-1 {metrics['feat5']:.2f}; record {run.record_path}")
        return metrics


def check_inputs(cfg: LinearMheadConfig) -> None:
    """One-line errors for a bad config, before anything is written."""
    if not cfg.ckpt:
        raise ValueError("no checkpoint given: pass --ckpt PATH")
    if cfg.dataset not in DATASETS:
        raise ValueError(f"dataset {cfg.dataset!r} is not one of {', '.join(DATASETS)}")


def head_dims(backbone: nn.Module, image_size: int, pooling: str) -> dict[str, int]:
    """Flattened head input size per layer: ``C * h * w`` of the pooled map for ``image_size`` inputs."""
    extractor = MultiLayerFeatures(backbone, FEATURE_NAMES, pooled=False).eval()
    probe = next(backbone.parameters())
    with torch.inference_mode():
        pooled = pooled_features(extractor, torch.zeros(1, 3, image_size, image_size, device=probe.device), pooling,
                                 "fp32")
    return {k: v[0].numel() for k, v in pooled.items()}


def pooled_features(extractor: MultiLayerFeatures, images: torch.Tensor, pooling: str,
                    precision: str) -> dict[str, torch.Tensor]:
    """One backbone pass for all five heads: pooled 4-D maps in fp32, as ordinary tensors the heads can train on.

    The backbone runs under ``torch.inference_mode()`` (bf16 autocast when ``precision == "bf16"``); its outputs
    are inference tensors, which autograd cannot save, so the (small) pooled maps are cloned outside the mode.
    """
    with torch.inference_mode(), training.autocast(images.device, precision):
        if images.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        maps = extractor(images)
        if pooling == "adaptive":
            pooled = {k: F.adaptive_avg_pool2d(v, POOL_GRIDS[k]) for k, v in maps.items()}
        else:
            pooled = {k: extractor.pools[k](v) for k, v in maps.items()}
    return {k: v.float().clone() for k, v in pooled.items()}


def train_step(extractor: MultiLayerFeatures, heads: nn.Module, optimizer: torch.optim.Optimizer,
               images: torch.Tensor, labels: torch.Tensor, pooling: str, precision: str,
               device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step of the heads: frozen backbone pass (:func:`pooled_features`), the five heads in fp32, the
    summed cross-entropy, backward, SGD step. Returns the summed loss and the per-head losses (device tensors).

    ``heads`` is :class:`MultiHeads` or its DDP wrapper; ``scripts/bench_linear.py`` times this very function.
    """
    pooled = pooled_features(extractor, images.to(device, non_blocking=True), pooling, precision)
    logits = heads(pooled)
    labels = labels.to(device, non_blocking=True)
    losses = {k: F.cross_entropy(v, labels) for k, v in logits.items()}
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, losses


@torch.no_grad()
def evaluate(extractor: MultiLayerFeatures, heads: MultiHeads, loader: DataLoader, pooling: str, precision: str,
             device: torch.device) -> dict[str, float]:
    """Top-1 / top-5 (%) per head on ``loader``, counts summed over all ranks (exact: no padded samples)."""
    heads.eval()
    counter = TopkCounter(FEATURE_NAMES, (1, 5))
    for images, labels in loader:
        logits = heads(pooled_features(extractor, images.to(device), pooling, precision))
        for name in FEATURE_NAMES:
            counter.add(name, logits[name], labels)
    heads.train()
    return {f"{top}_{name}": value for name, scores in counter.percent(device).items() for top, value in scores.items()}


def main() -> None:
    run(parse_args(LinearMheadConfig, preset_dir=PRESET_DIR, description=__doc__))
