"""The pretrainer's config (one frozen dataclass) and the values derived from it (a separate resolved object).

Presets live in ``configs/pretrain/*.yaml``; every field can be overridden as ``key=value`` on the command line.
The config is never mutated: the global batch, the scaled learning rate and the iteration counts depend on the
world size and the dataset, so :func:`resolve` computes them once into :class:`Resolved`, which is written next to
the config (``resolved.json``) and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from byol_bench.config import CONFIG_ROOT, opt
from byol_bench.training import resolve_precision

PRESET_DIR = CONFIG_ROOT / "pretrain"


@dataclass(frozen=True)
class PretrainConfig:
    """BYOL pretraining (PROTOCOLS.md A.2, B §1). Defaults are the mmselfsup v0.5.0 recipe on 8 GPUs."""

    # ---- run
    preset: str = opt("custom", "preset name (set by --preset; the record's preset)")
    name: str = opt("byol", "model name: the final checkpoint is <out_dir>/<name>.pth, so it labels the model's row "
                            "in every table")
    tiny: bool = opt(False, "tiny sizes on embedded data: the record says its numbers are not comparable with "
                            "published ones")
    rehearsal: bool = opt(False, "rehearse the preset: its sizes, two optimizer steps (each a full accumulation "
                                 "window), the kNN monitor on the first images; the record is no result "
                                 "(docs/REHEARSAL.md)", identity="when_set")
    out_dir: str = opt("work_dirs/pretrain", "run folder: checkpoints, log.jsonl, loss_curve.png, records/",
                       identity=False)
    force: bool = opt(False, "redo the run: train afresh (with resume=auto the checkpoints in out_dir are not "
                             "resumed from but overwritten), score the kNN monitor and write the record again",
                      identity=False)
    resume: str = opt("auto", "'auto': continue from the newest checkpoint in out_dir if there is one (not under "
                              "--force); 'none': start fresh (refuses a folder that holds checkpoints); or a "
                              "checkpoint path", identity=False)
    preflight: bool = opt(True, "check every file of the splits the run reads (exists, image header readable) "
                                "before training; false skips it (the record's config says so)", identity=False)
    wait_for_lock: bool = opt(False, "when another process holds out_dir: wait for it instead of refusing",
                              identity=False)
    seed: int = opt(0, "seed of the initialisation, the data order and every augmentation draw")
    # ---- data
    data_root: str = opt("data", "folder holding <dataset>/{train,val,meta} (docs/DATASETS.md)", identity=False)
    dataset: str = opt("imagenet", "dataset folder under data_root (ImageNet layout); also the record's dataset")
    train_list: str = opt("meta/train.txt", "image list of the training split, relative to the dataset folder; "
                                            "'' scans the class folders")
    val_list: str = opt("meta/val.txt", "image list of the val split (kNN monitor queries); '' scans the folders")
    image_size: int = opt(224, "side of both crops in pixels (RandomResizedCrop size)", positive=True)
    crop_scale_min: float = opt(0.08, "RandomResizedCrop lower bound of the crop area fraction (upper is 1)",
                                positive=True)
    decode_min_size: int = opt(0, "0 decodes JPEGs fully (exact); N lets libjpeg decode at 1/2..1/8 scale while "
                                  "the short side stays >= N (faster on large photos, pixels change slightly)")
    num_workers: int = opt(4, "DataLoader worker processes per training process (decode + crop, and on a CPU-only "
                              "machine the photometric ops too); 0 does all of it in the training process",
                           identity=False)
    # ---- networks
    arch: str = opt("resnet50", "backbone: a torchvision ResNet name (resnet18..resnet152) or timm:<name>")
    projector_hidden_dim: int = opt(4096, "hidden width of the projector and the predictor MLPs", positive=True)
    projector_out_dim: int = opt(256, "output width of the projector and the predictor", positive=True)
    sync_bn: bool = opt(True, "SyncBN across all processes when world size > 1 on CUDA (per-view BN statistics "
                              "over batch_size_per_device x world images, as mmselfsup)")
    # ---- optimisation
    epochs: int = opt(200, "training length in epochs (passes over the training split)", positive=True)
    warmup_epochs: float = opt(10.0, "linear learning-rate warm-up length in epochs")
    batch_size_per_device: int = opt(32, "images per process per data iteration (each gives two views)", positive=True)
    accum_steps: int = opt(16, "data iterations per optimizer step (gradient accumulation, mmselfsup "
                               "update_interval); global batch = batch_size_per_device x world x accum_steps",
                           positive=True)
    base_lr: float = opt(0.3, "learning rate per 256 images of global batch: lr = base_lr x global / 256 "
                              "(0.3 -> 4.8 at 4096, mmselfsup; the paper uses 0.2)", positive=True)
    lr_cosine: Literal["per_epoch", "per_step"] = opt(
        "per_epoch", "per_epoch: mmcv (B §1.6): cosine over all epochs, recomputed once per epoch, multiplied by "
                     "the per-iteration warm-up; per_step: warm-up, then cosine over the remaining steps (paper, "
                     "mmselfsup 1.x)")
    warmup_ratio: float = opt(1e-4, "learning rate at the first warm-up iteration, as a fraction of the peak")
    min_lr: float = opt(0.0, "learning rate at the end of the cosine")
    weight_decay: float = opt(1e-6, "LARS weight decay (norm parameters and biases get none)")
    lars_momentum: float = opt(0.9, "LARS momentum")
    lars_eta: float = opt(1e-3, "LARS trust coefficient", positive=True)
    target_momentum: float = opt(0.99, "EMA momentum of the target network at step 0 (mmselfsup config 0.99; paper "
                                       "0.996); rises to target_momentum_end on a cosine over optimizer steps")
    target_momentum_end: float = opt(1.0, "EMA momentum at the last optimizer step")
    # ---- speed (results do not depend on these beyond floating-point rounding)
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto: CUDA when available", identity=False)
    precision: Literal["auto", "fp32", "bf16"] = opt("auto", "auto: bf16 autocast on CUDA, fp32 on CPU")
    channels_last: bool = opt(True, "channels_last memory format (CUDA; on CPU oneDNN trains ResNets ~20 % faster "
                                    "in it at 112 px and ~10 % slower at 64 px, so the tiny preset turns it off)",
                              identity=False)
    compile: bool = opt(False, "torch.compile the model (minutes of compile time; pays off on long GPU runs)",
                        identity=False)
    # ---- bookkeeping
    ckpt_every_steps: int = opt(500, "write <out_dir>/latest.pth every N optimizer steps (and at the end)",
                                identity=False, positive=True)
    log_every_steps: int = opt(10, "log loss/lr/momentum/img/s every N optimizer steps", identity=False, positive=True)
    stop_after_steps: int = opt(0, "stop after this many optimizer steps with a checkpoint, schedules unchanged "
                                   "(time-boxed jobs; continue with --resume auto); 0 runs to the end",
                                identity=False)
    # ---- kNN monitor (end of training)
    knn: bool = opt(True, "run the kNN monitor on the val split at the end and put it in the record")
    knn_k: int = opt(20, "neighbours of the kNN monitor", positive=True)
    knn_temperature: float = opt(0.07, "temperature of the kNN vote weights exp(cos / T)", positive=True)
    knn_max_train_images: int = opt(0, "feature bank size cap (evenly spaced train images); 0 uses all")
    knn_batch_size: int = opt(256, "images per process per kNN feature-extraction batch", identity=False, positive=True)
    knn_random_init_baseline: bool = opt(False, "also score a random-init backbone of the same seed (the baseline "
                                                "the tiny preset must beat)")


@dataclass(frozen=True)
class Resolved:
    """Values derived from the config, the world size and the dataset; logged next to the config."""

    world_size: int  # training processes
    global_batch_size: int  # images per optimizer step, all processes together
    lr: float  # peak learning rate = base_lr x global_batch_size / 256
    train_images: int  # images in the training split
    iters_per_epoch: int  # data iterations per epoch and process (last incomplete batch dropped)
    total_iters: int  # data iterations of the whole run
    total_steps: int  # optimizer steps of the whole run (total_iters // accum_steps)
    warmup_iters: int  # data iterations of linear warm-up
    device: str  # "cpu" or "cuda:<n>"
    precision: str  # "fp32" or "bf16"
    channels_last: bool  # whether tensors use the channels_last memory format

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve(cfg: PretrainConfig, world_size: int, train_images: int, device: torch.device) -> Resolved:
    """Derive batch, learning rate, iteration counts and numerics from ``cfg``.

    Raises:
        ValueError: a setting that cannot run (too few images for one batch, fewer iterations than one
            accumulation window), with the fix in the message (numbers are checked when the config is parsed).
    """
    per_rank = train_images // world_size
    iters_per_epoch = per_rank // cfg.batch_size_per_device
    if iters_per_epoch == 0:
        raise ValueError(
            f"{Path(cfg.data_root) / cfg.dataset}: {train_images} training images are fewer than one batch of "
            f"{cfg.batch_size_per_device} x {world_size} processes; lower batch_size_per_device")
    total_iters = iters_per_epoch * cfg.epochs
    # NOTE: a trailing partial accumulation window is dropped (mmselfsup steps on it but skips its EMA update).
    total_steps = total_iters // cfg.accum_steps
    if total_steps == 0:
        raise ValueError(f"{total_iters} data iterations are fewer than accum_steps={cfg.accum_steps}; raise "
                         "epochs or lower accum_steps")
    global_batch = cfg.batch_size_per_device * world_size * cfg.accum_steps
    precision = resolve_precision(cfg.precision, device)
    return Resolved(
        world_size=world_size,
        global_batch_size=global_batch,
        lr=cfg.base_lr * global_batch / 256,
        train_images=train_images,
        iters_per_epoch=iters_per_epoch,
        total_iters=total_iters,
        total_steps=total_steps,
        warmup_iters=round(cfg.warmup_epochs * iters_per_epoch),
        device=str(device),
        precision=precision,
        channels_last=cfg.channels_last,
    )
