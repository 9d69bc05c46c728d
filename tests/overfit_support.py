"""Test support shared by the frozen-backbone probes' overfit checks (tests/ is on sys.path)."""

from __future__ import annotations

import torch
from torch import nn


class FrozenTrunkOncePerBatch(nn.Module):
    """A frozen (eval-mode, no-grad) trunk that computes each distinct batch once: an overfit loop feeds it the same
    batch at every step, and its features are then the same tensors every time. The second call with a batch
    recomputes them and checks they are equal, so the shortcut is verified, not assumed; later calls reuse them
    (a CPU ResNet-18 forward per step was nearly all of an overfit test's time)."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk, self.memo, self.checked = trunk, None, False

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        same = self.memo is not None and torch.equal(self.memo[0], images)
        if same and self.checked:
            return dict(self.memo[1])
        out = self.trunk(images)
        if same:
            assert out.keys() == self.memo[1].keys() and all(torch.equal(out[k], self.memo[1][k]) for k in out)
            self.checked = True
        else:
            self.memo, self.checked = (images.clone(), out), False
        return dict(out)
