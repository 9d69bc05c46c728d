"""Fast guards at the real sizes: the cheapest real-size case of each family, the rest is scripts/rehearse.sh's.

Each runs a FULL preset with ``rehearsal=true`` (two optimizer steps, the first images) on the real-size data, with
the ResNet-18 test checkpoint in place of a ResNet-50 (the sizes that break first are the inputs', the heads' and the
data's; a ResNet-50 costs three times as much per image here).
"""

from __future__ import annotations

from byol_bench import rehearsal
from byol_bench.config import load_config
from byol_bench.records import load_records


def _record(out):
    (record,) = load_records(out / "records")
    assert record["rehearsal"] is True and record["tiny"] is False
    return record


def test_voc07_svm_full_preset_on_real_size_images(ckpt, real_size_data, tmp_path):
    from benchmarks.voc07_svm.runner import PRESET_DIR, Voc07SvmConfig, run

    cfg = load_config(Voc07SvmConfig, "voc07_svm_mmselfsup", [f"ckpt={ckpt}", f"data_root={real_size_data}",
                                                              f"out_dir={tmp_path}", "rehearsal=true",
                                                              "num_workers=0"], preset_dir=PRESET_DIR)
    run(cfg)
    record = _record(tmp_path)
    details = record["details"]
    assert len(details["costs"]) == 19 and set(details["full_svm"]) == {"feat1", "feat2", "feat3", "feat4", "feat5"}
    # the few images hold k = 1, 2 of the low-shot grid; the record names the others
    assert {k for k in record["metrics"] if k.startswith("k")} == {"k1", "k2"}
    assert details["rehearsal"]["lowshot_ks_not_held"] == [4, 8, 16, 32, 64, 96]
    assert details["rehearsal"]["feature_images"] == 120 and details["rehearsal"]["full_run_s"] > 0


def test_linear_mhead_full_preset_one_process_of_eight_at_224_px_and_1000_classes(ckpt, real_size_data, tmp_path):
    from benchmarks.linear.mhead import PRESET_DIR, LinearMheadConfig, run

    cfg = load_config(LinearMheadConfig, "linear-mhead_resnet50_8xb32-steplr-90e_in1k",
                      [f"ckpt={ckpt}", f"data_root={real_size_data}", f"out_dir={tmp_path}", "rehearsal=true",
                       "num_workers=0"], preset_dir=PRESET_DIR)
    run(cfg)
    details = _record(tmp_path)["details"]
    assert details["num_classes"] == 1000 and details["pooling"] == "specified"
    # the protocol pooling at 224 px (ResNet-18: 9216 / 2304 / 2048 / 2304 / 2048)
    assert details["head_dims"] == {"feat1": 9216, "feat2": 2304, "feat3": 2048, "feat4": 2304, "feat5": 2048}
    assert details["batch_size_per_device"] == 32 and details["train_images"] == rehearsal.STEPS * 32
    assert details["val_images"] == rehearsal.EVAL_IMAGES
    summary = details["rehearsal"]
    assert summary["steps"] == rehearsal.STEPS and summary["reference_world"] == 8
    assert summary["full_steps"] == 90 * 5005  # 90 epochs of ceil(1,281,167 / 256) steps


def test_mask_rcnn_full_preset_trains_a_step_at_1333x800_and_predicts_masks(real_size_data):
    import torch

    from benchmarks.detection.coco import PRESET_DIR, DetCocoConfig, build_model, coco_split
    from byol_bench.backbone import build_resnet

    cfg = load_config(DetCocoConfig, "mask-rcnn_resnet50-fpn_8xb2-ms-1x_coco", preset_dir=PRESET_DIR)
    train = coco_split(str(real_size_data), "train", training=True)
    assert len(train.category_ids) == 80
    torch.manual_seed(0)
    model = build_model(build_resnet("resnet18"), 80, cfg)
    image, target = train[0]
    assert max(image.shape[1:]) == 640  # a real-size COCO image, resized by the model's own transform
    model.train()
    losses = model([image.float() / 255], [target])  # the preset's multi-scale resize: short side 640..800
    assert {"loss_mask", "loss_classifier", "loss_box_reg", "loss_objectness"} <= set(losses)
    sum(losses.values()).backward()
    model.eval()
    # an untrained model scores under 0.05: keep its best few detections (their masks are pasted at full size)
    model.roi_heads.score_thresh, model.roi_heads.detections_per_img = 0.0, 4
    with torch.no_grad():
        (out,) = model([image.float() / 255])
    assert out["masks"].shape[1:] == (1, *image.shape[1:]) and len(out["boxes"]) == 4


def test_fcn_cityscapes_preset_slides_769_windows_over_a_2048x1024_frame(real_size_data):
    import torch
    from torch import nn

    from benchmarks.segmentation import fcn
    from benchmarks.segmentation.runner import PRESET_DIR, SegmentationConfig, open_dataset

    cfg = load_config(SegmentationConfig, "fcn_r50-d8_4xb2-40k_cityscapes-769x769", preset_dir=PRESET_DIR)
    val = open_dataset("cityscapes", str(real_size_data), "val")
    image, label = val[0]
    assert tuple(image.shape) == (3, 1024, 2048) and tuple(label.shape) == (1024, 2048)

    class Stride8(nn.Module):
        """FCN's interface (logits at 1/8, no aux in eval) at a fraction of a dilated ResNet's cost: eight 769 px
        windows of the real model take a minute on one core; scripts/rehearse.sh runs the real one."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 19, 8, stride=8)

        def forward(self, x):
            return self.conv(x), None

    torch.manual_seed(0)
    model = Stride8().eval()
    windows = []
    model.register_forward_pre_hook(lambda _, args: windows.append(tuple(args[0].shape[-2:])))
    pred = fcn.predict(model, image, cfg, "fp32")
    assert tuple(pred.shape) == (1024, 2048) and int(pred.max()) < 19
    assert windows == [(769, 769)] * 8  # mmseg's grid over the 2049 x 1025 test scale: 2 rows x 4 columns
