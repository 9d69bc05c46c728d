"""The detectron2 engine of det_coco: the generated config carries the mmdet settings of B §5.3 that detectron2 has
keys for, and refuses what it cannot express; with detectron2 installed (no PyPI release: these tests skip without
it), the built model has the 4conv1fc box head and the normed 4-conv mask head, and the tiny run scores its results
files through our pycocotools path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from cli_support import run_module  # tests/ is on sys.path
from detectron2_support import needs_detectron2, without_detectron2  # tests/ is on sys.path

import benchmarks.detection.coco as det
import benchmarks.detection.detectron2_coco as d2
from adapters.intake import flatten
from byol_bench.config import load_config
from byol_bench.records import load_records

FULL = "mask-rcnn_resnet50-fpn_8xb2-ms-1x_coco"

# mask_rcnn_r50_fpn_mstrain_1x_coco.py (B §5.3) in detectron2's keys; 117266 = COCO train2017 images with annotations
MMDET_COCO = {
    "MODEL.MASK_ON": True, "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone", "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53], "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    "MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.STRIDE_IN_1X1": False, "MODEL.RESNETS.NORM": "SyncBN",
    "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"], "MODEL.FPN.OUT_CHANNELS": 256,
    "MODEL.FPN.NORM": "SyncBN", "MODEL.ANCHOR_GENERATOR.SIZES": [[32], [64], [128], [256], [512]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.RPN.IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"], "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 2000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 1000, "MODEL.RPN.PRE_NMS_TOPK_TEST": 1000, "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.NMS_THRESH": 0.7, "MODEL.ROI_HEADS.NUM_CLASSES": 80, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 512,
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": 0.25, "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05,
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": 0.5, "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
    "MODEL.ROI_BOX_HEAD.NUM_CONV": 4, "MODEL.ROI_BOX_HEAD.CONV_DIM": 256, "MODEL.ROI_BOX_HEAD.NUM_FC": 1,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 1024, "MODEL.ROI_BOX_HEAD.NORM": "SyncBN",
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignV2",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 7, "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_MASK_HEAD.NUM_CONV": 4, "MODEL.ROI_MASK_HEAD.NORM": "SyncBN",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "ROIAlignV2",
    "INPUT.FORMAT": "RGB", "INPUT.MIN_SIZE_TRAIN": [640, 672, 704, 736, 768, 800],
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
    "INPUT.MAX_SIZE_TRAIN": 1333, "INPUT.MIN_SIZE_TEST": 800, "INPUT.MAX_SIZE_TEST": 1333,
    "INPUT.RANDOM_FLIP": "horizontal",
    "SOLVER.IMS_PER_BATCH": 16, "SOLVER.BASE_LR": 0.02, "SOLVER.MOMENTUM": 0.9, "SOLVER.WEIGHT_DECAY": 0.0001,
    "SOLVER.WEIGHT_DECAY_NORM": 0.0001, "SOLVER.WARMUP_ITERS": 1000, "SOLVER.WARMUP_FACTOR": 0.001,
    "SOLVER.WARMUP_METHOD": "linear", "SOLVER.MAX_ITER": 12 * 7330, "SOLVER.STEPS": [8 * 7330, 11 * 7330],
    "TEST.PRECISE_BN.ENABLED": False, "TEST.DETECTIONS_PER_IMAGE": 100,
}


def _cfg(*overrides: str, preset: str = FULL) -> det.DetCocoConfig:
    return load_config(det.DetCocoConfig, preset, ["ckpt=x.pth", *overrides], preset_dir=det.PRESET_DIR)


def test_generated_config_is_the_mmdet_config(tmp_path):
    values = d2.config_values(_cfg(), "resnet50", tmp_path / "w.pkl", tmp_path / "out", 8, 80, 117266)
    flat = flatten(values)
    for key, value in MMDET_COCO.items():
        assert flat[key] == pytest.approx(value) if isinstance(value, float) else flat[key] == value, key
    assert flat["MODEL.WEIGHTS"] == str((tmp_path / "w.pkl").resolve()) and flat["MODEL.DEVICE"] == "cuda"
    # one GPU: plain BN everywhere; the CPU: detectron2's device cpu
    one = flatten(d2.config_values(_cfg(), "resnet50", tmp_path / "w.pkl", tmp_path, 0, 80, 117266))
    assert {one[k] for k in ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM",
                             "MODEL.ROI_MASK_HEAD.NORM")} == {"BN"} and one["MODEL.DEVICE"] == "cpu"
    # the tiny preset's widths reach every head; a basic-block ResNet gets detectron2's res2 width rule
    tiny = flatten(d2.config_values(_cfg(preset="tiny"), "resnet18", tmp_path / "w.pkl", tmp_path, 0, 8, 120))
    assert (tiny["MODEL.FPN.OUT_CHANNELS"], tiny["MODEL.ROI_BOX_HEAD.CONV_DIM"], tiny["MODEL.ROI_BOX_HEAD.FC_DIM"],
            tiny["MODEL.ROI_MASK_HEAD.CONV_DIM"]) == (32, 32, 128, 32)
    assert tiny["MODEL.RESNETS.RES2_OUT_CHANNELS"] == 64 and tiny["SOLVER.MAX_ITER"] == 3 * 30
    # a drop after the last epoch (the native engine ignores it) is left out: detectron2 refuses it
    last = d2.config_values(_cfg("epochs=1", "step_epochs=[1]"), "resnet50", tmp_path / "w.pkl", tmp_path, 0, 80, 32)
    assert (last["SOLVER"]["STEPS"], last["SOLVER"]["MAX_ITER"]) == ([], 2)


def test_flip_detectron2_cannot_express_is_refused(tmp_path):
    with pytest.raises(ValueError, match="flip_prob"):
        d2.config_values(_cfg("flip_prob=0.3"), "resnet50", tmp_path / "w.pkl", tmp_path, 0, 80, 10)
    off = d2.config_values(_cfg("flip_prob=0"), "resnet50", tmp_path / "w.pkl", tmp_path, 0, 80, 10)
    assert off["INPUT"]["RANDOM_FLIP"] == "none"


@without_detectron2
def test_engine_without_detectron2_is_a_one_line_error(ckpt, tmp_path):
    done = run_module([sys.executable, "-m", "benchmarks.det_coco", "--preset", "tiny", "--ckpt", str(ckpt),
                       "--out-dir", str(tmp_path), "engine=detectron2"])
    assert done.returncode == 2 and "no PyPI release" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@needs_detectron2
def test_built_model_has_the_mmdet_heads(tmp_path):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from torch import nn

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(d2.config_values(_cfg(), "resnet50", tmp_path / "w.pkl", tmp_path, 0, 80, 10)))
    d2cfg = get_cfg()
    d2cfg.merge_from_file(str(config))
    model = build_model(d2cfg)
    box_head = model.roi_heads.box_head
    convs = [m for name, m in box_head.named_children() if name.startswith("conv")]
    fcs = [m for m in box_head.children() if isinstance(m, nn.Linear)]
    assert len(convs) == 4 and len(fcs) == 1 and fcs[0].out_features == 1024
    assert all(isinstance(c.norm, nn.BatchNorm2d) for c in convs)
    mask_convs = [m for name, m in model.roi_heads.mask_head.named_children() if name.startswith("mask_fcn")]
    assert len(mask_convs) == 4 and all(isinstance(c.norm, nn.BatchNorm2d) for c in mask_convs)
    assert all(isinstance(m.norm, nn.BatchNorm2d) for m in model.backbone.lateral_convs)
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen


@needs_detectron2
def test_tiny_run_scores_detectron2s_results_files(ckpt, tiny_data, tmp_path):
    # the tiny preset with the demo's ResNet-18 (detectron2's FPN backbone takes basic blocks), one epoch
    cfg = load_config(det.DetCocoConfig, "tiny", [f"ckpt={ckpt}", f"data_root={tiny_data}", f"out_dir={tmp_path}",
                                                   "engine=detectron2", "epochs=1", "step_epochs=[1]"],
                      preset_dir=det.PRESET_DIR)
    metrics = det.run(cfg)
    (record,) = load_records(tmp_path / "records")
    assert record["metrics"] == metrics and set(metrics) == {f"{t}_{k}" for t in ("bbox", "segm")
                                                             for k in ("AP", "AP50", "AP75")}
    assert record["details"]["engine"] == "detectron2" and record["details"]["batch_policy"] == "recipe"
    for iou_type, path in record["details"]["results_files"].items():  # plain COCO results next to the record
        assert Path(path).name.endswith(f".{iou_type}.json") and Path(path).read_text().startswith("[")
