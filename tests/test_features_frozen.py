"""assert_frozen catches any change to a frozen backbone: a weight, a BN running statistic, by one ulp (A.1)."""

from __future__ import annotations

import pytest
import torch

from byol_bench.backbone import build_resnet
from byol_bench.features import assert_frozen, state_snapshot


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_resnet("resnet18").eval()


def test_an_eval_forward_leaves_the_backbone_frozen(model):
    loaded = state_snapshot(model)
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert_frozen(model, loaded, "r18.pth")  # eval-mode BN reads its statistics, never writes them


def test_a_weight_changed_by_one_ulp_in_place_is_caught(model):
    loaded = state_snapshot(model)
    with torch.no_grad():
        weight = model.layer3[0].conv1.weight
        weight[0, 0, 0, 0] = torch.nextafter(weight[0, 0, 0, 0], torch.tensor(1.0))
    # The snapshot is a copy: the in-place change shows up, the message names the file and the tensor.
    with pytest.raises(RuntimeError, match=r"r18\.pth: the frozen backbone changed .*'layer3\.0\.conv1\.weight'"):
        assert_frozen(model, loaded, "r18.pth")


@pytest.mark.parametrize("buffer", ["running_mean", "running_var", "num_batches_tracked"])
def test_a_changed_bn_statistic_is_caught(model, buffer):
    loaded = state_snapshot(model)
    with torch.no_grad():
        getattr(model.layer4[1].bn2, buffer).add_(1)
    with pytest.raises(RuntimeError, match=rf"'layer4\.1\.bn2\.{buffer}'"):
        assert_frozen(model, loaded, "r18.pth")


def test_bn_left_in_train_mode_is_caught(model):
    """The bug A.1 guards against: a forward in train mode updates every BN layer's running statistics."""
    loaded = state_snapshot(model)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(RuntimeError, match=r"\['bn1\.running_mean', 'bn1\.running_var', 'bn1\.num_batches_tracked'"):
        assert_frozen(model, loaded, "r18.pth")
