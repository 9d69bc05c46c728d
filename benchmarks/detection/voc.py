"""Faster R-CNN R50-C4 on VOC07+12 (the MoCo detection protocol; detectron2 ``pascal_voc_R_50_C4_24k_moco.yaml``;
PROTOCOLS.md A.6, B §5.1-5.2).

Canonical command (8 GPUs, batch 2 each; MoCo reports the mean of 5 trials)::

    torchrun --nproc-per-node 8 -m benchmarks.det_voc --preset faster-rcnn_resnet50-c4_8xb2-24k_voc0712 \\
        --ckpt byol.pth --data-root /datasets trials=5

    python -m benchmarks.det_voc --preset faster-rcnn_resnet50-c4_8xb2-24k_voc0712 --ckpt byol.pth \\
        --data-root /datasets batch_size_per_device=16     (one large GPU: the same 16 images per step and BN batch)

Fixed protocol (B §5.1), built from torchvision's detection blocks (``GeneralizedRCNN``, RPN, ``RoIHeads``) with
detectron2's arithmetic (``benchmarks.detection.rcnn``):
  * backbone: any checkpoint via ``adapters.load_backbone``; C4 trunk = stem..res4 (torchvision stride on the 3x3
    conv, nothing frozen, stem included); res5 (the checkpoint's ``layer4``, stride 2) inside the RoI head, then
    the extra norm of ``Res5ROIHeadsExtraNorm`` on its output, average pooling, the box predictor (21 classes,
    class-specific boxes, N(0, 0.01) / N(0, 0.001) weights); SyncBN everywhere in a multi-GPU job;
  * RPN on res4: anchors 32..512 x {0.5, 1, 2} (unrounded, stride 16), 3x3 conv head, top-k 12000/2000 (train) and
    6000/1000 (test) per image, NMS 0.7, 256 anchors/image at 50 % positives, L1 box loss;
  * RoI head: ``RoIAlign(14, 1/16, sampling 0, aligned=True)`` (ROIAlignV2), 512 RoIs/image at 25 % positives
    (IoU 0.5), box weights (10, 10, 5, 5), L1 box loss; test: score 0.05, NMS 0.5, 100 detections/image;
  * input: RGB in [0, 1] normalised with the ImageNet mean/std (the ``_moco`` pixel statistics); train short side
    drawn from 480..800 (step 32), long side <= 1333, horizontal flip; test 800/1333; no padding to a multiple;
  * data: VOC2007 trainval + VOC2012 trainval ("difficult" boxes kept, images without objects skipped), test
    VOC2007 test; aspect-ratio grouped batches;
  * SGD lr 0.02 at batch 16, momentum 0.9, wd 1e-4 (none on norm parameters), 24k iterations, lr x0.1 at 18k and
    22k, linear warm-up 100 iterations from 0.001x; precise BN (200 iterations) before the final evaluation;
  * metric: detectron2's ``PascalVOCDetectionEvaluator`` (``benchmarks.detection.voc_eval``) on the
    ``comp4_det_test_<class>.txt`` files written next to the record: VOC07 11-point AP at IoU .50:.05:.95,
    difficult boxes ignored; AP, AP50, AP75 (%); with ``trials=N`` the mean over N seeds (each trial in details).

NOTE: fewer than 16 images per step over all devices (``batch_size_per_device x world``): ``small_world=accumulate``
(default) keeps batch 16 and the schedule by gradient accumulation, but BatchNorm then sees each micro-batch only;
``small_world=scale`` scales lr, iterations, steps and warm-up linearly (detectron2's ``auto_scale_workers``).
The record's ``details.batch_policy`` says which ran, and ``details.norm`` which BatchNorm.
NOTE: torchvision's stock pieces are changed where they differ from detectron2 (unrounded anchors, L1 losses with
detectron2's normalisers, aligned RoIAlign, ``int(x + 0.5)`` resize rounding); torchvision still appends the ground
truth boxes to the proposals and samples RoIs as detectron2 does.
NOTE: under bf16 autocast (GPU) the box predictor and the RPN's 1x1 outputs run in float32, and anchors and RoI
boxes stay float32 (bf16 coordinates near 1000 px have 4-8 px steps).
NOTE: ``rehearsal=true`` (byol_bench.rehearsal; native engine only) runs one process of the preset's world (8xb2:
2 images per iteration, no accumulation) for two iterations of the schedule as written (warm-up and steps, so the
first two learning rates of the real run), one trial, at most two precise-BN iterations, and scores the first 8
VOC2007 test images at a score threshold of 0 (a two-iteration model scores its boxes under 0.05; 100 detections per
image, as a trained model keeps, give the results files and the evaluation a real run's load).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.utils.data import ConcatDataset

from adapters import load_backbone
from benchmarks.detection import c4, data, detectron2_engine, detectron2_voc, trainer, voc_eval
from byol_bench import dist, preflight, rehearsal, training
from byol_bench.checkpoint import atomic_write_json
from byol_bench.config import CONFIG_ROOT, opt, parse_args
from byol_bench.datasets.voc_det import VOCDetection, detection_sample
from byol_bench.runlog import RunLog
from byol_bench.runner_config import IterTrainerConfig
from byol_bench.scaffold import open_run

PROTOCOL, DATASET = "det_voc", "voc0712"
PRESET_DIR = CONFIG_ROOT / PROTOCOL
TRAIN_SETS = (("2007", "trainval"), ("2012", "trainval"))
TEST_SET = ("2007", "test")


@dataclass(frozen=True)
class DetVocConfig(IterTrainerConfig, protocol=PROTOCOL):
    """Faster R-CNN C4 on VOC07+12 (defaults = detectron2's ``pascal_voc_R_50_C4_24k_moco``)."""

    engine: Literal["native", "detectron2"] = opt(
        "native", "native = torchvision blocks on benchmarks.detection (CI, demo); detectron2 = MoCo's train_net on "
        "a generated config (needs detectron2 installed; ResNet-50 and deeper; run as one process)")
    max_iters: int = opt(24000, "optimizer steps at global_batch_size", positive=True)
    steps: tuple[int, ...] = opt((18000, 22000), "iterations at which the lr is multiplied by 0.1")
    warmup_iters: int = opt(100, "linear warm-up iterations (from 0.001 x lr)")
    lr: float = opt(0.02, "SGD learning rate at global_batch_size", positive=True)
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(1e-4, "SGD weight decay (norm-layer parameters get none)")
    global_batch_size: int = opt(16, "images per optimizer step over all processes (see small_world)", positive=True)
    batch_size_per_device: int = opt(2, "images per process per forward pass (16 on one large GPU: BN sees the "
                                        "recipe's 16 images)", positive=True)
    small_world: Literal["accumulate", "scale"] = opt(
        "accumulate", "when batch_size_per_device x processes < global_batch_size: accumulate gradients to keep "
        "the recipe, or scale lr/iterations linearly to the smaller batch")
    train_sizes: tuple[int, ...] = opt(tuple(range(480, 801, 32)), "train short sides (one drawn per image)",
                                       positive=True)
    train_max_size: int = opt(1333, "train long-side limit", positive=True)
    test_size: int = opt(800, "test short side", positive=True)
    test_max_size: int = opt(1333, "test long-side limit", positive=True)
    rpn_topk_train: tuple[int, int] = opt((12000, 2000), "RPN proposals per image before / after NMS (train)",
                                          positive=True)
    rpn_topk_test: tuple[int, int] = opt((6000, 1000), "RPN proposals per image before / after NMS (test)",
                                         positive=True)
    roi_batch_size_per_image: int = opt(512, "RoIs sampled per image for the box head (25 % positives)", positive=True)
    test_images: int = opt(0, "score the first N images of VOC2007 test only (0: all 4952; tiny runs)")
    precise_bn_iters: int = opt(200, "precise-BN iterations before the final evaluation (0: off)")
    trials: int = opt(1, "independent trainings with seeds seed, seed+1, ...: the record has each and mean +- std "
                         "(MoCo reports the mean of 5)", positive=True)
    seed: int = opt(0, "seed of the first trial (head initialisation, data order, flips, scales, sampling)")
    test_batch_size_per_device: int = opt(1, "test images per forward pass (detectron2: 1)", identity=False,
                                          positive=True)


Resolved = trainer.DetectionResolved  # the batch, lr and schedule as run (small_world: the module docstring)


def run(cfg: DetVocConfig) -> dict[str, float]:
    """Train and evaluate ``cfg.trials`` C4 detectors initialised from ``cfg.ckpt``; write the record."""
    check_inputs(cfg)
    with open_run(PROTOCOL, DATASET, cfg, ckpt=cfg.ckpt) as run:
        if run.done is not None:
            return run.done
        info, device = run.info, run.info.device
        # a rehearsal is one process of the preset's world (its batch policy), two iterations, one trial
        world = rehearsal.reference_world(cfg.preset) if cfg.rehearsal else info.world_size
        resolved = resolve(cfg, world, training.resolve_precision(cfg.precision, device), str(device))
        full_steps = resolved.max_iters * cfg.trials
        if cfg.rehearsal:  # the schedule as written (warm-up, steps): its first STEPS learning rates
            resolved = dataclasses.replace(resolved, world_size=info.world_size, max_iters=rehearsal.STEPS)
        num_trials = 1 if cfg.rehearsal else cfg.trials
        run.start(resolved)

        # ------------------------------------------------------------ data (decoded in the workers, flipped there)
        devkit = Path(cfg.data_root) / "VOCdevkit"
        parts = [VOCDetection(devkit, year, split, detection_sample, image_format="tensor")
                 for year, split in TRAIN_SETS]
        train_set = ConcatDataset(parts)
        groups = data.orientation_groups([(a.width, a.height) for p in parts for a in p.annotations])
        test_set = VOCDetection(devkit, *TEST_SET, detection_sample, filter_empty=False, image_format="tensor",
                                first=rehearsal.EVAL_IMAGES if cfg.rehearsal else cfg.test_images or None)
        data_check = preflight.check({"train": train_set, "test": test_set}, cfg.preflight, PROTOCOL)

        # ------------------------------------------------------------ backbone weights (res5 = the checkpoint's layer4)
        backbone, report = load_backbone(cfg.ckpt, cfg.arch, cfg.encoder, sha256=run.ckpt_sha256)

        # ------------------------------------------------------------ trials: train -> precise BN -> predict -> score
        trials = []
        results_root = run.record_path.with_suffix(".results")
        clock = rehearsal.Clock(device, enabled=cfg.rehearsal)
        for trial in range(num_trials):
            seed, trial_dir = cfg.seed + trial, run.run_dir / f"trial{trial}"
            # the resume rule, per trial: resume=auto continues the trial's latest.pth, --force trains it afresh,
            # resume=none refuses a trial folder that holds one
            resume_from = training.resume_point(trial_dir, cfg)
            scores_file = trial_dir / "scores.json"
            if scores_file.is_file() and not cfg.force:  # finished in an earlier invocation (--force: trained again)
                trials.append(json.loads(scores_file.read_text()))
                continue
            results_dir = results_root / f"trial{trial}"
            if cfg.engine == "detectron2":  # detectron2 trains, predicts and writes the results files
                entry = _detectron2_trial(cfg, backbone, report.arch, trial_dir, results_dir, seed)
            else:
                torch.manual_seed(seed)  # the heads' initialisation
                model = trainer.prepare(c4.build_faster_rcnn_c4(copy.deepcopy(backbone), cfg), device)
                settings = train_settings(cfg, resolved, seed)
                # each trial logs into its own folder: a resume's drop_after_step must not touch other trials' rows
                result = trainer.train(model, train_set, groups, settings, device=device, run_dir=trial_dir,
                                       config_hash=run.config_hash, log=RunLog(trial_dir), resume_from=resume_from,
                                       desc=f"{PROTOCOL} trial {trial}", clock=clock,
                                       plot_title=run.plot_title(f"VOC07+12 Faster R-CNN C4 training, trial {trial}"))
                if not result.finished:
                    print(f"{PROTOCOL}: stopped after iteration {result.iters_done} (stop_after_iters); rerun to "
                          "resume")
                    return {}
                bn_layers = trainer.precise_bn(
                    model, train_set, groups, settings, device=device,
                    num_iters=min(cfg.precise_bn_iters, rehearsal.STEPS) if cfg.rehearsal else cfg.precise_bn_iters)
                if cfg.rehearsal:  # two iterations score under 0.05: keep 100 per image, as trained models do
                    model.roi_heads.score_thresh = 0.0
                with clock.evaluating(len(range(info.rank, len(test_set), info.world_size))):
                    detections = trainer.predict(model, test_set, device=device, precision=resolved.precision,
                                                 batch_size=cfg.test_batch_size_per_device,
                                                 num_workers=cfg.num_workers, desc=f"{PROTOCOL} test")
                    if info.is_main:
                        voc_eval.write_results(results_dir, [a.image_id for a in test_set.annotations], detections)
                entry = {"train_time_s": round(result.train_time_s, 2), "last_losses": result.last_losses,
                         "precise_bn_layers": bn_layers, "norm": trainer.norm_name(model),
                         "loss_plot": str(result.loss_plot) if result.loss_plot else None}
            dist.barrier()
            scores = voc_eval.evaluate(results_dir, test_set.annotations)  # from the files just written
            entry = {"trial": trial, "seed": seed, **scores.metrics(), "map_per_iou": scores.map_per_iou,
                     "ap50_per_class": scores.ap50_per_class,
                     "classes_without_ground_truth": scores.classes_without_ground_truth,
                     "results_dir": str(results_dir), **entry}
            if info.is_main:
                atomic_write_json(scores_file, entry)
            trials.append(entry)
            if info.is_main:
                print(f"{PROTOCOL} trial {trial}: AP {scores.AP:.2f} AP50 {scores.AP50:.2f} AP75 {scores.AP75:.2f}")

        # ------------------------------------------------------------ record: mean (and std) over the trials
        metrics, std = summarize_trials(trials)
        details = {
            "trials": trials, "num_trials": len(trials), "std": std,
            "std_kind": "sample standard deviation over trials (n - 1)",
            "norm": trials[-1]["norm"], "batch_policy": resolved.batch_policy,
            "global_batch_size": resolved.global_batch_size, "accumulate": resolved.accumulate,
            "world_size": info.world_size, "lr": resolved.lr, "max_iters": resolved.max_iters,
            "steps": list(resolved.steps), "warmup_iters": resolved.warmup_iters, "precision": resolved.precision,
            "train_images": len(train_set), "test_images": len(test_set),
            "skipped_empty_train_images": sum(p.num_skipped_empty for p in parts),
            "metric": "detectron2 PascalVOCDetectionEvaluator: VOC07 11-point AP, IoU .50:.05:.95, difficult ignored",
            "results_files": str(results_root), "engine": cfg.engine,
            "loss_plot": trials[0]["loss_plot"],
        }
        if cfg.rehearsal:  # every trial of the real run trains max_iters and scores its share of VOC2007 test
            test_images = cfg.test_images or rehearsal.REAL_SPLIT_IMAGES["voc07/test"]
            details["rehearsal"] = clock.summary(
                images_per_step=resolved.batch_size_per_device * resolved.accumulate, reference_world=world,
                full_steps=full_steps, full_eval_images=cfg.trials * math.ceil(test_images / world))
        if info.is_main:
            details["per_class_ap50_plot"] = str(training.plot_bars(
                trials[0]["ap50_per_class"], run.run_dir / "per_class_ap50.png",
                run.plot_title("VOC07 test AP50 per class, trial 0"), "AP50 (%)"))
        details["preflight"] = data_check
        metrics = run.finish(metrics, checkpoint=asdict(report), seeds={"trial0": cfg.seed},
                             batch_size_per_device=cfg.batch_size_per_device, details=details)
        if info.is_main:
            print(f"{PROTOCOL}: AP {metrics['AP']:.2f} AP50 {metrics['AP50']:.2f} AP75 {metrics['AP75']:.2f} "
                  f"({len(trials)} trial(s)); record {run.record_path}")
        return metrics


def summarize_trials(trials: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation (n - 1; 0 for one trial) of AP, AP50 and AP75 over the trials."""
    keys = ("AP", "AP50", "AP75")
    mean = {k: statistics.fmean(t[k] for t in trials) for k in keys}
    std = {k: statistics.stdev(t[k] for t in trials) if len(trials) > 1 else 0.0 for k in keys}
    return mean, std


def check_inputs(cfg: DetVocConfig) -> None:
    """One-line errors for a bad config, before anything is written."""
    if not cfg.ckpt:
        raise ValueError("no checkpoint given: pass --ckpt PATH")
    if not cfg.train_sizes or min(cfg.train_sizes) < 1:
        raise ValueError(f"train_sizes={cfg.train_sizes} must list positive short sides")
    if list(cfg.steps) != sorted(cfg.steps):
        raise ValueError(f"steps={cfg.steps} must be increasing")
    if cfg.engine == "detectron2":
        if cfg.rehearsal:
            raise ValueError("rehearsal runs the native engine: drop engine=detectron2 (or rehearsal=true)")
        detectron2_engine.check_engine(cfg)


def resolve(cfg: DetVocConfig, world_size: int, precision: str, device: str) -> Resolved:
    """Batch, lr and schedule for this process count (see the NOTE on small worlds in the module docstring)."""
    accumulate, batch, policy = trainer.batch_policy(cfg, world_size)
    factor = cfg.global_batch_size / batch  # > 1 when scaled: fewer images per step -> lower lr, more iterations
    return Resolved(world_size=world_size, batch_size_per_device=cfg.batch_size_per_device, global_batch_size=batch,
                    precision=precision, device=device, accumulate=accumulate, batch_policy=policy,
                    lr=cfg.lr / factor, max_iters=round(cfg.max_iters * factor),
                    steps=tuple(round(s * factor) for s in cfg.steps), warmup_iters=round(cfg.warmup_iters * factor))


def train_settings(cfg: DetVocConfig, resolved: Resolved, seed: int) -> trainer.TrainSettings:
    return trainer.TrainSettings(
        max_iters=resolved.max_iters, base_lr=resolved.lr, steps=resolved.steps, warmup_iters=resolved.warmup_iters,
        momentum=cfg.momentum, weight_decay=cfg.weight_decay, weight_decay_norm=0.0,
        batch_size_per_device=resolved.batch_size_per_device, accumulate=resolved.accumulate, seed=seed,
        precision=resolved.precision, ckpt_every_iters=cfg.ckpt_every_iters, stop_after_iters=cfg.stop_after_iters,
        num_workers=cfg.num_workers)


def _detectron2_trial(cfg: DetVocConfig, backbone: nn.Module, arch: str, trial_dir: Path, results_dir: Path,
                      seed: int) -> dict:
    """One trial on detectron2 (``benchmarks/detection/detectron2_voc.py``): export, config, train_net; the results
    files land in ``results_dir``. Returns the trial's record fields besides the scores."""
    # detectron2 finds VOC under $DETECTRON2_DATASETS/VOC2007 (= our VOCdevkit); it predicts the first test_images
    output = trial_dir / "output"
    return detectron2_engine.train_on_detectron2(
        backbone, trial_dir,
        lambda weights, gpus: detectron2_voc.config_values(cfg, arch, weights, output, seed, gpus),
        "benchmarks.detection.detectron2_voc",
        ["--results-dir", str(results_dir), "--test-images", str(cfg.test_images)],
        {"DETECTRON2_DATASETS": str(Path(cfg.data_root) / "VOCdevkit")},
        resume=detectron2_engine.resume_point(output, cfg))


def main() -> None:
    run(parse_args(DetVocConfig, preset_dir=PRESET_DIR, description=__doc__))
