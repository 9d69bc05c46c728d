"""Mask R-CNN R50-FPN 1x on COCO 2017: box and mask AP (mmselfsup's mmdetection benchmark
``mask_rcnn_r50_fpn_mstrain_1x_coco``; PROTOCOLS.md A.6, B §5.3).

Canonical command::

    torchrun --nproc-per-node 8 -m benchmarks.det_coco --preset mask-rcnn_resnet50-fpn_8xb2-ms-1x_coco \\
        --ckpt byol.pth --data-root /datasets

    python -m benchmarks.det_coco --preset mask-rcnn_resnet50-fpn_8xb2-ms-1x_coco --ckpt byol.pth --data-root ...
    (one GPU: the global batch of 16 by 8-fold gradient accumulation; small_world=scale scales lr and length instead)

Fixed protocol (B §5.3):
  * model: :func:`benchmarks.detection.mask_rcnn.build_mask_rcnn` (its docstring lists every setting): the
    checkpoint's ResNet via ``adapters.load_backbone`` with nothing frozen and BN training, FPN 256 with norms,
    RPN (anchors 8 x strides 4-64, 2000->1000 proposals in training, 1000->1000 at test), aligned RoIAlign 7/14,
    the 4conv1fc box head and the 4-conv mask head with norms (SyncBN in a multi-GPU job), 512 RoIs 25 % positive,
    L1 box losses, binary 28x28 mask targets; test score 0.05, NMS 0.5, 100 per image, mask threshold 0.5;
  * data: ``train2017`` (images without annotations skipped; crowds and sub-pixel boxes left out of the targets)
    in aspect-ratio groups, keep-ratio resize to (1333, s), s from 640..800 step 32 per image, flip 0.5; RGB with
    the mmdet mean/std; test on ``val2017`` at (1333, 800);
  * schedule (``schedule_1x``): SGD lr 0.02 at batch 16 (2 per GPU x 8), momentum 0.9, weight decay 1e-4 on every
    parameter (no paramwise rule: norms decay too), linear warm-up over 1000 iterations from 0.001, 12 epochs with
    the lr x0.1 after epochs 8 and 11 (epochs counted as ``ceil(train images / 16)`` iterations), no grad clipping;
  * metric: pycocotools ``COCOeval`` (bbox and segm) on ``val2017`` with crowds ignored, from the plain COCO results
    files next to the record, ``<record stem>.bbox.json`` / ``<record stem>.segm.json`` (what ``COCO.loadRes`` opens
    as they are): AP (IoU .50:.95), AP50, AP75 (%); APs/APm/APl in the record's details.

NOTE: the trainer is iteration-based (``benchmarks.detection.trainer``, shared with ``det_voc``): an "epoch" is
``ceil(N / 16)`` iterations of one infinite aspect-ratio-grouped stream, not mmdet's per-epoch re-shuffled sampler.
NOTE: fewer than 16 images per step over all devices keep the global batch of 16 by gradient accumulation
(``small_world=accumulate``, default; BatchNorm then sees each micro-batch only) or run at ``batch_size_per_device x
processes`` with lr, iterations, steps and warm-up scaled linearly (``small_world=scale``, as ``det_voc``); the
record's ``details.batch_policy`` says which ran, and ``details.norm`` which BatchNorm.
NOTE: under bf16 autocast (GPU) the box predictor runs in float32 (``rcnn.Float32``, as ``det_voc``).
NOTE: torchvision's blocks differ from mmdet in a few places the config does not reach (listed in
``benchmarks/detection/mask_rcnn.py`` and docs/DETECTION.md): RPN low-quality matches without mmdet's 0.3 floor, the
test-time mask paste on integer boxes, antialiased float resize instead of cv2's.
NOTE: ``engine=detectron2`` (``benchmarks/detection/detectron2_coco.py``) trains detectron2's Mask R-CNN FPN on a config
generated from the preset (run as one process: detectron2 launches one per GPU); its results files are scored here.
NOTE: ``fpn_channels``, ``fc_channels`` and ``rois_per_image`` exist for the tiny preset only (CPU time): every
full-size run uses the config's 256 / 1024 / 512.
NOTE: ``rehearsal=true`` (byol_bench.rehearsal; native engine only) runs one process of the preset's world (8xb2:
2 images per iteration, no accumulation) for two iterations of the schedule as written (warm-up, and the steps of
the real train2017's epochs: the first two learning rates of the real run), then predicts the first 8 val2017
images at a score threshold of 0 (a two-iteration model scores its boxes under 0.05; 100 detections and masks per
image, as a trained model keeps, give the mask paste, the results files and COCOeval a real run's load): the
results files hold those images only, and COCOeval scores those image ids.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from adapters import load_backbone
from benchmarks.detection import detectron2_coco, detectron2_engine, trainer
from benchmarks.detection.coco_eval import evaluate_files, to_coco_results, write_results
from benchmarks.detection.data import orientation_groups
from benchmarks.detection.mask_rcnn import build_mask_rcnn
from byol_bench import dist, preflight, rehearsal, training
from byol_bench.config import CONFIG_ROOT, opt, parse_args
from byol_bench.datasets.coco import COCODetection
from byol_bench.runner_config import IterTrainerConfig
from byol_bench.scaffold import open_run

PROTOCOL, DATASET = "det_coco", "coco"
PRESET_DIR = CONFIG_ROOT / PROTOCOL


@dataclass(frozen=True)
class DetCocoConfig(IterTrainerConfig, protocol=PROTOCOL):
    """Mask R-CNN R50-FPN 1x settings (defaults = mmselfsup's mmdetection config)."""

    epochs: int = opt(12, "training length in epochs of ceil(train images / global batch) iterations", positive=True)
    step_epochs: tuple[int, ...] = opt((8, 11), "epochs after which the lr is multiplied by 0.1")
    lr: float = opt(0.02, "SGD learning rate at the global batch (0.02 at 16)", positive=True)
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(1e-4, "SGD weight decay of conv/linear parameters")
    weight_decay_norm: float = opt(1e-4, "weight decay of norm parameters (mmdet: the same as the others)")
    warmup_iters: int = opt(1000, "linear warm-up iterations")
    warmup_factor: float = opt(0.001, "lr factor at the first warm-up iteration")
    global_batch_size: int = opt(16, "images per optimizer step over all processes (the recipe's 8 GPUs x 2)",
                                 positive=True)
    batch_size_per_device: int = opt(2, "images per process per forward pass", positive=True)
    small_world: Literal["accumulate", "scale"] = opt(
        "accumulate", "when batch_size_per_device x processes < global_batch_size: accumulate gradients to keep "
        "the global batch, or scale = run at the smaller batch with lr, iterations and warm-up scaled (A.6)")
    train_min_sizes: tuple[int, ...] = opt((640, 672, 704, 736, 768, 800), "train short sides (one drawn per image)",
                                           positive=True)
    test_min_size: int = opt(800, "test short side", positive=True)
    max_size: int = opt(1333, "longest side (train and test)", positive=True)
    flip_prob: float = opt(0.5, "horizontal-flip probability in training")
    fpn_channels: int = opt(256, "FPN and head conv width (256; tiny presets only change it)", positive=True)
    fc_channels: int = opt(1024, "box head FC width (1024; tiny presets only change it)", positive=True)
    rois_per_image: int = opt(512, "RoIs sampled per image for the box head (512; tiny presets only change it)",
                              positive=True)
    seed: int = opt(0, "seed of the head initialisation, the data stream and every random draw in training")
    engine: Literal["native", "detectron2"] = opt(
        "native", "native = torchvision blocks on benchmarks.detection (CI, demo); detectron2 = detectron2's Mask "
        "R-CNN FPN on a generated config (needs detectron2 installed; run as one process)")


@dataclass(frozen=True)
class Resolved(trainer.DetectionResolved):
    """The batch, lr and schedule as run (the recipe's global batch of 16 unless small_world=scale), and the
    epoch length they come from; written as the run folder's ``resolved.json``."""

    iters_per_epoch: int


def run(cfg: DetCocoConfig) -> dict[str, float]:
    """Fine-tune Mask R-CNN from ``cfg.ckpt`` on COCO train2017, score val2017; write the record; return its metrics."""
    check_inputs(cfg)
    with open_run(PROTOCOL, DATASET, cfg, ckpt=cfg.ckpt) as run:
        if run.done is not None:
            return run.done
        info, device = run.info, run.info.device

        # ------------------------------------------------------------ data
        train_set = coco_split(cfg.data_root, "train", training=True)
        val_set = coco_split(cfg.data_root, "val", training=False)
        groups = image_groups(train_set)
        # a rehearsal is one process of the preset's world (its batch policy) for two iterations of the real
        # train2017's schedule, scoring the first val images
        world = rehearsal.reference_world(cfg.preset) if cfg.rehearsal else info.world_size
        resolved = resolve(cfg, world, rehearsal.REAL_SPLIT_IMAGES["coco/train2017"] if cfg.rehearsal
                           else len(train_set), device)
        full_steps = resolved.max_iters
        if cfg.rehearsal:
            resolved = dataclasses.replace(resolved, world_size=info.world_size, max_iters=rehearsal.STEPS)
            val_set = first_images(val_set, rehearsal.EVAL_IMAGES)
        data_check = preflight.check({"train": train_set, "val": val_set}, cfg.preflight, PROTOCOL)
        log = run.start(resolved)

        # ------------------------------------------------------------ model (backbone from the checkpoint)
        backbone, report = load_backbone(cfg.ckpt, cfg.arch, cfg.encoder, sha256=run.ckpt_sha256)
        clock = rehearsal.Clock(device, enabled=cfg.rehearsal)
        if cfg.engine == "detectron2":  # detectron2 trains and predicts; its results files are scored below
            engine = _detectron2_train_and_predict(cfg, backbone, report.arch, run, len(train_set),
                                                   len(train_set.category_ids))
            metrics, scores = score_files(val_set, run.record_path)
        else:
            torch.manual_seed(cfg.seed)  # the FPN and head initialisation
            model = trainer.prepare(build_model(backbone, len(train_set.category_ids), cfg), device)

            # -------------------------------------------------------- train (resume=auto continues latest.pth)
            settings = trainer.TrainSettings(
                max_iters=resolved.max_iters, base_lr=resolved.lr, steps=resolved.steps,
                warmup_iters=resolved.warmup_iters,
                warmup_factor=cfg.warmup_factor, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                weight_decay_norm=cfg.weight_decay_norm, batch_size_per_device=resolved.batch_size_per_device,
                accumulate=resolved.accumulate, flip_prob=cfg.flip_prob, seed=cfg.seed,
                precision=resolved.precision, ckpt_every_iters=cfg.ckpt_every_iters,
                stop_after_iters=cfg.stop_after_iters, num_workers=cfg.num_workers)
            result = trainer.train(model, train_set, groups, settings, device=device, run_dir=run.run_dir,
                                   config_hash=run.config_hash, log=log,
                                   resume_from=training.resume_point(run.run_dir, cfg), desc=PROTOCOL,
                                   plot_title=run.plot_title("COCO Mask R-CNN FPN training"), clock=clock)
            if not result.finished:
                print(f"{PROTOCOL}: stopped after iteration {result.iters_done} (stop_after_iters); rerun to resume")
                return {}

            # -------------------------------------------------------- predict val2017, write results files, score
            if cfg.rehearsal:  # two iterations score under 0.05: keep 100 per image, as trained models do
                model.roi_heads.score_thresh = 0.0
            with clock.evaluating(len(range(info.rank, len(val_set), info.world_size))):
                metrics, scores = predict_and_score(model, val_set, run.record_path, device, resolved.precision,
                                                    cfg.num_workers)
            engine = {"norm": trainer.norm_name(model), "train_time_s": round(result.train_time_s, 2),
                      "last_losses": result.last_losses,
                      "loss_plot": str(result.loss_plot) if result.loss_plot else None}
        details = {
            **{f"{t}_{k}": scores[t][k] for t in ("bbox", "segm") for k in ("APs", "APm", "APl")},
            "coco_eval": scores, "results_files": {t: scores[t]["results_file"] for t in ("bbox", "segm")},
            "train_images": len(train_set), "val_images": len(val_set),
            "train_images_skipped_empty": train_set.num_skipped_empty,
            "train_annotations_dropped": dict(train_set.num_dropped),
            "iters": resolved.max_iters, "iters_per_epoch": resolved.iters_per_epoch, "lr_steps": resolved.steps,
            "global_batch_size": resolved.global_batch_size, "accumulate": resolved.accumulate,
            "batch_policy": resolved.batch_policy, "lr": resolved.lr, "world_size": info.world_size,
            "precision": resolved.precision, "encoder_evaluated": cfg.encoder, "engine": cfg.engine, **engine,
        }
        if cfg.rehearsal:  # the real run: its iterations over train2017, one evaluation of its share of val2017
            details["rehearsal"] = clock.summary(
                images_per_step=resolved.batch_size_per_device * resolved.accumulate, reference_world=world,
                full_steps=full_steps,
                full_eval_images=math.ceil(rehearsal.REAL_SPLIT_IMAGES["coco/val2017"] / world))
        details["preflight"] = data_check
        metrics = run.finish(metrics, checkpoint=asdict(report), seeds={"train": cfg.seed},
                             batch_size_per_device=resolved.batch_size_per_device, details=details)
        if info.is_main:
            print(f"{PROTOCOL}: box AP {metrics['bbox_AP']:.2f}, mask AP {metrics['segm_AP']:.2f}; "
                  f"record {run.record_path}")
        return metrics


def check_inputs(cfg: DetCocoConfig) -> None:
    """One-line errors for a bad config, before anything is written."""
    if not cfg.ckpt:
        raise ValueError("no checkpoint given: pass --ckpt PATH")
    if cfg.global_batch_size % cfg.batch_size_per_device:
        raise ValueError(f"global_batch_size={cfg.global_batch_size} is not a multiple of "
                         f"batch_size_per_device={cfg.batch_size_per_device}")
    if any(not 0 < e <= cfg.epochs for e in cfg.step_epochs):
        raise ValueError(f"step_epochs={list(cfg.step_epochs)} must lie in 1..epochs={cfg.epochs}")
    if not cfg.train_min_sizes:
        raise ValueError("train_min_sizes must list at least one short side")
    if cfg.engine == "detectron2":
        if cfg.rehearsal:
            raise ValueError("rehearsal runs the native engine: drop engine=detectron2 (or rehearsal=true)")
        detectron2_engine.check_engine(cfg)


def resolve(cfg: DetCocoConfig, world_size: int, train_images: int, device: torch.device) -> Resolved:
    """Batch, lr and schedule for this process count (see the NOTE on small worlds in the module docstring)."""
    accumulate, batch, policy = trainer.batch_policy(cfg, world_size)
    factor = cfg.global_batch_size / batch  # > 1 when scaled: a lower lr, more (and longer warm-up) iterations
    iters_per_epoch = math.ceil(train_images / batch)
    return Resolved(world_size=world_size, batch_size_per_device=cfg.batch_size_per_device, global_batch_size=batch,
                    precision=training.resolve_precision(cfg.precision, device), device=str(device),
                    accumulate=accumulate, batch_policy=policy, lr=cfg.lr / factor,
                    max_iters=cfg.epochs * iters_per_epoch, steps=tuple(e * iters_per_epoch for e in cfg.step_epochs),
                    warmup_iters=round(cfg.warmup_iters * factor), iters_per_epoch=iters_per_epoch)


def coco_split(data_root: str, split: str, training: bool) -> COCODetection:
    """COCO 2017 ``split`` as the trainer's samples: ``(uint8 (3, H, W) image, target)`` with boxes, labels 1..K
    (0 is the background) and, for training, masks; crowds and degenerate annotations left out of training targets
    (``COCODetection(training=True)``)."""
    return COCODetection(f"{data_root}/coco", split, transform=_to_torchvision, with_masks=training,
                         filter_empty=training, image_format="tensor", training=training)


def first_images(dataset: COCODetection, count: int) -> COCODetection:
    """A copy of ``dataset`` holding its first ``count`` images (image-id order): a rehearsal's val2017, which
    predicts, writes and scores (``COCOeval`` image ids) those images only.

    Raises:
        ValueError: the split holds fewer.
    """
    if len(dataset) < count:
        raise ValueError(f"{dataset.ann_file}: {len(dataset)} images, a rehearsal needs {count}; generate the "
                         "real-size data (scripts/make_tiny_data.py --real-size)")
    cut = copy.copy(dataset)
    cut.image_ids = dataset.image_ids[:count]
    return cut


def _to_torchvision(image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    out = {"image_id": target["image_id"], "boxes": torch.from_numpy(target["boxes"]),
           "labels": torch.from_numpy(target["labels"]) + 1}
    if "masks" in target:
        out["masks"] = torch.from_numpy(target["masks"])
    return image, out


def image_groups(dataset: COCODetection) -> list[int]:
    """Aspect-ratio group of every image, from the annotation file's sizes (no decoding)."""
    infos = [dataset.coco.imgs[i] for i in dataset.image_ids]
    return orientation_groups([(im["width"], im["height"]) for im in infos])


def build_model(backbone: torch.nn.Module, num_classes: int, cfg: DetCocoConfig) -> torch.nn.Module:
    """The config's Mask R-CNN around ``backbone`` (sizes from ``cfg``)."""
    return build_mask_rcnn(backbone, num_classes, train_min_sizes=tuple(cfg.train_min_sizes),
                           test_min_size=cfg.test_min_size, max_size=cfg.max_size, fpn_channels=cfg.fpn_channels,
                           fc_channels=cfg.fc_channels, rois_per_image=cfg.rois_per_image)


def predict_and_score(model: torch.nn.Module, dataset: COCODetection, record_path: Any, device: torch.device,
                      precision: str, num_workers: int,
                      ) -> tuple[dict[str, float], dict[str, Any]]:
    """Detections on every image of ``dataset`` -> ``<record stem>.{bbox,segm}.json`` (rank 0) -> COCOeval on
    those files (rank 0; the scores reach every rank)."""
    category_ids = dataset.category_ids
    per_image = trainer.predict(model, dataset, device=device, precision=precision, num_workers=num_workers,
                                convert=lambda det, target: to_coco_results(target["image_id"], det, category_ids),
                                desc=f"{PROTOCOL} predict")
    if dist.is_main():
        for k, path in enumerate(results_files(record_path).values()):
            write_results(path, [r for image in per_image for r in image[k]])
    return score_files(dataset, record_path)


def results_files(record_path: Path) -> dict[str, Path]:
    """The COCO results files of a record, plain JSON lists next to it (mmdet's ``<outfile_prefix>.bbox.json``
    naming): ``<record stem>.bbox.json`` and ``<record stem>.segm.json``. The records loader reads JSON objects
    only, so these lists never count as records."""
    return {iou_type: record_path.with_suffix(f".{iou_type}.json") for iou_type in ("bbox", "segm")}


def score_files(dataset: COCODetection, record_path: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """COCOeval (rank 0) on the record's results files; the scores reach every rank."""
    scored: list[Any] = [None]
    if dist.is_main():
        scored = [evaluate_files(dataset.coco, results_files(record_path), image_ids=dataset.image_ids)]
    metrics, scores = dist.all_gather_objects(scored)[0][0]
    return metrics, scores


def _detectron2_train_and_predict(cfg: DetCocoConfig, backbone: torch.nn.Module, arch: str, run: Any,
                                  train_images: int, num_classes: int) -> dict[str, Any]:
    """detectron2 (``benchmarks/detection/detectron2_coco.py``): export, config, train_net; the results files land next
    to the record (:func:`results_files`). Returns the record fields besides the scores."""
    return detectron2_engine.train_on_detectron2(
        backbone, run.run_dir,
        lambda weights, gpus: detectron2_coco.config_values(cfg, arch, weights, run.run_dir / "output", gpus,
                                                                 num_classes, train_images),
        "benchmarks.detection.detectron2_coco",
        ["--data-root", str(Path(cfg.data_root).resolve()),
         *(arg for iou_type, path in results_files(run.record_path).items()
           for arg in (f"--{iou_type}-file", str(path.resolve())))], {},
        resume=detectron2_engine.resume_point(run.run_dir / "output", cfg))


def main() -> None:
    run(parse_args(DetCocoConfig, preset_dir=PRESET_DIR, description=__doc__))
