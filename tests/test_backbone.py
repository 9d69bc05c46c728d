"""feature1..5 follow PROTOCOLS.md A.1: stem before max-pool, fixed AvgPool parameters."""

from __future__ import annotations

import pytest
import torch

from byol_bench.backbone import MultiLayerFeatures, build_resnet, feature_channels, pooled_dims


def test_resnet50_pooled_dims_at_224():
    assert pooled_dims(build_resnet("resnet50")) == {
        "feat1": 9216, "feat2": 9216, "feat3": 8192, "feat4": 9216, "feat5": 8192}


def test_resnet18_dims_follow_channels():
    net = build_resnet("resnet18")
    assert feature_channels(net) == {"feat1": 64, "feat2": 64, "feat3": 128, "feat4": 256, "feat5": 512}
    assert pooled_dims(net) == {"feat1": 9216, "feat2": 2304, "feat3": 2048, "feat4": 2304, "feat5": 2048}


def test_feat1_is_stem_before_maxpool_and_pooling_counts_padding():
    torch.manual_seed(0)
    net = build_resnet("resnet18").eval()
    x = torch.randn(2, 3, 224, 224)
    maps = MultiLayerFeatures(net, pooled=False)(x)
    with torch.no_grad():
        stem = net.relu(net.bn1(net.conv1(x)))
        assert torch.equal(maps["feat1"], stem)
        assert maps["feat1"].shape == (2, 64, 112, 112)
        assert torch.equal(maps["feat5"], net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(stem))))))
        pooled = MultiLayerFeatures(net, layers=("feat1",))(x)["feat1"]
        # count_include_pad=True: the corner window sees 6x6 real pixels but divides by 100.
        assert torch.allclose(pooled.view(2, 64, 12, 12)[:, :, 0, 0], stem[:, :, :6, :6].sum((2, 3)) / 100, atol=1e-5)


def test_only_requested_layers_are_computed():
    out = MultiLayerFeatures(build_resnet("resnet18").eval(), layers=("feat2",))(torch.zeros(1, 3, 224, 224))
    assert list(out) == ["feat2"]


def test_timm_resnet_and_bad_names():
    assert pooled_dims(build_resnet("timm:resnet18"))["feat5"] == 2048
    with pytest.raises(ValueError, match="valid: resnet18"):
        build_resnet("vgg16")
    with pytest.raises(ValueError, match="valid: feat1"):
        MultiLayerFeatures(build_resnet("resnet18"), layers=("feat9",))
