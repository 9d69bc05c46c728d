"""BYOL networks and loss: analytic invariants (bounded symmetrised loss, stop-gradient, target starts equal to
online, EMA at m = 1 is the identity), the recipe's head shapes, and one train step against a plain loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from byol_bench.backbone import build_resnet
from pretrain.model import BYOL, MLPHead, mmselfsup_loss, regression_loss


@pytest.fixture(scope="module")
def byol() -> BYOL:
    torch.manual_seed(0)
    return BYOL(build_resnet("resnet18"), hidden_dim=64, out_dim=16)


def test_loss_is_the_papers_normalised_mse_and_bounded() -> None:
    torch.manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(8, 16) for _ in range(4))
    # Paper eq. 2, written out: the squared distance of the L2-normalised rows, averaged over the batch.
    for p, z in ((p1, z2), (p2, z1)):
        by_hand = ((p / p.norm(dim=1, keepdim=True) - z / z.norm(dim=1, keepdim=True)) ** 2).sum(dim=1).mean()
        torch.testing.assert_close(regression_loss(p, z), by_hand, rtol=0, atol=1e-6)
    # Each row's term depends only on the direction of its own prediction and target.
    scaled = regression_loss(p1 * torch.rand(8, 1).add(0.5), z2 * torch.rand(8, 1).add(0.5))
    torch.testing.assert_close(scaled, regression_loss(p1, z2), rtol=0, atol=1e-6)
    pair = regression_loss(p1, z2) + regression_loss(p2, z1)
    assert 0 <= pair <= 8
    # Extremes: aligned vectors give 0 per term, opposite ones 4 per term, so 8 for the pair.
    assert regression_loss(p1, 3 * p1).item() == pytest.approx(0, abs=1e-6)
    assert (regression_loss(p1, -p1) + regression_loss(p2, -p2)).item() == pytest.approx(8, abs=1e-6)
    # mmselfsup logs 2 * sum(-mean cos) = our value - 4.
    cos = nn.functional.cosine_similarity
    mm_value = 2 * (-cos(p1, z2).mean() - cos(p2, z1).mean())
    assert mmselfsup_loss(pair.item()) == pytest.approx(mm_value.item(), abs=1e-5)


def test_loss_stops_gradient_through_target() -> None:
    p, z = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    regression_loss(p, z).backward()
    assert p.grad is not None and z.grad is None


def test_forward_is_symmetrised_sum(byol: BYOL) -> None:
    """L(v1 -> v2) + L(v2 -> v1) with each view in its own train-mode forward, written out with 2 - 2 cos."""
    torch.manual_seed(1)
    v1, v2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    state = {k: v.clone() for k, v in byol.state_dict().items()}
    assert byol.training and byol.target.training  # the target network normalises with batch statistics too
    with torch.no_grad():
        p1, p2 = byol.predictor(byol.online(v1)), byol.predictor(byol.online(v2))
        z1, z2 = byol.target(v1), byol.target(v2)
    loss = byol(v1, v2)  # train-mode outputs do not depend on the running statistics the calls above updated
    byol.load_state_dict(state)  # leave the shared fixture as it was

    def term(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (2 - 2 * nn.functional.cosine_similarity(p, z, dim=1)).mean()

    one_way, other_way = term(p1, z2), term(p2, z1)
    assert abs(one_way - other_way) > 1e-3  # the two directions differ: a doubled or averaged term would show
    torch.testing.assert_close(loss.detach(), one_way + other_way, rtol=0, atol=1e-5)
    assert 0 <= loss.item() <= 8


def test_target_starts_equal_and_gets_no_gradients(byol: BYOL) -> None:
    online, target = byol.online.state_dict(), byol.target.state_dict()
    assert online.keys() == target.keys()
    assert all(torch.equal(online[k], target[k]) for k in online)
    assert not any(p.requires_grad for p in byol.target.parameters())
    byol(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)).backward()
    assert all(p.grad is None for p in byol.target.parameters())
    assert all(p.grad is not None for p in byol.online.parameters())
    assert all(p.grad is not None for p in byol.predictor.parameters())
    byol.zero_grad(set_to_none=True)


def test_ema_momentum_one_is_identity_and_formula_holds() -> None:
    torch.manual_seed(0)
    model = BYOL(build_resnet("resnet18"), hidden_dim=32, out_dim=8)
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(torch.randn_like(p))
        for buf in model.online.buffers():  # else the buffer check below would compare equal tensors
            buf.add_(torch.rand_like(buf) + 0.5 if buf.is_floating_point() else 1)
    before = {k: v.clone() for k, v in model.target.state_dict().items()}
    model.update_target(1.0)
    assert all(torch.equal(before[k], v) for k, v in model.target.state_dict().items())
    model.update_target(0.75)
    online = dict(model.online.named_parameters())
    for name, param in model.target.named_parameters():
        torch.testing.assert_close(param, 0.75 * before[name] + 0.25 * online[name], rtol=1e-6, atol=1e-6)
    # Buffers (BN running statistics) are never averaged: the target keeps its own.
    online_buffers = dict(model.online.named_buffers())
    for name, buf in model.target.named_buffers():
        assert torch.equal(buf, before[name]) and not torch.equal(buf, online_buffers[name]), name


def test_heads_match_the_recipe(byol: BYOL) -> None:
    for head in (byol.online.projector, byol.predictor):
        assert isinstance(head, MLPHead)
        first, bn, relu, last = head
        assert first.bias is not None and last.bias is None
        assert isinstance(bn, nn.BatchNorm1d) and isinstance(relu, nn.ReLU)
    assert byol.online.projector[0].in_features == 512  # ResNet-18 pooled width
    assert byol.predictor[0].in_features == byol.predictor[3].out_features == 16
    keys = set(byol.online.backbone.state_dict())
    assert "conv1.weight" in keys and "layer4.1.bn2.running_var" in keys
    assert not any(k.startswith("fc.") for k in keys)


def test_train_step_equals_a_plain_reference_loop() -> None:
    """One optimizer step (2 accumulation passes) of the trainer vs the recipe written out with Python loops."""
    import copy

    from byol_bench.lars import LARS, excluded_parameter_names, param_groups
    from pretrain.train import train_step

    torch.manual_seed(0)
    ours = BYOL(build_resnet("resnet18"), hidden_dim=32, out_dim=8).double()
    ref = copy.deepcopy(ours)
    views = [(torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randn(4, 3, 32, 32, dtype=torch.float64))
             for _ in range(2)]
    lr, momentum, wd, eta = 0.5, 0.9, 1e-2, 1e-3
    optimizer = LARS(param_groups(ours, wd), lr=lr, momentum=momentum, weight_decay=wd, eta=eta)
    stream = iter(views)
    loss = train_step(ours, ours, None, optimizer, lambda: next(stream), accum_steps=2, lr=lr, momentum=0.9,
                      autocast=torch.autocast("cpu", enabled=False))

    # The reference: separate forwards per view, summed loss, mean over the accumulation window.
    def cos_term(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (2 - 2 * nn.functional.cosine_similarity(p, z.detach(), dim=1)).mean()

    total = 0.0
    for v1, v2 in views:
        p1, p2 = ref.predictor(ref.online(v1)), ref.predictor(ref.online(v2))
        with torch.no_grad():
            z1, z2 = ref.target(v1), ref.target(v2)
        step_loss = cos_term(p1, z2) + cos_term(p2, z1)
        (step_loss / 2).backward()
        total += step_loss.item() / 2
    excluded = excluded_parameter_names(ref)
    with torch.no_grad():
        for name, w in ref.named_parameters():
            if not w.requires_grad:
                continue
            g = w.grad
            decay = 0.0 if name in excluded else wd
            local = 1.0 if name in excluded else (eta * w.norm() / (g.norm() + decay * w.norm() + 1e-8)).item()
            w -= (g + decay * w) * local * lr  # first step: the momentum buffer is the update itself
        for t, o in zip(ref.target.parameters(), ref.online.parameters(), strict=True):
            t.copy_(0.9 * t + 0.1 * o)
    assert loss.item() == pytest.approx(total, rel=1e-10)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
