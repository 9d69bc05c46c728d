"""FCN R50-D8 semantic segmentation (mmselfsup v0.5.0 ``benchmarks/mmsegmentation``; PROTOCOLS.md A.7, B §6).

Canonical command (Pascal VOC 2012 + Aug; ``fcn_r50-d8_4xb2-40k_cityscapes-769x769`` for Cityscapes)::

    torchrun --nproc-per-node 4 -m benchmarks.segmentation --preset fcn_r50-d8_4xb4-20k_voc12aug-512x512 \\
        --ckpt byol.pth --data-root /datasets

    python -m benchmarks.segmentation --preset tiny --ckpt byol.pth --data-root data/tiny   (embedded data)

Fixed protocol (B §6.1-6.2):
  * model: the checkpoint's torchvision ResNet (plain 7x7 stem, ``adapters.load_backbone``) made dilated by
    ``byol_bench.backbone.dilate_resnet``: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), mmseg's contract_dilation
    -> output stride 8; FCN head on layer4 (two 3x3 ConvBNReLU of 512, the input concatenated and fused by a third,
    Dropout2d 0.1, 1x1 classifier) and the auxiliary FCN head on layer3 (one ConvBNReLU of 256, no concat, dropout
    0.1), loss = CE(decode) + 0.4 CE(aux), both on logits resized to the label size (bilinear, ``align_corners``);
    SyncBN in a multi-GPU job; nothing frozen, BN in train mode;
  * SGD lr 0.01, momentum 0.9, wd 5e-4 on every parameter; poly lr (power 0.9, to 1e-4) per iteration;
    ``batch_size_per_device`` images per process (the recipe's 4 GPUs: VOC 4 x 4 = 16, Cityscapes 4 x 2 = 8);
  * train pipeline (mmseg 0.x ``mmseg/datasets/pipelines/transforms.py``, whose defaults are the recipe's):
    Resize to ``scale`` x ratio U(0.5, 2.0) keeping the aspect ratio (mmcv ``imrescale``; bilinear image, nearest
    label) -> RandomCrop ``crop_size`` with cat_max_ratio 0.75 (up to 10 redraws until no class, 255 aside, covers
    >= 75 % of the crop and there are >= 2 classes) -> horizontal flip p 0.5 -> PhotoMetricDistortion with mmseg's
    defaults (each step p 0.5: brightness +-32, contrast 0.5-1.5 before or after the HSV steps, saturation 0.5-1.5,
    hue +-18 in OpenCV units of 2 degrees) -> normalise RGB (mean 123.675/116.28/103.53, std 58.395/57.12/57.375)
    -> pad to the crop (image 0, label 255);
  * test: resize to ``test_scale`` keeping the aspect ratio, single scale, no flip; ``whole`` image (VOC) or
    ``slide`` windows (Cityscapes: crop 769, stride 513, ``benchmarks.segmentation.evaluation.slide_logits``); logits
    resized
    back to the original size, argmax;
  * metric: the val predictions are written as PNG label maps next to the record (VOC: palette PNGs of the class
    indices; Cityscapes: official labelIds, as cityscapesScripts reads them), read back and scored with mmseg's
    ``IoUMetric`` (``benchmarks.segmentation.evaluation``: dataset-level intersection/union, ignore 255, NaN classes
    out of the
    mean); the table reads mIoU (%), per-class IoU, mAcc and aAcc are in ``details``.

NOTE: the CE loss is mmseg's default (``avg_non_ignore=False``): summed over the non-ignored pixels and divided by
ALL pixels of the batch, padding included. This is what the reference trained with.
NOTE: mmseg evaluates every 2,000 (4,000) iterations; we score the final weights only (the reported figure).
NOTE: PhotoMetricDistortion's saturation and hue steps use a float HSV round trip instead of OpenCV's uint8 HSV
(cv2 is not a dependency); the image is still rounded to uint8 after every step, as there. Pixel values can
differ from OpenCV's by a few levels.
NOTE: augmentation randomness is a function of (seed, global sample number) and the shuffling of (seed, pass over
the data), so a run resumed at any saved iteration (``resume=auto``) continues exactly (tested on CPU) and the
result does not depend on the worker count.
NOTE: the per-device batch is fixed by the recipe; the global batch is ``batch_size_per_device x world size``
(the record says which). Run the full presets on 4 GPUs to match mmseg's usual setup (B §9: an assumption).
NOTE: ``rehearsal=true`` (byol_bench.rehearsal) runs one process of the preset's world: the recipe's per-device batch
(4 images for 4xb4, no accumulation), the first two iterations of the preset's poly schedule over the first train
images, and the final evaluation's PNGs and mIoU on the first 8 val images; native engine only.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from adapters import load_backbone
from benchmarks.segmentation import mmseg as segmentation_mmseg
from benchmarks.segmentation.evaluation import (
    CLASS_NAMES,
    IGNORE_INDEX,
    prediction_name,
    save_prediction,
    score_files,
    segmentation_scores,
)
from benchmarks.segmentation.fcn import FCN, MEAN, STD, predict, rescale_size, resize, train_step
from byol_bench import dist, preflight, rehearsal, training
from byol_bench.config import CONFIG_ROOT, opt, parse_args
from byol_bench.datasets.cityscapes import Cityscapes
from byol_bench.datasets.voc_seg import VOCAugSegmentation
from byol_bench.runlog import Progress
from byol_bench.runner_config import IterTrainerConfig, TrainerResolved
from byol_bench.scaffold import open_run
from byol_bench.seeding import rng_for

PROTOCOL = "segmentation"
DATASETS = ("voc12aug", "cityscapes")
PRESET_DIR = CONFIG_ROOT / PROTOCOL


@dataclass(frozen=True)
class SegmentationConfig(IterTrainerConfig, protocol=PROTOCOL):
    """FCN R50-D8 settings (defaults = the VOC12+Aug recipe; the loss is computed in fp32 under any precision)."""

    dataset: Literal["voc12aug", "cityscapes"] = opt("voc12aug", "the dataset (and table) to evaluate on")
    max_iters: int = opt(20000, "training iterations", positive=True)
    lr: float = opt(0.01, "SGD learning rate", positive=True)
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(5e-4, "SGD weight decay (every parameter)")
    poly_power: float = opt(0.9, "poly schedule power")
    min_lr: float = opt(1e-4, "poly schedule floor")
    batch_size_per_device: int = opt(4, "images per process per iteration (the recipe's per-GPU batch)", positive=True)
    scale: tuple[int, ...] = opt((2048, 512), "train resize base (long, short) before the 0.5-2.0 ratio", positive=True)
    ratio_range: tuple[float, ...] = opt((0.5, 2.0), "train resize ratio range", positive=True)
    crop_size: int = opt(512, "train crop (square), also the pad size", positive=True)
    cat_max_ratio: float = opt(0.75, "largest share one class may cover in a train crop (redrawn up to 10 times)",
                               positive=True)
    test_scale: tuple[int, ...] = opt((2048, 512), "test resize (long, short), keeping the aspect ratio", positive=True)
    test_mode: Literal["whole", "slide"] = opt("whole", "whole image or sliding-window inference")
    test_crop: int = opt(512, "slide: window size", positive=True)
    test_stride: int = opt(341, "slide: window stride", positive=True)
    align_corners: bool = opt(False, "align_corners of every logit resize (Cityscapes: true)")
    seed: int = opt(0, "seed of the heads' initialisation, the shuffling and the augmentation")
    engine: Literal["native", "mmseg"] = opt(
        "native", "native = this module's training (CI, demo); mmseg = mmsegmentation 1.2.x's Runner on a generated "
        "config (needs mmseg installed; one process; docs/SEGMENTATION.md)")


Resolved = TrainerResolved  # global_batch_size = batch_size_per_device x world_size (the recipe fixes the former)


def run(cfg: SegmentationConfig) -> dict[str, float]:
    """Train FCN R50-D8 from ``cfg.ckpt`` on ``cfg.dataset``; score the val set; write the record."""
    check_inputs(cfg)
    with open_run(PROTOCOL, cfg.dataset, cfg, ckpt=cfg.ckpt) as run:
        if run.done is not None:
            return run.done
        info, device = run.info, run.info.device
        precision = training.resolve_precision(cfg.precision, device)
        batch = cfg.batch_size_per_device  # the recipe's per-GPU batch, also a rehearsal's (one process of its world)
        iters = rehearsal.STEPS if cfg.rehearsal else cfg.max_iters
        log = run.start(Resolved(world_size=info.world_size, batch_size_per_device=batch,
                                 global_batch_size=batch * info.world_size, precision=precision, device=str(device)))

        # ------------------------------------------------------------ data
        train_set, val_set = open_dataset(cfg.dataset, cfg.data_root, "train"), open_dataset(
            cfg.dataset, cfg.data_root, "val")
        scored = len(val_set)  # the val images predicted and scored: the first ones (all but in a rehearsal)
        if cfg.rehearsal:  # the images the two iterations of every process read; the first val images
            train_set = rehearsal.first(train_set, iters * batch * info.world_size, f"{cfg.dataset} train")
            scored = len(rehearsal.first_eval(val_set))
        data_check = preflight.check({"train": train_set, "val": rehearsal.first_eval(val_set) if cfg.rehearsal
                                      else val_set}, cfg.preflight, f"{PROTOCOL} {cfg.dataset}")
        backbone, report = load_backbone(cfg.ckpt, cfg.arch, cfg.encoder, sha256=run.ckpt_sha256)
        pred_dir = run.record_path.with_suffix(".predictions")
        engine_details: dict = {}
        if cfg.engine == "mmseg":  # mmseg trains and writes the prediction PNGs; scored below as the native ones
            written, state, engine_details = segmentation_mmseg.train_and_predict(
                cfg, run, log, backbone, report, train_set, val_set, pred_dir)
        else:
            stream = TrainStream(train_set, cfg, info.rank, info.world_size)
            # ------------------------------------------------------------ model, optimizer, schedule, resume
            torch.manual_seed(cfg.seed)  # the heads' initialisation
            model = FCN(backbone, len(CLASS_NAMES[cfg.dataset]))
            if device.type == "cuda":  # SyncBN in a multi-GPU job (as the reference); it has no CPU kernels
                model = dist.maybe_sync_bn(model)
            model = model.to(device)
            if device.type == "cuda":
                model = model.to(memory_format=torch.channels_last)
            model_ddp = training.wrap_ddp(model, device)
            optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                        weight_decay=cfg.weight_decay)
            lrs = training.poly_lr(cfg.lr, cfg.max_iters, cfg.poly_power, cfg.min_lr)  # a rehearsal: its first two
            start, state = 0, {"train_time_s": 0.0}
            resume_from = training.resume_point(run.run_dir, cfg)  # --force: from scratch
            if resume_from is not None:
                start, state = training.load_training_state(resume_from, modules={"model": model}, optimizer=optimizer,
                                                            config_hash=run.config_hash)
                training.report_resume(PROTOCOL, resume_from, start, "iteration")
            log.drop_after_step(start)  # rows of iterations this invocation trains (again)
            guard = training.DivergenceGuard(PROTOCOL, run.run_dir / "latest.pth", unit="iteration")

            # ------------------------------------------------------------ loop (iteration-based)
            # Its own generator: the loader's base-seed draw must not shift the global stream (dropout) on resume.
            loader = DataLoader(stream, batch, sampler=range(start * batch, iters * batch),
                                num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                                generator=torch.Generator().manual_seed(cfg.seed))
            progress = Progress(iters, f"{PROTOCOL} {cfg.dataset}", initial=start, unit="it")
            model.train()
            clock = rehearsal.Clock(device, enabled=cfg.rehearsal)
            started, it = time.time(), start
            for it, (images, labels) in enumerate(loader, start=start + 1):
                for group in optimizer.param_groups:
                    group["lr"] = float(lrs[it - 1])
                losses = train_step(model_ddp, optimizer, images, labels, cfg.align_corners, precision, device)
                guard.observe(losses["loss"], it, float(lrs[it - 1]))  # a float: read every iteration anyway
                clock.step()
                progress.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{lrs[it - 1]:.2g}")
                progress.update()
                log.log(step=it, lr=float(lrs[it - 1]), **losses)
                if it % cfg.ckpt_every_iters == 0 or it == iters or it == cfg.stop_after_iters:
                    state["train_time_s"] += time.time() - started
                    started = time.time()
                    training.save_training_state(run.run_dir / "latest.pth", modules={"model": model},
                                                 optimizer=optimizer, done=it, config_hash=run.config_hash, extra=state)
                if it == cfg.stop_after_iters and it < iters:
                    progress.close()
                    print(f"{PROTOCOL}: stopped after iteration {it} (stop_after_iters); rerun to resume")
                    return {}
            progress.close()

            # ------------------------------------------------------------ predictions (PNG files) -> metric
            written = list(range(info.rank, scored, info.world_size))  # this process's share (PNG files)
            with clock.evaluating(len(written)):
                predict_val(model, val_set, written, cfg, pred_dir, precision, device)
        areas = score_files(val_set, written, cfg.dataset, pred_dir)
        areas = dist.all_reduce_sum(torch.from_numpy(areas).to(device)).cpu().numpy()
        scores = segmentation_scores(areas, CLASS_NAMES[cfg.dataset])
        details = {
            "IoU": scores["IoU"], "Acc": scores["Acc"], "mAcc": scores["mAcc"], "aAcc": scores["aAcc"],
            "predictions": str(pred_dir),
            "prediction_format": "labelIds PNG (cityscapesScripts)" if cfg.dataset == "cityscapes"
            else "palette PNG of class indices (VOC SegmentationClass)",
            "iterations": iters, "world_size": info.world_size, "batch_size_per_device": batch,
            "global_batch_size": batch * info.world_size, "reference_global_batch_size": 4 * batch,
            "precision": precision, "norm": "SyncBN" if dist.get_world_size() > 1 and device.type == "cuda" else "BN",
            "num_classes": len(CLASS_NAMES[cfg.dataset]), "train_images": len(train_set),
            "val_images": scored, "test_mode": cfg.test_mode, "encoder_evaluated": cfg.encoder,
            "loss": "CE(decode) + 0.4 CE(aux), mean over all pixels (mmseg avg_non_ignore=False)",
            "train_time_s": round(state["train_time_s"], 2), "engine": cfg.engine, **engine_details,
        }
        if cfg.rehearsal:  # the real run: max_iters iterations, one evaluation of its share of val per process
            world = rehearsal.reference_world(cfg.preset)
            details["rehearsal"] = clock.summary(
                images_per_step=batch, reference_world=world, full_steps=cfg.max_iters,
                full_eval_images=math.ceil(rehearsal.REAL_SPLIT_IMAGES[f"{cfg.dataset}/val"] / world))
        if info.is_main:
            png = training.plot_log(log.path, run.run_dir / "loss_curve.png", "step",
                                    ["loss", "loss_decode", "loss_aux"], run.plot_title("training loss"), "loss")
            details["loss_curve_plot"] = str(png)
            details["per_class_iou_plot"] = str(training.plot_bars(
                scores["IoU"], run.run_dir / "per_class_iou.png", run.plot_title(f"{cfg.dataset} val IoU per class"),
                "IoU (%)"))
        details["preflight"] = data_check
        metrics = run.finish({"mIoU": scores["mIoU"]}, checkpoint=asdict(report),
                             seeds={"heads_shuffle_augmentation": cfg.seed}, batch_size_per_device=batch,
                             details=details)
        if info.is_main:
            print(f"{PROTOCOL} {cfg.dataset}: mIoU {metrics['mIoU']:.2f}; record {run.record_path}")
        return metrics


def check_inputs(cfg: SegmentationConfig) -> None:
    """One-line errors for a bad config, before anything is written."""
    if not cfg.ckpt:
        raise ValueError("no checkpoint given: pass --ckpt PATH")
    if len(cfg.scale) != 2 or len(cfg.test_scale) != 2 or len(cfg.ratio_range) != 2:
        raise ValueError("scale and test_scale take (long, short), ratio_range (low, high): two values each")
    if not 0 < cfg.test_stride <= cfg.test_crop:
        raise ValueError(f"test_stride={cfg.test_stride} must be in 1..test_crop ({cfg.test_crop})")
    if cfg.rehearsal:
        rehearsal.reference_world(cfg.preset)  # the preset names its world
        if cfg.engine == "mmseg":
            raise ValueError("rehearsal runs the native engine (engine=native)")
    if cfg.engine == "mmseg":
        segmentation_mmseg.check_engine(cfg)


def open_dataset(name: str, data_root: str, split: str) -> Dataset:
    """The train (VOC: train + aug) or val split; images as uint8 CHW tensors, labels uint8 (H, W) class indices."""
    if name == "voc12aug":
        return VOCAugSegmentation(Path(data_root) / "VOCdevkit", "trainaug" if split == "train" else split,
                                  image_format="tensor")
    return Cityscapes(Path(data_root) / "cityscapes", split, image_format="tensor")


# ---------------------------------------------------------------- training pieces


class TrainStream(Dataset):
    """Item ``k`` = this process's ``k``-th training sample, augmented: the sampler is ``range(start, end)``.

    Global sample ``g = k * world + rank`` is image ``perm_p[g mod n]`` of pass ``p = g // n`` (a seeded
    permutation per pass, as a distributed sampler shards it), augmented with ``rng_for(seed, "augment", g)``.
    Everything is a function of ``g``: resuming, worker counts and process counts do not change the draws.
    """

    def __init__(self, dataset: Dataset, cfg: SegmentationConfig, rank: int, world: int) -> None:
        self.dataset, self.cfg, self.rank, self.world = dataset, cfg, rank, world
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.cfg.max_iters * self.cfg.batch_size_per_device

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        g, n = k * self.world + self.rank, len(self.dataset)
        if self._perm is None or self._perm[0] != g // n:
            self._perm = (g // n, rng_for(self.cfg.seed, "shuffle", g // n).permutation(n))
        image, label = self.dataset[int(self._perm[1][g % n])]
        return train_transform(image, torch.from_numpy(label), rng_for(self.cfg.seed, "augment", g), self.cfg)


def crop_box(h: int, w: int, crop: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """mmseg ``RandomCrop.get_crop_bbox``: a uniformly placed window (clipped to the image when it is smaller)."""
    y = int(rng.integers(0, max(h - crop, 0) + 1))
    x = int(rng.integers(0, max(w - crop, 0) + 1))
    return y, min(y + crop, h), x, min(x + crop, w)


def cat_max_crop(label: torch.Tensor, crop: int, cat_max_ratio: float,
                 rng: np.random.Generator) -> tuple[int, int, int, int]:
    """mmseg ``RandomCrop`` with ``cat_max_ratio``: redraw (up to 10 times) while the crop holds < 2 classes or one
    class (255 aside) covers >= ``cat_max_ratio`` of its labelled pixels; the 11th draw is kept unchecked."""
    h, w = label.shape
    box = crop_box(h, w, crop, rng)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            y1, y2, x1, x2 = box
            counts = torch.bincount(label[y1:y2, x1:x2].flatten().long(), minlength=256)[:IGNORE_INDEX]
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = crop_box(h, w, crop, rng)
    return box


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """RGB (0..255) -> H in degrees [0, 360), S in [0, 1], V in [0, 255] (OpenCV's formulas, in float)."""
    r, g, b = rgb
    v, _ = rgb.max(0)
    delta = v - rgb.min(0).values
    s = torch.where(v > 0, delta / v.clamp(min=1e-12), torch.zeros_like(v))
    safe = delta.clamp(min=1e-12)
    h = torch.where(v == r, 60 * (g - b) / safe, torch.where(v == g, 120 + 60 * (b - r) / safe,
                                                               240 + 60 * (r - g) / safe))
    h = torch.where(delta > 0, h % 360, torch.zeros_like(h))
    return torch.stack([h, s, v])


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv
    k = torch.stack([(5 + h / 60) % 6, (3 + h / 60) % 6, (1 + h / 60) % 6])
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def photometric_distortion(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """mmseg ``PhotoMetricDistortion`` with its defaults on a float CHW 0..255 image; each step clips and rounds
    down to uint8 values, as ``convert`` does (``astype(np.uint8)``)."""
    def convert(x: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
        return (x * alpha + beta).clamp(0, 255).floor()

    image = image.clamp(0, 255).floor()
    if rng.integers(2):
        image = convert(image, beta=float(rng.uniform(-32, 32)))
    contrast_first = bool(rng.integers(2))  # mmseg: mode 1 = contrast before the HSV steps, mode 0 after them
    if contrast_first and rng.integers(2):
        image = convert(image, alpha=float(rng.uniform(0.5, 1.5)))
    if rng.integers(2):
        hsv = _rgb_to_hsv(image)
        hsv[1] = (hsv[1] * float(rng.uniform(0.5, 1.5))).clamp(0, 1)
        image = _hsv_to_rgb(hsv).round().clamp(0, 255)
    if rng.integers(2):
        hsv = _rgb_to_hsv(image)
        hsv[0] = (hsv[0] + 2 * int(rng.integers(-18, 18))) % 360  # OpenCV hue unit = 2 degrees
        image = _hsv_to_rgb(hsv).round().clamp(0, 255)
    if not contrast_first and rng.integers(2):
        image = convert(image, alpha=float(rng.uniform(0.5, 1.5)))
    return image


def train_transform(image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator,
                    cfg: SegmentationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The train pipeline (module docstring): uint8 CHW image, uint8 label -> normalised padded float, int64 label."""
    ratio = float(rng.uniform(*cfg.ratio_range))
    # mmseg Resize(ratio_range) / RandomResize: the target scale is truncated to ints before rescaling
    size = rescale_size(image.shape[2], image.shape[1], (int(cfg.scale[0] * ratio), int(cfg.scale[1] * ratio)))
    image, label = resize(image, label, size)
    y1, y2, x1, x2 = cat_max_crop(label, cfg.crop_size, cfg.cat_max_ratio, rng)
    image, label = image[:, y1:y2, x1:x2], label[y1:y2, x1:x2]
    if rng.random() < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    image = (photometric_distortion(image, rng) - MEAN) / STD
    pad_h, pad_w = cfg.crop_size - image.shape[1], cfg.crop_size - image.shape[2]
    image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
    label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
    return image.contiguous(), label.long()


# ---------------------------------------------------------------- evaluation


def predict_val(model: FCN, val_set: Dataset, indices: list[int], cfg: SegmentationConfig, out: Path,
                precision: str, device: torch.device) -> None:
    """Write the val predictions of ``indices`` (this process's share) as PNGs in ``out``."""
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(_Indexed(val_set, indices), batch_size=None, num_workers=cfg.num_workers)
    progress = Progress(len(indices), f"{PROTOCOL} {cfg.dataset} val", unit="img")
    for index, image in loader:
        pred = predict(model, image, cfg, precision).numpy()
        save_prediction(pred, cfg.dataset, out / prediction_name(val_set, index))
        progress.update()
    progress.close()
    model.train()


class _Indexed(Dataset):
    """``(index, image)`` for the given val indices (decoding in the workers; labels are read when scoring)."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return self.indices[i], self.dataset[self.indices[i]][0]


def main() -> None:
    run(parse_args(SegmentationConfig, preset_dir=PRESET_DIR, description=__doc__))
