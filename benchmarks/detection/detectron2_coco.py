"""The detectron2 engine of ``det_coco`` (``engine=detectron2``): detectron2's Mask R-CNN R50-FPN set as close to the
mmdetection config of B §5.3 as detectron2's config allows, trained by detectron2's ``DefaultTrainer``, scored by
our pycocotools path on our results files.

What it does:

1. the backbone trunk goes through the adapters' detectron2 export (``.pkl``, MoCo's rename rules, B §5.0), as
   ``det_voc``'s engine (``benchmarks.detection.detectron2_engine.write_inputs``);
2. :func:`config_values` writes a flat detectron2 config: ``build_resnet_fpn_backbone`` with nothing frozen, the
   mmdet settings where detectron2 has a key for them (norms in ResNet, FPN, box and mask heads; the 4conv1fc box
   head as ``FastRCNNConvFCHead`` with 4 convs + 1 FC; anchors 32-512 one per level; RPN 2000 per level -> 1000;
   ROIAlignV2 7/14; 512 RoIs at 25 %; 12 epochs of ``ceil(N / 16)`` iterations, steps at 8 and 11; warm-up 1000 from
   0.001; weight decay 1e-4 on every parameter, norms included; no precise BN) and our preset's sizes;
3. ``python -m benchmarks.detection.detectron2_coco --config-file ... --data-root ... --bbox-file ... --segm-file ...``
   (this module's ``main``: detectron2's ``launch`` and ``DefaultTrainer``) registers our ``coco/`` folder's
   train2017 / val2017 under their own names (any category set: the embedded data has 8), trains, predicts val2017
   and writes the plain COCO results files (RLE masks, the dataset's category ids) that the runner names next to its
   record, ``<record stem>.bbox.json`` / ``<record stem>.segm.json``; the runner scores them with
   ``benchmarks.detection.coco_eval.evaluate_files``, as the native engine's.

Where detectron2 cannot follow the mmdet config (docs/DETECTION.md lists them): no gradient accumulation
(``SOLVER.IMS_PER_BATCH`` = the global batch, split over the GPUs detectron2 launches: one GPU holds all 16 images),
horizontal flip at 0.5 only, detectron2's own RPN/RoI matching rules (no 0.3 floor on low-quality RPN matches, as the
native engine), its mask paste, and its resize (``ResizeShortestEdge``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import yaml

from adapters.export import detectron2_config
from benchmarks.detection.detectron2_engine import launch_main, train_net

TRAIN_SET, VAL_SET = "byol_bench_coco_2017_train", "byol_bench_coco_2017_val"


def config_values(cfg: Any, arch: str, weights: Path, output_dir: Path, world_size: int, num_classes: int,
                  train_images: int) -> dict:
    """The flat detectron2 config for ``cfg`` (a ``DetCocoConfig``); ``world_size`` = GPUs (0: the CPU).

    Raises:
        ValueError: a flip probability detectron2 cannot express (it flips at 0.5 or not at all).
    """
    if cfg.flip_prob not in (0.0, 0.5):
        raise ValueError(f"engine=detectron2 flips with probability 0.5 or not at all, got flip_prob={cfg.flip_prob}; "
                         "use flip_prob=0.5 (the config's), 0, or engine=native")
    fragment = yaml.safe_load(detectron2_config(arch, weights))  # RGB, mean/std, STRIDE_IN_1X1 False, WEIGHTS
    norm = "SyncBN" if world_size > 1 else "BN"
    iters_per_epoch = math.ceil(train_images / cfg.global_batch_size)
    max_iter = cfg.epochs * iters_per_epoch
    # a drop after the last epoch never takes effect; detectron2 refuses it, the native engine ignores it
    steps = [e * iters_per_epoch for e in cfg.step_epochs if e * iters_per_epoch < max_iter]
    levels = ["p2", "p3", "p4", "p5"]
    return {
        "VERSION": 2,
        "MODEL": {
            "META_ARCHITECTURE": "GeneralizedRCNN",
            "DEVICE": "cuda" if world_size > 0 else "cpu",
            "WEIGHTS": fragment["MODEL"]["WEIGHTS"],
            "MASK_ON": True,
            "PIXEL_MEAN": fragment["MODEL"]["PIXEL_MEAN"],  # mmdet's RGB mean/std in 0-255 units
            "PIXEL_STD": fragment["MODEL"]["PIXEL_STD"],
            "BACKBONE": {"NAME": "build_resnet_fpn_backbone", "FREEZE_AT": 0},
            "RESNETS": {**fragment["MODEL"]["RESNETS"], "NORM": norm, "OUT_FEATURES": ["res2", "res3", "res4", "res5"]},
            "FPN": {"IN_FEATURES": ["res2", "res3", "res4", "res5"], "OUT_CHANNELS": cfg.fpn_channels, "NORM": norm},
            # mmdet: octave scale 8 x strides 4..64, one size per level (P6 = max-pool of P5, as mmdet's num_outs=5)
            "ANCHOR_GENERATOR": {"SIZES": [[32], [64], [128], [256], [512]], "ASPECT_RATIOS": [[0.5, 1.0, 2.0]]},
            "RPN": {"IN_FEATURES": [*levels, "p6"], "PRE_NMS_TOPK_TRAIN": 2000, "PRE_NMS_TOPK_TEST": 1000,
                    "POST_NMS_TOPK_TRAIN": 1000, "POST_NMS_TOPK_TEST": 1000, "NMS_THRESH": 0.7},
            "ROI_HEADS": {"NAME": "StandardROIHeads", "IN_FEATURES": levels, "NUM_CLASSES": num_classes,
                          "BATCH_SIZE_PER_IMAGE": cfg.rois_per_image, "POSITIVE_FRACTION": 0.25,
                          "SCORE_THRESH_TEST": 0.05, "NMS_THRESH_TEST": 0.5},
            # mmdet Shared4Conv1FCBBoxHead: 4 x (3x3 conv + norm + ReLU), one FC 1024
            "ROI_BOX_HEAD": {"NAME": "FastRCNNConvFCHead", "NUM_CONV": 4, "CONV_DIM": cfg.fpn_channels, "NUM_FC": 1,
                             "FC_DIM": cfg.fc_channels, "NORM": norm, "POOLER_TYPE": "ROIAlignV2",
                             "POOLER_RESOLUTION": 7, "POOLER_SAMPLING_RATIO": 0},
            "ROI_MASK_HEAD": {"NAME": "MaskRCNNConvUpsampleHead", "NUM_CONV": 4, "CONV_DIM": cfg.fpn_channels,
                              "NORM": norm, "POOLER_TYPE": "ROIAlignV2", "POOLER_RESOLUTION": 14,
                              "POOLER_SAMPLING_RATIO": 0},
        },
        "INPUT": {"FORMAT": "RGB", "MIN_SIZE_TRAIN": list(cfg.train_min_sizes), "MIN_SIZE_TRAIN_SAMPLING": "choice",
                  "MAX_SIZE_TRAIN": cfg.max_size, "MIN_SIZE_TEST": cfg.test_min_size, "MAX_SIZE_TEST": cfg.max_size,
                  "MASK_FORMAT": "polygon", "RANDOM_FLIP": "horizontal" if cfg.flip_prob else "none"},
        "DATASETS": {"TRAIN": [TRAIN_SET], "TEST": [VAL_SET]},
        "DATALOADER": {"NUM_WORKERS": cfg.num_workers, "FILTER_EMPTY_ANNOTATIONS": True},
        "SOLVER": {"IMS_PER_BATCH": cfg.global_batch_size, "BASE_LR": cfg.lr, "MOMENTUM": cfg.momentum,
                   "WEIGHT_DECAY": cfg.weight_decay, "WEIGHT_DECAY_NORM": cfg.weight_decay_norm,
                   "STEPS": steps, "MAX_ITER": max_iter,
                   "WARMUP_ITERS": cfg.warmup_iters, "WARMUP_FACTOR": cfg.warmup_factor, "WARMUP_METHOD": "linear",
                   "CHECKPOINT_PERIOD": cfg.ckpt_every_iters},
        "TEST": {"PRECISE_BN": {"ENABLED": False}, "EVAL_PERIOD": 0, "DETECTIONS_PER_IMAGE": 100},
        "SEED": cfg.seed,
        "OUTPUT_DIR": str(output_dir),
    }


# ---------------------------------------------------------------- train_net (runs where detectron2 is installed)


def _register_datasets(data_root: Path) -> None:
    """Our ``coco/`` folder's train2017 / val2017 under this module's names (detectron2's builtin ``coco_2017_*``
    carry COCO's fixed 80-class metadata, which a smaller category set contradicts)."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    for name, split in ((TRAIN_SET, "train2017"), (VAL_SET, "val2017")):
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, str(data_root / "coco" / "annotations" / f"instances_{split}.json"),
                                    str(data_root / "coco" / split))


def _files_evaluator(bbox_file: Path, segm_file: Path) -> type:
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import DatasetEvaluator
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json
    from detectron2.utils import comm

    from benchmarks.detection.coco_eval import write_results

    class FilesEvaluator(DatasetEvaluator):
        """Every val image's detections as plain COCO results files (``bbox_file``, ``segm_file``), in the
        dataset's category ids; scoring is the runner's."""

        def __init__(self, dataset_name: str) -> None:
            self._dataset_name = dataset_name

        def reset(self) -> None:
            self._results: list[dict] = []

        def process(self, inputs, outputs) -> None:
            for image, output in zip(inputs, outputs, strict=True):
                self._results.extend(instances_to_coco_json(output["instances"].to("cpu"), image["image_id"]))

        def evaluate(self):
            gathered = comm.gather(self._results, dst=0)
            if not comm.is_main_process():
                return None
            to_dataset = {contiguous: dataset_id for dataset_id, contiguous
                          in MetadataCatalog.get(self._dataset_name).thing_dataset_id_to_contiguous_id.items()}
            results = [{**r, "category_id": to_dataset[r["category_id"]]} for part in gathered for r in part]
            write_results(bbox_file, [{k: v for k, v in r.items() if k != "segmentation"} for r in results])
            write_results(segm_file, results)
            return {}

    return FilesEvaluator


def _main(args: argparse.Namespace) -> None:
    _register_datasets(Path(args.data_root))
    train_net(args, _files_evaluator(Path(args.bbox_file), Path(args.segm_file)), lambda cfg: None)


def main() -> None:
    def add_arguments(parser) -> None:
        parser.add_argument("--data-root", required=True, help="the folder holding coco/ (docs/DATASETS.md)")
        parser.add_argument("--bbox-file", required=True, help="the COCO bbox results file to write (plain JSON)")
        parser.add_argument("--segm-file", required=True, help="the COCO segm results file to write (plain JSON)")

    launch_main(_main, add_arguments)


if __name__ == "__main__":
    main()
