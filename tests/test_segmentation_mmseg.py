"""mmsegmentation 1.2.x: equivalence on identical inputs (the mIoU of ``benchmarks.segmentation.evaluation`` vs
``IoUMetric``, ``slide_logits`` vs ``EncoderDecoder.slide_inference``, the native FCN R50-D8 vs mmseg's on the same
weights) and the ``engine=mmseg`` runner (generated config, tiny e2e run, resume).

mmseg comes with the project's ``engines`` extra (mmsegmentation 1.2.2, mmengine 0.10.7, mmcv-lite 2.1.0, ftfy,
regex), which ``make`` installs, so CI runs these tests; by hand: ``pip install -e '.[engines]'``. Without it the
module skips and says so. mmcv-lite lacks ``mmcv.ops`` (compiled ops), which ``mmseg.models`` imports:
``benchmarks/segmentation/mmseg.py``'s ``import_mmseg`` puts a stub module in its place (FCN uses none of its ops).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmarks.segmentation.runner as seg
from benchmarks.segmentation import evaluation as seg_eval
from benchmarks.segmentation import fcn
from benchmarks.segmentation.evaluation import intersect_and_union, segmentation_scores, slide_logits
from benchmarks.segmentation.mmseg import (
    data_list,
    import_mmseg,
    mmseg_config,
    mmseg_fcn_config,
    read_data_list,
    write_data_list,
)
from byol_bench.backbone import build_resnet
from byol_bench.config import load_config

if not import_mmseg():
    pytest.skip("mmsegmentation is not importable: install the project's engines extra, pip install -e '.[engines]' "
                "(make does; docs/SEGMENTATION.md)", allow_module_level=True)

from mmengine.config import ConfigDict
from mmengine.structures import PixelData
from mmseg.evaluation import IoUMetric
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample


def _to_mmseg_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our FCN state dict -> mmseg EncoderDecoder keys (ConvModule: ``.conv`` / ``.bn``)."""
    out = {}
    for key, value in state.items():
        for head in ("decode_head", "auxiliary_head"):
            ours = "aux_head" if head == "auxiliary_head" else head
            if key.startswith(ours + "."):
                rest = key[len(ours) + 1:]
                rest = rest.replace(".0.weight", ".conv.weight") if rest.startswith("conv_cat") else rest
                for i in range(2):
                    rest = rest.replace(f"convs.{i}.0.", f"convs.{i}.conv.").replace(f"convs.{i}.1.", f"convs.{i}.bn.")
                rest = rest.replace("conv_cat.1.", "conv_cat.bn.")
                key = f"{head}.{rest}"
        out[key] = value
    return out


def test_miou_equals_mmseg_iou_metric():
    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(7)]  # class 5: predicted, never labelled (IoU 0); class 6: absent (NaN)
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": names}
    areas = np.zeros((4, 7), dtype=np.int64)
    for _ in range(5):
        label = rng.integers(0, 5, (20, 30))
        label[rng.random((20, 30)) < 0.2] = 255
        pred = np.where(rng.random((20, 30)) < 0.6, label % 255, rng.integers(0, 6, (20, 30)))
        pred[pred == 255] = 0
        areas += intersect_and_union(pred, label, 7)
        metric.process({}, [{"pred_sem_seg": {"data": torch.from_numpy(pred)[None]},
                             "gt_sem_seg": {"data": torch.from_numpy(label)[None]}}])
    theirs = metric.compute_metrics(metric.results)
    ours = segmentation_scores(areas, names)
    assert ours["IoU"]["c5"] == 0.0 and ours["IoU"]["c6"] is None
    # IoUMetric rounds to 2 decimals
    assert round(ours["mIoU"], 2) == pytest.approx(theirs["mIoU"])
    assert round(ours["aAcc"], 2) == pytest.approx(theirs["aAcc"])


def test_slide_inference_equals_mmseg():
    model = MODELS.build(mmseg_fcn_config("resnet18", 3, True, dict(mode="slide", crop_size=(5, 7), stride=(3, 4))))
    weights = torch.randn(3, 3)

    def forward(crop):  # a position-dependent function of the crop: any misplaced window shows
        return torch.einsum("kc,nchw->nkhw", weights, crop) + crop.mean((1, 2, 3), keepdim=True)

    model.test_cfg = ConfigDict(model.test_cfg)  # as mmseg's runner hands it over
    model.encode_decode = lambda inputs, metas: forward(inputs)
    images = torch.randn(1, 3, 13, 17)
    theirs = model.slide_inference(images, [dict(img_shape=(13, 17), ori_shape=(13, 17), pad_shape=(13, 17))])
    torch.testing.assert_close(slide_logits(forward, images, (5, 7), (3, 4)), theirs)


def test_fcn_r50_d8_equals_mmseg_on_the_same_weights():
    torch.manual_seed(0)
    ours = fcn.FCN(build_resnet("resnet50"), 21).eval()
    theirs = MODELS.build(mmseg_fcn_config("resnet50", 21, False, dict(mode="whole"))).eval()
    state = _to_mmseg_keys({k: v for k, v in ours.state_dict().items() if not k.startswith("backbone.fc")})
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():  # eval mode: dropout off, BN on the (identical) running statistics
        logits, _ = ours(x)
        net = ours.backbone
        c3 = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))
        aux = ours.aux_head(c3)
        feats = theirs.extract_feat(x)
        torch.testing.assert_close(feats[2], c3, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(theirs.decode_head(feats), logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(theirs.auxiliary_head(feats), aux, rtol=1e-4, atol=1e-4)
    # the loss: mmseg's decode + aux losses on the same logits and labels
    labels = torch.randint(0, 21, (1, 64, 80))
    labels[:, :8] = 255
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=labels)
    mine = fcn.seg_losses(logits, aux, labels, align_corners=False)
    theirs_decode = theirs.decode_head.loss_by_feat(logits, [sample])["loss_ce"]
    theirs_aux = theirs.auxiliary_head.loss_by_feat(aux, [sample])["loss_ce"]
    torch.testing.assert_close(mine["loss_decode"], theirs_decode, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(0.4 * mine["loss_aux"], theirs_aux, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- engine=mmseg


def _cfg(ckpt: Path, data: Path, out: Path, *extra: str, preset: str = "tiny") -> seg.SegmentationConfig:
    return load_config(seg.SegmentationConfig, preset, [f"ckpt={ckpt}", f"data_root={data}", f"out_dir={out}",
                                                        "engine=mmseg", *extra], preset_dir=seg.PRESET_DIR)


@pytest.mark.parametrize("preset", ["fcn_r50-d8_4xb4-20k_voc12aug-512x512", "fcn_r50-d8_4xb2-40k_cityscapes-769x769"])
def test_generated_config_is_the_preset(preset, tmp_path):
    cfg = _cfg(tmp_path / "x.pth", tmp_path, tmp_path, preset=preset)
    city = cfg.dataset == "cityscapes"
    config = mmseg_config(cfg, "resnet50", 19 if city else 21, tmp_path / "w.pth", tmp_path,
                          tmp_path / "train_list.json", seg_eval.CLASS_NAMES[cfg.dataset])
    model, pipeline = config["model"], config["train_dataloader"]["dataset"]["pipeline"]
    # the samples stay in their file: mmengine prints the config into its log and every checkpoint
    assert config["train_dataloader"]["dataset"]["data_list_file"] == str(tmp_path / "train_list.json")
    crop = (769, 769) if city else (512, 512)
    assert config["train_cfg"]["max_iters"] == (40000 if city else 20000)
    assert config["train_dataloader"]["batch_size"] == (2 if city else 4)
    assert config["optim_wrapper"]["optimizer"] == dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=5e-4)
    assert config["param_scheduler"] == [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0,
                                              end=40000 if city else 20000, by_epoch=False)]
    assert [t["type"] for t in pipeline] == ["LoadImageFromFile", "LoadAnnotations", "RandomResize", "RandomCrop",
                                             "RandomFlip", "PhotoMetricDistortion", "PackSegInputs"]
    assert pipeline[2]["scale"] == ((2049, 1025) if city else (2048, 512)) and pipeline[2]["ratio_range"] == (0.5, 2.0)
    assert pipeline[3] == dict(type="RandomCrop", crop_size=crop, cat_max_ratio=0.75)
    assert model["data_preprocessor"]["size"] == crop and model["data_preprocessor"]["bgr_to_rgb"]
    assert model["auxiliary_head"]["loss_decode"]["loss_weight"] == 0.4
    assert model["decode_head"]["loss_decode"]["loss_weight"] == 1.0
    assert model["decode_head"]["align_corners"] is city and model["auxiliary_head"]["align_corners"] is city
    assert model["test_cfg"] == (dict(mode="slide", crop_size=(769, 769), stride=(513, 513)) if city
                                 else dict(mode="whole"))
    assert config["test_pipeline"][1]["scale"] == ((2049, 1025) if city else (2048, 512))


def test_pretrained_export_loads_into_mmseg_backbone_and_labels_map(ckpt, tiny_data, tmp_path):
    """The adapters' mmseg export is the backbone's Pretrained init (every tensor); Cityscapes labelIds -> trainIds."""
    from adapters.export import to_mm
    from byol_bench.checkpoint import atomic_save

    state = torch.load(ckpt)
    weights = atomic_save(to_mm(state, {}), tmp_path / "w.pth")
    cfg = _cfg(ckpt, tiny_data, tmp_path)
    model = MODELS.build(mmseg_config(cfg, "resnet18", 21, weights, tmp_path, tmp_path / "list.json", ())["model"])
    model.init_weights()
    theirs = model.backbone.state_dict()
    assert set(theirs) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(theirs[key], value, msg=key)
    city = seg.open_dataset("cityscapes", str(tiny_data), "val")
    infos = data_list(city, "cityscapes")
    label_map = infos[0]["label_map"]
    assert label_map[7] == 0 and label_map[33] == 18 and label_map[0] == 255  # road, bicycle, unlabeled
    # the dataset's file: the same infos back, label_map keys ints again (mmseg compares them to pixel values)
    assert read_data_list(write_data_list(infos, tmp_path / "city.json")) == infos


def test_engine_mmseg_tiny_run_writes_a_record_and_resumes(ckpt, tiny_data, tmp_path):
    cfg = _cfg(ckpt, tiny_data, tmp_path, "max_iters=4", "ckpt_every_iters=2")
    metrics = seg.run(cfg)
    record_path = next((tmp_path / "records").glob("segmentation_voc12aug_*.json"))
    record = json.loads(record_path.read_text())
    details = record["details"]
    assert record["protocol"] == "segmentation" and record["dataset"] == "voc12aug"
    assert details["engine"] == "mmseg" and details["mmseg_version"].startswith("1.2")
    assert 0 <= metrics["mIoU"] <= 100 and record["metrics"]["mIoU"] == metrics["mIoU"]
    assert len(details["IoU"]) == 21
    val = seg.open_dataset("voc12aug", str(tiny_data), "val")
    pngs = sorted(Path(details["predictions"]).glob("*.png"))
    assert len(pngs) == len(val)
    # the record's mIoU is our metric on those files
    areas = seg_eval.score_files(val, list(range(len(val))), "voc12aug", Path(details["predictions"]))
    assert seg.segmentation_scores(areas, seg_eval.CLASS_NAMES["voc12aug"])["mIoU"] == pytest.approx(metrics["mIoU"])
    log_path = next((record_path.parents[1] / "runs").glob("segmentation/*/log.jsonl"))
    log = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [row["step"] for row in log] == [4] and log[0]["loss"] > 0
    # mmseg's dataset read the train set from the run folder's file, not from the config (which mmengine prints)
    mm_dir = log_path.parent / "mmseg"
    train = seg.open_dataset("voc12aug", str(tiny_data), "train")
    assert read_data_list(mm_dir / "train_list.json") == data_list(train, "voc12aug")
    assert "seg_map_path" not in (mm_dir / "config.py").read_text()
    # resume=auto: mmengine's own checkpoint (iteration 4 of 4) is loaded (weights_only off), the same model predicts
    record_path.unlink()
    assert seg.run(cfg)["mIoU"] == pytest.approx(metrics["mIoU"])
    mm_runs = sorted(p for p in (record_path.parents[1] / "runs").glob("segmentation/*/mmseg/*") if p.is_dir())
    assert len(mm_runs) == 2
    resumed = mm_runs[-1] / "vis_data" / "scalars.json"  # nothing trained after the resume: no loss logged
    assert not resumed.exists() or "loss" not in resumed.read_text()
