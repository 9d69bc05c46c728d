"""The detectron2 engine of ``det_voc`` (``engine=detectron2``): MoCo's ``detection/train_net.py`` recipe, driven
from our preset, scored by our metric on our results files.

Installing detectron2: :mod:`benchmarks.detection.detectron2_engine` (which also holds what both engines share).
Verified with detectron2 0.6 built from source (commit 02b5c4e) on the CPU: the tests that need it, a tiny run, and
an overfit run (docs/DETECTION.md has the figures).

What it does, per trial:

1. the backbone trunk goes through the adapters' detectron2 export (``adapters.export.to_detectron2``: ``.pkl``,
   MoCo's rename rules, B §5.0);
2. :func:`config_values` writes the config that ``pascal_voc_R_50_C4_24k_moco.yaml`` resolves to (through
   ``pascal_voc_R_50_C4_24k.yaml`` and ``Base-RCNN-C4-BN.yaml``), with the adapters' torchvision-input fragment
   (``adapters.export.detectron2_config``: RGB, ImageNet mean/std in 0-255 units, ``STRIDE_IN_1X1 False``) and our
   preset's sizes and schedule;
3. ``python -m benchmarks.detection.detectron2_voc --config-file ... --num-gpus N --results-dir ...`` (this module's
   ``main``: detectron2's ``launch``, ``DefaultTrainer`` with precise BN, the ``Res5ROIHeadsExtraNorm`` head)
   trains and predicts ``voc_2007_test`` (its first ``test_images`` images when the preset sets them); its
   evaluator writes the detections as ``comp4_det_test_<class>.txt`` into the results folder, and the runner
   scores them with ``benchmarks.detection.voc_eval`` (the same numbers as detectron2's
   ``PascalVOCDetectionEvaluator``).

detectron2's C4 RoI head builds res5 from bottleneck blocks only: ResNet-50 and deeper.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from adapters.export import detectron2_config
from benchmarks.detection.detectron2_engine import launch_main, train_net


def config_values(cfg: Any, arch: str, weights: Path, output_dir: Path, seed: int, world_size: int) -> dict:
    """The flat detectron2 config of B §5.1 for our preset (the ``_moco`` YAML chain, resolved).

    Raises:
        ValueError: a basic-block ResNet (detectron2's C4 res5 head is bottleneck-only).
    """
    depth = int(arch.removeprefix("resnet")) if arch.startswith("resnet") else 0
    if depth < 50:
        raise ValueError(f"engine=detectron2 needs a bottleneck ResNet (resnet50 and deeper), got {arch}: "
                         "detectron2's C4 RoI head builds res5 from bottleneck blocks; use engine=native")
    fragment = yaml.safe_load(detectron2_config(arch, weights))  # RGB, mean/std, STRIDE_IN_1X1 False, WEIGHTS
    ims_per_batch = cfg.global_batch_size
    return {
        "VERSION": 2,
        "MODEL": {
            "META_ARCHITECTURE": "GeneralizedRCNN",
            "DEVICE": "cuda" if world_size > 0 else "cpu",  # world_size = GPUs; 0: detectron2 on the CPU
            "WEIGHTS": fragment["MODEL"]["WEIGHTS"],
            "MASK_ON": False,
            "PIXEL_MEAN": fragment["MODEL"]["PIXEL_MEAN"],
            "PIXEL_STD": fragment["MODEL"]["PIXEL_STD"],
            "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 0},
            "RESNETS": {**fragment["MODEL"]["RESNETS"], "NORM": "SyncBN" if world_size > 1 else "BN",
                        "OUT_FEATURES": ["res4"]},
            "RPN": {"PRE_NMS_TOPK_TRAIN": cfg.rpn_topk_train[0], "POST_NMS_TOPK_TRAIN": cfg.rpn_topk_train[1],
                    "PRE_NMS_TOPK_TEST": cfg.rpn_topk_test[0], "POST_NMS_TOPK_TEST": cfg.rpn_topk_test[1],
                    "NMS_THRESH": 0.7},
            "ROI_HEADS": {"NAME": "Res5ROIHeadsExtraNorm", "NUM_CLASSES": 20,
                          "BATCH_SIZE_PER_IMAGE": cfg.roi_batch_size_per_image, "POSITIVE_FRACTION": 0.25,
                          "SCORE_THRESH_TEST": 0.05, "NMS_THRESH_TEST": 0.5},
            "ROI_BOX_HEAD": {"POOLER_TYPE": "ROIAlignV2", "POOLER_RESOLUTION": 14, "POOLER_SAMPLING_RATIO": 0},
        },
        "INPUT": {"FORMAT": "RGB", "MIN_SIZE_TRAIN": list(cfg.train_sizes), "MIN_SIZE_TRAIN_SAMPLING": "choice",
                  "MAX_SIZE_TRAIN": cfg.train_max_size, "MIN_SIZE_TEST": cfg.test_size,
                  "MAX_SIZE_TEST": cfg.test_max_size},
        "DATASETS": {"TRAIN": ["voc_2007_trainval", "voc_2012_trainval"], "TEST": ["voc_2007_test"]},
        "DATALOADER": {"NUM_WORKERS": cfg.num_workers},
        "SOLVER": {"IMS_PER_BATCH": ims_per_batch, "BASE_LR": cfg.lr, "MOMENTUM": cfg.momentum,
                   "WEIGHT_DECAY": cfg.weight_decay, "WEIGHT_DECAY_NORM": 0.0, "STEPS": list(cfg.steps),
                   "MAX_ITER": cfg.max_iters, "WARMUP_ITERS": cfg.warmup_iters, "WARMUP_FACTOR": 0.001,
                   "CHECKPOINT_PERIOD": cfg.ckpt_every_iters},
        "TEST": {"PRECISE_BN": {"ENABLED": cfg.precise_bn_iters > 0, "NUM_ITER": cfg.precise_bn_iters},
                 "EVAL_PERIOD": 0, "DETECTIONS_PER_IMAGE": 100},
        "SEED": seed,
        "OUTPUT_DIR": str(output_dir),
    }


# ---------------------------------------------------------------- train_net (runs where detectron2 is installed)


def register_head() -> None:
    """``Res5ROIHeadsExtraNorm`` (MoCo ``detection/train_net.py``): one norm of ``MODEL.RESNETS.NORM`` after res5."""
    from detectron2.layers import get_norm
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

    if "Res5ROIHeadsExtraNorm" in ROI_HEADS_REGISTRY:
        return

    @ROI_HEADS_REGISTRY.register()
    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        @classmethod
        def _build_res5_block(cls, cfg):
            seq, out_channels = super()._build_res5_block(cfg)
            seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
            return seq, out_channels


def _register_first_test_images(count: int) -> str:
    """``voc_2007_test`` cut to its first ``count`` images (the native engine's ``test_images``); returns its name."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = f"voc_2007_test_first{count}"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: DatasetCatalog.get("voc_2007_test")[:count])
        MetadataCatalog.get(name).set(**{k: v for k, v in MetadataCatalog.get("voc_2007_test").as_dict().items()
                                         if k != "name"})
    return name


def _files_evaluator(results_dir: Path) -> type:
    from detectron2.evaluation import PascalVOCDetectionEvaluator
    from detectron2.utils import comm

    class FilesEvaluator(PascalVOCDetectionEvaluator):
        """detectron2's VOC evaluator, keeping its per-class result lines as our results files (its own
        ``evaluate`` writes them to a temporary folder and deletes it)."""

        def evaluate(self):
            gathered = comm.gather(self._predictions, dst=0)  # detectron2's per-class "<id> <score> <box>" lines
            if not comm.is_main_process():
                return None
            lines: dict[int, list[str]] = {}
            for part in gathered:
                for cls, rows in part.items():
                    lines.setdefault(cls, []).extend(rows)
            results_dir.mkdir(parents=True, exist_ok=True)
            for cls, name in enumerate(self._class_names):
                text = "\n".join(lines.get(cls, []))
                (results_dir / f"comp4_det_test_{name}.txt").write_text(text + ("\n" if text else ""))
            return {}

    return FilesEvaluator


def _main(args: argparse.Namespace) -> None:
    register_head()

    def test_subset(cfg) -> None:
        if args.test_images:
            cfg.DATASETS.TEST = (_register_first_test_images(args.test_images),)

    train_net(args, _files_evaluator(Path(args.results_dir)), test_subset)


def main() -> None:
    def add_arguments(parser) -> None:
        parser.add_argument("--results-dir", required=True, help="where the comp4_det_test_<class>.txt files go")
        parser.add_argument("--test-images", type=int, default=0, help="score the first N test images only (0: all)")

    launch_main(_main, add_arguments)


if __name__ == "__main__":
    main()
