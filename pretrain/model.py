"""BYOL networks and loss (Grill et al., "Bootstrap your own latent", NeurIPS 2020; PROTOCOLS.md B §1.2-1.4).

    "BYOL uses two neural networks, referred to as online and target networks, that interact and learn from each
    other. From an augmented view of an image, we train the online network to predict the target network
    representation of the same image under a different augmented view. At the same time, we update the target
    network with a slow-moving average of the online network." (paper, abstract)

Layout: ``online`` = backbone + projector, ``predictor`` on top of it, ``target`` = a copy of ``online`` that never
receives gradients. Backbone state dicts keep torchvision ResNet names (``conv1.weight``, ``layer1.0.bn1.*``, no
``fc.*``), which is what the checkpoint format and the adapters expect.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class MLPHead(nn.Sequential):
    """Linear(in, hidden, bias) -> BN -> ReLU -> Linear(hidden, out, no bias): the projector and the predictor.

    "a multi-layer perceptron (MLP) consisting in a linear layer with output size 4096 followed by batch
    normalization, rectified linear units (ReLU), and a final linear layer with output dimension 256" (paper §3.3).
    The last layer has no bias and no BN, as mmselfsup's ``NonLinearNeck(with_bias=True, with_last_bn=False)``.
    State-dict keys: ``0.weight, 0.bias, 1.* (BN), 3.weight``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=True),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
        )


class Encoder(nn.Module):
    """Backbone (global-average-pooled, ``fc`` removed) followed by the projector: the part shared by both nets."""

    def __init__(self, backbone: nn.Module, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        feat_dim = backbone.fc.in_features
        # torchvision/timm ResNets end with avgpool -> flatten -> fc; an identity fc leaves the pooled features.
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.projector = MLPHead(feat_dim, hidden_dim, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(images))


def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``2 - 2 cos(p, sg(z))`` averaged over the batch, computed in at least fp32 (bf16 autocast outputs are upcast).

    "we define the following mean squared error between the normalized predictions and target projections,
    L = ||q̄ - z̄'||² = 2 - 2 <q, z'> / (||q|| ||z'||)" (paper eq. 2). ``target`` is detached here, so the
    stop-gradient holds whatever the caller passes.
    """
    dtype = torch.promote_types(prediction.dtype, torch.float32)
    p = F.normalize(prediction.to(dtype), dim=1)
    z = F.normalize(target.detach().to(dtype), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()


class BYOL(nn.Module):
    """Online network + predictor trained to regress the target network's projection of the other view.

    Args:
        backbone: a randomly initialised torchvision/timm ResNet (its ``fc`` is replaced by an identity).
        hidden_dim: MLP hidden width (4096).
        out_dim: projection width (256).
    """

    def __init__(self, backbone: nn.Module, hidden_dim: int = 4096, out_dim: int = 256) -> None:
        super().__init__()
        self.online = Encoder(backbone, hidden_dim, out_dim)
        self.predictor = MLPHead(out_dim, hidden_dim, out_dim)
        # NOTE: an exact copy (PROTOCOLS.md A.2). mmselfsup v0.5.0 re-draws the online convolutions after copying,
        # so its two networks start different (B §1.9); we do not reproduce that.
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Return the symmetrised loss ``L(v1 -> v2) + L(v2 -> v1)``, in [0, 8].

        "We symmetrize the loss L by separately feeding v' to the online network and v to the target network to
        compute L~ [...] the BYOL loss L + L~" (paper §3.1). A sum, not a mean: averaging halves the effective
        learning rate (lightly PR #1286: linear accuracy 51.4 -> 62.4 once fixed). Each view goes through each
        network in its own forward call, so BatchNorm statistics are per view, and the target stays in train mode
        (B §1.3).
        """
        p1 = self.predictor(self.online(view1))
        p2 = self.predictor(self.online(view2))
        with torch.no_grad():
            z1 = self.target(view1)
            z2 = self.target(view2)
        return regression_loss(p1, z2) + regression_loss(p2, z1)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA over parameters: ``θ_t <- m θ_t + (1 - m) θ_o`` in one fused multi-tensor lerp.

        "ξ <- τ ξ + (1 - τ) θ" (paper eq. 1). BN running statistics are not averaged: the target computes its own
        in its train-mode forwards (B §1.4). ``lerp`` with weight 0 returns the target bit for bit, so m = 1 is an
        exact no-op.
        """
        target = list(self.target.parameters())
        online = [p.detach() for p in self.online.parameters()]
        torch._foreach_lerp_(target, online, 1.0 - momentum)


def mmselfsup_loss(loss: float) -> float:
    """The value mmselfsup v0.5.0 logs for the same state: ``2 x Σ -mean cos`` = our loss − 4 (range [-4, 4])."""
    return loss - 4
