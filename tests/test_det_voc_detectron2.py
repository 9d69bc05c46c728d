"""The detectron2 engine of det_voc: the generated config equals what MoCo's pascal_voc_R_50_C4_24k_moco.yaml
resolves to (B §5.1), the exported weights, the refusals; the training path needs detectron2 (skipped without it)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cli_support import run_module  # tests/ is on sys.path
from detectron2_support import needs_detectron2, without_detectron2  # tests/ is on sys.path

import benchmarks.detection.detectron2_engine as engine
import benchmarks.detection.detectron2_voc as d2
import benchmarks.detection.voc as det_voc
from adapters.intake import flatten
from benchmarks.detection.detectron2_engine import write_inputs
from byol_bench.backbone import build_resnet
from byol_bench.config import load_config
from byol_bench.records import load_records

FULL = "faster-rcnn_resnet50-c4_8xb2-24k_voc0712"

# pascal_voc_R_50_C4_24k_moco.yaml -> pascal_voc_R_50_C4_24k.yaml -> Base-RCNN-C4-BN.yaml, with detectron2's
# defaults where they are set by none of them (B §5.1 lists each value and its source)
MOCO_VOC = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN", "MODEL.MASK_ON": False,
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53], "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    "MODEL.BACKBONE.FREEZE_AT": 0, "MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.NORM": "SyncBN",
    "MODEL.RESNETS.STRIDE_IN_1X1": False, "MODEL.RESNETS.OUT_FEATURES": ["res4"],
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 12000, "MODEL.RPN.POST_NMS_TOPK_TRAIN": 2000,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000, "MODEL.RPN.POST_NMS_TOPK_TEST": 1000, "MODEL.RPN.NMS_THRESH": 0.7,
    "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm", "MODEL.ROI_HEADS.NUM_CLASSES": 20,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 512, "MODEL.ROI_HEADS.POSITIVE_FRACTION": 0.25,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05, "MODEL.ROI_HEADS.NMS_THRESH_TEST": 0.5,
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignV2", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 0,
    "INPUT.FORMAT": "RGB", "INPUT.MIN_SIZE_TRAIN": [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800],
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice", "INPUT.MAX_SIZE_TRAIN": 1333, "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "DATASETS.TRAIN": ["voc_2007_trainval", "voc_2012_trainval"], "DATASETS.TEST": ["voc_2007_test"],
    "SOLVER.IMS_PER_BATCH": 16, "SOLVER.BASE_LR": 0.02, "SOLVER.MOMENTUM": 0.9, "SOLVER.WEIGHT_DECAY": 0.0001,
    "SOLVER.WEIGHT_DECAY_NORM": 0.0, "SOLVER.STEPS": [18000, 22000], "SOLVER.MAX_ITER": 24000,
    "SOLVER.WARMUP_ITERS": 100, "SOLVER.WARMUP_FACTOR": 0.001,
    "TEST.PRECISE_BN.ENABLED": True, "TEST.PRECISE_BN.NUM_ITER": 200, "TEST.EVAL_PERIOD": 0,
    "TEST.DETECTIONS_PER_IMAGE": 100,
}


def test_generated_config_is_mocos_voc_config(tmp_path):
    cfg = load_config(det_voc.DetVocConfig, FULL, ["ckpt=x.pth"], preset_dir=det_voc.PRESET_DIR)
    trunk = {k: v for k, v in build_resnet("resnet50").state_dict().items() if not k.startswith("fc.")}
    config = write_inputs(trunk, lambda w: d2.config_values(cfg, "resnet50", w, tmp_path / "out", 3, 8), tmp_path)
    flat = flatten(yaml.safe_load(config.read_text()))
    for key, value in MOCO_VOC.items():
        assert flat[key] == pytest.approx(value) if isinstance(value, float) else flat[key] == value, key
    assert flat["SEED"] == 3 and flat["MODEL.WEIGHTS"] == str((tmp_path / "backbone_detectron2.pkl").resolve())
    weights = pickle.loads((tmp_path / "backbone_detectron2.pkl").read_bytes())
    names = set(weights["model"])
    assert {"stem.conv1.weight", "stem.conv1.norm.running_mean", "res4.2.conv2.norm.weight", "res5.0.shortcut.weight",
            "res5.0.shortcut.norm.bias"} <= names and weights["matching_heuristics"] is True
    # one GPU: plain BN (SyncBN needs a process group); the rest unchanged
    one = flatten(d2.config_values(cfg, "resnet50", tmp_path / "w.pkl", tmp_path, 0, 1))
    assert one["MODEL.RESNETS.NORM"] == "BN"


def test_basic_block_resnets_are_refused(tmp_path):
    cfg = load_config(det_voc.DetVocConfig, "tiny", ["ckpt=x.pth"], preset_dir=det_voc.PRESET_DIR)
    with pytest.raises(ValueError, match="bottleneck ResNet"):
        d2.config_values(cfg, "resnet18", tmp_path / "w.pkl", tmp_path, 0, 1)


def test_detectron2_resumes_by_the_runners_rule(tmp_path, monkeypatch):
    """``--resume`` (detectron2 continues from its output folder's last_checkpoint) only where training.resume_point
    would resume: not under --force, which trains afresh; resume=none refuses an output folder that holds one, and a
    resume path is refused (detectron2 resumes from its own folder only)."""
    def cfg(*overrides: str) -> det_voc.DetVocConfig:
        return load_config(det_voc.DetVocConfig, "tiny", ["ckpt=x.pth", "engine=detectron2", *overrides],
                           preset_dir=det_voc.PRESET_DIR)

    output = tmp_path / "output"
    assert not engine.resume_point(output, cfg())  # nothing to resume from yet
    output.mkdir()
    (output / "last_checkpoint").write_text("model_final.pth")
    assert engine.resume_point(output, cfg()) and not engine.resume_point(output, cfg("force=true"))
    with pytest.raises(ValueError, match="continue with resume=auto"):
        engine.resume_point(output, cfg("resume=none"))
    with pytest.raises(ValueError, match="continues from its own output folder"):
        engine.check_engine(cfg(f"resume={tmp_path / 'latest.pth'}"))
    commands = []
    monkeypatch.setattr(engine.subprocess, "run", lambda command, **_: commands.append(command) or
                        subprocess.CompletedProcess(command, 0))
    for resume in (True, False):
        engine.train_on_detectron2(build_resnet("resnet50"), tmp_path, lambda weights, gpus: {}, "m", ["--x"], {},
                                   resume=resume)
    assert ["--resume" in command for command in commands] == [True, False]


@without_detectron2
def test_engine_without_detectron2_is_a_one_line_error(ckpt, tmp_path):
    done = run_module([sys.executable, "-m", "benchmarks.det_voc", "--preset", "tiny", "--ckpt", str(ckpt),
                       "--out-dir", str(tmp_path), "engine=detectron2"])
    assert done.returncode == 2 and "no PyPI release" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@needs_detectron2
def test_extra_norm_head_registers_and_builds(tmp_path):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = load_config(det_voc.DetVocConfig, FULL, ["ckpt=x.pth"], preset_dir=det_voc.PRESET_DIR)
    d2.register_head()
    values = d2.config_values(cfg, "resnet50", tmp_path / "w.pkl", tmp_path, 0, 1)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(values))
    d2cfg = get_cfg()
    d2cfg.merge_from_file(str(config))
    d2cfg.MODEL.DEVICE = "cpu"
    model = build_model(d2cfg)
    assert type(model.roi_heads).__name__ == "Res5ROIHeadsExtraNorm"
    assert model.roi_heads.res5.norm.num_features == 2048


@needs_detectron2
def test_tiny_run_scores_detectron2s_results_files(tiny_data, tmp_path):
    # a random-init ResNet-50 (detectron2's C4 head is bottleneck-only), the tiny preset, 4 test images: detectron2
    # predicts exactly the images the native engine would score
    state = {k: v for k, v in build_resnet("resnet50").state_dict().items() if not k.startswith("fc.")}
    ckpt = tmp_path / "r50.pth"
    torch.save(state, ckpt)
    cfg = load_config(det_voc.DetVocConfig, "tiny", [f"ckpt={ckpt}", f"data_root={tiny_data}", f"out_dir={tmp_path}",
                                                      "engine=detectron2", "max_iters=4", "test_images=4"],
                      preset_dir=det_voc.PRESET_DIR)
    metrics = det_voc.run(cfg)
    (record,) = load_records(tmp_path / "records")
    assert record["metrics"] == metrics and set(metrics) == {"AP", "AP50", "AP75"}
    assert record["details"]["engine"] == "detectron2" and record["details"]["test_images"] == 4
    results = Path(record["details"]["trials"][0]["results_dir"])
    assert len(list(results.glob("comp4_det_test_*.txt"))) == 20
    ids = {line.split()[0] for f in results.glob("comp4_det_test_*.txt") for line in f.read_text().splitlines()}
    test_ids = (tiny_data / "VOCdevkit/VOC2007/ImageSets/Main/test.txt").read_text().split()[:4]
    assert ids <= set(test_ids)
