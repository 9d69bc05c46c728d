"""LARS: the update equals mmselfsup's formula (B §1.5); the exclusions are exactly norm params and biases (A.2)."""

from __future__ import annotations

import pytest
import torch
from timm.optim import Lars as TimmLars
from torch import nn

from byol_bench.backbone import build_resnet
from byol_bench.lars import LARS, excluded_parameter_names, param_groups
from pretrain.model import BYOL

ETA, EPS, WD, MOMENTUM = 1e-3, 1e-8, 1e-2, 0.9


def reference_step(w: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None, lr: float, wd: float,
                   adapt: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """B §1.5 written out for one tensor, in float64."""
    w_norm, g_norm = w.norm(), g.norm()
    local = ETA * w_norm / (g_norm + wd * w_norm + EPS) if adapt and w_norm > 0 and g_norm > 0 else 1.0
    d = (g + wd * w) * local * lr
    buf = d if buf is None else MOMENTUM * buf + d
    return w - buf, buf


def test_step_equals_formula_under_changing_lr() -> None:
    torch.manual_seed(0)
    weights = [torch.randn(5, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64),
               torch.zeros(4, dtype=torch.float64)]  # a zero tensor takes local = 1
    params = [nn.Parameter(w.clone()) for w in weights]
    opt = LARS([{"params": params[:1] + params[2:], "weight_decay": WD, "lars_adapt": True},
                {"params": params[1:2], "weight_decay": 0.0, "lars_adapt": False}],
               lr=0.1, momentum=MOMENTUM, eta=ETA, eps=EPS)
    ref = [w.clone() for w in weights]
    bufs: list[torch.Tensor | None] = [None, None, None]
    for lr in (0.1, 0.5, 2.0):  # warm-up-like changes: the lr must sit inside the momentum buffer
        grads = [torch.randn_like(w) for w in weights]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        for i, g in enumerate(grads):
            adapt = i != 1
            ref[i], bufs[i] = reference_step(ref[i], g, bufs[i], lr, WD if adapt else 0.0, adapt)
    for p, r in zip(params, ref, strict=True):
        torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-12)


def test_timm_lars_matches_only_at_constant_lr() -> None:
    """Why byol_bench/lars.py exists: timm keeps the lr outside the momentum buffer."""
    def run(opt_cls: type, lrs: tuple[float, ...]) -> torch.Tensor:
        torch.manual_seed(0)
        p = nn.Parameter(torch.randn(6, dtype=torch.float64))
        kwargs = {"trust_coeff": ETA} if opt_cls is TimmLars else {"eta": ETA}
        opt = opt_cls([p], lr=lrs[0], momentum=MOMENTUM, weight_decay=WD, eps=EPS, **kwargs)
        for lr in lrs:
            p.grad = torch.randn_like(p)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
        return p.detach()

    torch.testing.assert_close(run(LARS, (0.3, 0.3, 0.3)), run(TimmLars, (0.3, 0.3, 0.3)))
    assert not torch.allclose(run(LARS, (0.1, 0.5, 2.0)), run(TimmLars, (0.1, 0.5, 2.0)))


def test_exclusions_are_exactly_norm_params_and_biases() -> None:
    model = BYOL(build_resnet("resnet50"), hidden_dim=32, out_dim=8)
    names = {n for n, _ in model.named_parameters()}
    norm_prefixes = (".bn1.", ".bn2.", ".bn3.", ".downsample.1.", "projector.1.", "predictor.1.")
    expected = {n for n in names
                if n.endswith(".bias") or any(s in f".{n}" for s in norm_prefixes)}
    assert any("downsample.1.weight" in n for n in expected)  # the shortcut BN that mmselfsup's regex misses
    assert excluded_parameter_names(model) == expected
    # Everything else, i.e. every conv and linear weight, is adapted.
    weights = {f"{name}.weight" for name, module in model.named_modules()
               if isinstance(module, (nn.Conv2d, nn.Linear))}
    assert names - expected == weights


def test_param_groups_cover_trainable_params_once() -> None:
    model = BYOL(build_resnet("resnet18"), hidden_dim=32, out_dim=8)
    groups = param_groups(model, weight_decay=1e-6)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable)  # the target network is not optimised
    assert groups[0]["lars_adapt"] and groups[0]["weight_decay"] == 1e-6
    assert not groups[1]["lars_adapt"] and groups[1]["weight_decay"] == 0.0


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="eta"):
        LARS([nn.Parameter(torch.zeros(1))], lr=0.1, eta=0.0)
