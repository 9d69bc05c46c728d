"""LARS exactly as mmselfsup v0.5.0 applies it (PROTOCOLS.md B §1.5), with the A.2 exclusions.

Shared: the BYOL pretrainer uses it, and the linear probe's SimSiam setting (B §3.3).

For each parameter tensor w with gradient g (You et al., "Large Batch Training of Convolutional Networks", 2017)::

    local = eta * ||w|| / (||g|| + wd * ||w|| + eps)      (1 if ||w|| = 0 or ||g|| = 0)
    d     = (g + wd * w) * local * lr
    buf   = momentum * buf + d                            (the first step sets buf = d)
    w     = w - buf

Excluded tensors (every normalisation parameter and every bias, :func:`param_groups`) get wd = 0 and local = 1,
i.e. plain SGD with momentum.

Why not timm's ``Lars``: it computes the same trust ratio and skips adaptation where wd = 0, but it keeps the
learning rate **outside** the momentum buffer (``buf = m buf + d / lr``; ``w -= lr * buf``). That equals the rule
above only while lr is constant; under warm-up and cosine, every step differs. mmselfsup, optax's ``lars`` and the
BYOL reference code scale by lr before the momentum trace, as here. ``tests/test_lars.py`` checks both
facts. Other references: NVIDIA apex ``LARC``, timm ``optim/lars.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim import Optimizer

# Module types whose parameters are normalisation parameters (weight/bias of BN, SyncBN, GN, LN, IN).
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def excluded_parameter_names(model: nn.Module) -> set[str]:
    """Names of every normalisation parameter and every bias of ``model`` (trainable or not).

    Found from module types, not from name patterns: mmselfsup's ``(bn|gn)(\\d+)?.(weight|bias)`` regex misses the
    shortcut BN ``downsample.1.weight`` (B §1.5, gotcha 4).
    """
    names = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for param_name, _ in module.named_parameters(recurse=False):
            if isinstance(module, NORM_TYPES) or param_name == "bias":
                names.add(prefix + param_name)
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two LARS groups over the trainable parameters: adapted with weight decay, and excluded (no wd, no LARS)."""
    excluded = excluded_parameter_names(model)
    regular, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if name in excluded else regular).append(param)
    return [
        {"params": regular, "weight_decay": weight_decay, "lars_adapt": True},
        {"params": plain, "weight_decay": 0.0, "lars_adapt": False},
    ]


class LARS(Optimizer):
    """mmselfsup's LARS, vectorised with ``torch._foreach_*`` (one kernel per op over all tensors of a group).

    Args:
        params: tensors or param groups; a group's ``lars_adapt=False`` turns the trust ratio off for it.
        lr: learning rate (the trainer sets each group's ``lr`` every step from the precomputed schedule).
        momentum: momentum factor (no dampening, no Nesterov: the recipe uses neither).
        weight_decay: L2 coefficient added to the gradient before adaptation.
        eta: trust coefficient.
        eps: keeps the trust-ratio denominator away from zero.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3, eps: float = 1e-8) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0 or eps < 0:
            raise ValueError(f"invalid LARS settings lr={lr} momentum={momentum} weight_decay={weight_decay} "
                             f"eta={eta} eps={eps}: lr, momentum, weight_decay, eps must be >= 0 and eta > 0")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "eps": eps,
                    "lars_adapt": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Apply one update to every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            lr, wd = group["lr"], group["weight_decay"]
            # d = g + wd * w in new tensors: p.grad stays untouched, as in mmselfsup
            updates = torch._foreach_add(grads, params, alpha=wd)
            if group["lars_adapt"]:
                w_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = group["eta"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                trust = torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                torch._foreach_mul_(updates, list((trust * lr).unbind()))
            else:
                torch._foreach_mul_(updates, lr)
            self._momentum_and_apply(params, updates, group["momentum"])
        return loss

    def _momentum_and_apply(self, params: list[torch.Tensor], updates: list[torch.Tensor],
                            momentum: float) -> None:
        states = [self.state[p] for p in params]
        if momentum != 0:
            if all("momentum_buffer" in s for s in states):
                buffers = [s["momentum_buffer"] for s in states]
                torch._foreach_mul_(buffers, momentum)
                torch._foreach_add_(buffers, updates)
            else:  # first step (or a group whose tensors joined late): buf = d
                for state, update in zip(states, updates, strict=True):
                    if "momentum_buffer" in state:
                        state["momentum_buffer"].mul_(momentum).add_(update)
                    else:
                        state["momentum_buffer"] = update
                buffers = [s["momentum_buffer"] for s in states]
            updates = buffers
        torch._foreach_sub_(params, updates)
