"""Equivalence with mmsegmentation 1.2.x on identical inputs (skipped when ``mmseg`` is not importable): the mIoU of
``byol_bench.segmentation`` vs ``IoUMetric``, ``slide_logits`` vs ``EncoderDecoder.slide_inference``, and the native
FCN R50-D8 vs mmseg's on the same weights.

mmseg 1.2.x installs with mmcv-lite, which lacks ``mmcv.ops`` (compiled ops): importing ``mmseg.models`` fails on it,
so ``scripts/bench_seg.py``'s ``import_mmseg`` puts a stub module in its place (FCN uses none of its ops). Run by
hand once (docs/SEGMENTATION.md): ``pip install --no-deps --target DIR mmsegmentation==1.2.2 mmengine
mmcv-lite==2.1.0 opencv-python-headless addict yapf platformdirs termcolor rich
prettytable wcwidth ftfy regex``, then ``PYTHONPATH=DIR pytest tests/test_segmentation_mmseg.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmarks.segmentation as seg
from byol_bench.backbone import build_resnet
from byol_bench.segmentation import intersect_and_union, segmentation_scores, slide_logits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_seg import import_mmseg, mmseg_fcn_config  # the mmcv.ops stub and B §6.1's mmseg model config

if not import_mmseg():
    pytest.skip("mmseg is not importable", allow_module_level=True)

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
    ours = seg.FCN(build_resnet("resnet50"), 21).eval()
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
    mine = seg.seg_losses(logits, aux, labels, align_corners=False)
    theirs_decode = theirs.decode_head.loss_by_feat(logits, [sample])["loss_ce"]
    theirs_aux = theirs.auxiliary_head.loss_by_feat(aux, [sample])["loss_ce"]
    torch.testing.assert_close(mine["loss_decode"], theirs_decode, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(0.4 * mine["loss_aux"], theirs_aux, rtol=1e-5, atol=1e-6)
