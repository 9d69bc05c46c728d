"""Checks of the exports against the real libraries; each test skips when its library is not importable.

mmsegmentation comes with the project's ``engines`` extra (``make`` installs it, so CI runs its test; by hand:
``pip install -e '.[engines]'``). detectron2 has no PyPI release: its test skips unless it was built from source
(``tests/detectron2_support.py`` prints the command; docs/DETECTION.md, docs/ADAPTERS.md).

Each test writes our export of a random ResNet-50 (random BN statistics too), loads it with the library's own
loader and ResNet, and compares every stage's output with ours on the same input.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2_support import HAS_DETECTRON2, SKIP_REASON  # tests/ is on sys.path
from test_adapters import random_trunk

from adapters import load_backbone, to_torchvision, write_export
from benchmarks.segmentation.mmseg import import_mmseg
from byol_bench.backbone import MultiLayerFeatures

TOLERANCE = 1e-4  # max abs difference allowed between their features and ours


def _export(tmp_path: Path, to: str, name: str) -> tuple[Path, dict[str, torch.Tensor], torch.Tensor]:
    """Write a random R50 trunk for ``to``; return the file, our feature2..5 maps and the input."""
    state, report = to_torchvision(random_trunk("resnet50", seed=11))
    out = tmp_path / name
    write_export(state, report, out, to)
    model, _ = load_backbone(out)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ours = MultiLayerFeatures(model.eval(), layers=("feat2", "feat3", "feat4", "feat5"), pooled=False)(images)
    return out, ours, images


def _max_abs_diff(theirs: list[torch.Tensor], ours: dict[str, torch.Tensor]) -> list[float]:
    return [float((a - b).abs().max()) for a, b in zip(theirs, ours.values(), strict=True)]


def test_mmseg_resnet_loads_our_export_and_matches(tmp_path: Path) -> None:
    # import_mmseg: mmcv-lite has no compiled ops, but mmseg imports mmcv.ops at package load; the engine stubs it
    if not import_mmseg():
        pytest.skip("mmsegmentation is not importable: install the project's engines extra, "
                    "pip install -e '.[engines]' (make does)")
    from mmengine.runner import load_checkpoint
    from mmseg.models.backbones import ResNet

    out, ours, images = _export(tmp_path, "mmseg", "r50_mmseg.pth")
    # The benchmark's backbone (PROTOCOLS.md B §6.1: plain stem, d8 dilations) loads the file strictly ...
    d8 = ResNet(depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True,
                norm_cfg=dict(type="BN", requires_grad=True), norm_eval=False, style="pytorch")
    load_checkpoint(d8, str(out), map_location="cpu", strict=True)
    # ... and with the plain strides (same weights, same architecture as ours) gives the same features.
    plain = ResNet(depth=50, norm_cfg=dict(type="BN", requires_grad=True), style="pytorch",
                   init_cfg=dict(type="Pretrained", checkpoint=str(out)))
    plain.init_weights()
    plain.eval()  # mmseg's ResNet.train() returns None, so no chaining
    assert torch.equal(plain.layer4[2].bn3.running_var, load_backbone(out)[0].layer4[2].bn3.running_var)
    with torch.no_grad():
        theirs = plain(images)
    diffs = _max_abs_diff(list(theirs), ours)
    print(f"mmseg ResNet-50 vs ours, max abs diff per stage: {diffs}")
    assert max(diffs) <= TOLERANCE


def test_detectron2_resnet_loads_our_pkl_and_matches(tmp_path: Path) -> None:
    if not HAS_DETECTRON2:
        pytest.skip(SKIP_REASON)
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import build_resnet_backbone

    out, ours, images = _export(tmp_path, "detectron2", "r50.pkl")
    cfg = get_cfg()
    cfg.merge_from_file(str(out.with_suffix(".yaml")))  # our fragment must be a valid detectron2 config
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    cfg.MODEL.RESNETS.NORM = "BN"  # the benchmark uses SyncBN; same parameters, and every BN buffer must load
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    checkpointer = DetectionCheckpointer(backbone)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(out)))
    assert not incompatible.missing_keys and not incompatible.unexpected_keys, incompatible
    with torch.no_grad():
        theirs = backbone.eval()(images)
    diffs = _max_abs_diff([theirs[name] for name in cfg.MODEL.RESNETS.OUT_FEATURES], ours)
    print(f"detectron2 ResNet-50 vs ours, max abs diff per stage: {diffs}")
    assert max(diffs) <= TOLERANCE
