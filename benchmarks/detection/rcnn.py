"""torchvision R-CNN building blocks with detectron2's arithmetic (the reference of PROTOCOLS.md B §5).

torchvision's stock pieces differ from detectron2 (and mmdet) in small ways that move AP; each class here changes
exactly one of them and says which:

* :class:`ShortestEdgeTransform` — resize as detectron2's ``ResizeShortestEdge`` (``int(x + 0.5)`` rounding, a
  train short side drawn from a list, a separate test size, antialiased bilinear like PIL), then torchvision's
  normalisation, padding and post-processing (boxes and masks back to the input size);
* :class:`DetectronAnchorGenerator` — cell anchors without torchvision's rounding to integers (detectron2
  ``DefaultAnchorGenerator``, offset 0);
* :class:`L1RegionProposalNetwork` and :func:`fastrcnn_l1_loss` — L1 box losses (detectron2 ``SMOOTH_L1_BETA 0``,
  mmdet ``L1Loss``) instead of smooth-L1 with beta 1/9, the RPN normalised by ``batch_size_per_image x images``
  (detectron2 ``StandardRPNHead`` losses);
* :class:`AlignedRoIPool` — single-level ``RoIAlign(aligned=True)`` (detectron2 ``ROIAlignV2``); torchvision's
  ``MultiScaleRoIAlign`` uses ``aligned=False``;
* :class:`Float32` — runs a (small) head in float32 under bf16 autocast: box deltas in bf16 (8 significant bits)
  would move a 500-pixel box by about 2 pixels; :class:`Float32OutputRPNHead` does the same for the RPN's 1x1
  outputs (torchvision's box coder casts the anchors to the deltas' dtype, so bf16 deltas would quantise every
  proposal).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import roi_align


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge.get_output_shape``: scale the short side to ``short``, the long one to at
    most ``max_size``; ``(new_height, new_width)`` rounded half up."""
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


class ShortestEdgeTransform(GeneralizedRCNNTransform):
    """torchvision's R-CNN input transform with detectron2's resize.

    Args:
        train_sizes: short sides to draw from in training (uniformly, one per image; global torch RNG).
        train_max_size: longest side in training.
        test_size, test_max_size: the evaluation resize.
        image_mean, image_std: per-channel statistics of [0, 1] RGB inputs.
        size_divisible: pad batches to a multiple of this (1: no extra padding, detectron2 C4; 32: FPN).
    """

    def __init__(self, train_sizes: Sequence[int], train_max_size: int, test_size: int, test_max_size: int,
                 image_mean: Sequence[float], image_std: Sequence[float], size_divisible: int = 1) -> None:
        super().__init__(min_size=tuple(train_sizes), max_size=train_max_size, image_mean=list(image_mean),
                         image_std=list(image_std), size_divisible=size_divisible)
        self.test_size, self.test_max_size = test_size, test_max_size

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None
               ) -> tuple[Tensor, dict[str, Tensor] | None]:
        height, width = image.shape[-2:]
        if self.training:
            short, longest = self.torch_choice(self.min_size), self.max_size
        else:
            short, longest = self.test_size, self.test_max_size
        new_h, new_w = shortest_edge_size(int(height), int(width), short, longest)
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        if target is None:
            return image, None
        target = dict(target)
        scale = torch.tensor([new_w / width, new_h / height] * 2, dtype=target["boxes"].dtype,
                             device=target["boxes"].device)
        target["boxes"] = target["boxes"] * scale
        if "masks" in target:
            masks = target["masks"]
            target["masks"] = F.interpolate(masks[:, None].float(), size=(new_h, new_w))[:, 0].to(masks.dtype)
        return image, target


class DetectronAnchorGenerator(AnchorGenerator):
    """Anchors of area ``size**2`` and height/width ``ratio`` centred on each cell's corner, not rounded."""

    def generate_anchors(self, scales: list[int], aspect_ratios: list[float], dtype: torch.dtype = torch.float32,
                         device: torch.device | None = None) -> Tensor:
        scales_t = torch.as_tensor(scales, dtype=torch.float64, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=torch.float64, device=device)
        ws = (1 / torch.sqrt(ratios)[:, None] * scales_t[None, :]).reshape(-1)
        hs = (torch.sqrt(ratios)[:, None] * scales_t[None, :]).reshape(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).to(dtype)

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device) -> None:
        # NOTE: float32 whatever the feature maps' dtype: torchvision casts anchors to it, and under bf16 autocast
        # anchors (and so proposals) near 1000 px would be quantised to 4-8 px steps.
        super().set_cell_anchors(torch.float32, device)


class L1RegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN with detectron2's losses: objectness BCE and L1 box loss, both summed over the sampled
    anchors and divided by ``batch_size_per_image x images`` (``StandardRPNHead.losses``)."""

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        pos, neg = self.fg_bg_sampler(labels)
        pos_inds = torch.where(torch.cat(pos, dim=0))[0]
        sampled = torch.cat([pos_inds, torch.where(torch.cat(neg, dim=0))[0]])
        normalizer = self.fg_bg_sampler.batch_size_per_image * len(labels)
        targets = torch.cat(regression_targets, dim=0)
        box_loss = F.l1_loss(pred_bbox_deltas[pos_inds], targets[pos_inds], reduction="sum") / normalizer
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], torch.cat(labels, dim=0)[sampled], reduction="sum") / normalizer
        return objectness_loss, box_loss


def fastrcnn_l1_loss(class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Fast R-CNN losses as detectron2 (``FastRCNNOutputLayers.losses``): cross-entropy averaged over the sampled
    RoIs; L1 on the class-specific deltas of the foreground RoIs, summed and divided by the number of RoIs."""
    labels_t = torch.cat(labels, dim=0)
    targets = torch.cat(regression_targets, dim=0)
    loss_cls = F.cross_entropy(class_logits, labels_t)
    fg = torch.where(labels_t > 0)[0]
    deltas = box_regression.reshape(len(labels_t), -1, 4)[fg, labels_t[fg]]
    loss_box = F.l1_loss(deltas, targets[fg], reduction="sum") / max(labels_t.numel(), 1)
    return loss_cls, loss_box


class AlignedRoIPool(nn.Module):
    """``RoIAlign(output_size, spatial_scale, sampling_ratio=0, aligned=True)`` on one feature map (``features[key]``),
    with the ``box_roi_pool`` call signature of torchvision's ``RoIHeads``."""

    def __init__(self, output_size: int, spatial_scale: float, key: str = "0") -> None:
        super().__init__()
        self.output_size, self.spatial_scale, self.key = output_size, spatial_scale, key

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        x = features[self.key]
        # the boxes stay float32 (bf16 would quantise them): roi_align's autocast kernel runs in float32 anyway
        return roi_align(x, proposals, self.output_size, self.spatial_scale, sampling_ratio=0, aligned=True)


class Float32(nn.Module):
    """``module(x)`` in float32 with autocast disabled (for box predictors; see the module docstring)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        with torch.autocast(x.device.type, enabled=False):
            return self.module(x.float())


class Float32OutputRPNHead(RPNHead):
    """torchvision's ``RPNHead`` whose 3x3 conv follows autocast and whose 1x1 objectness and box-delta convs run in
    float32 (see the module docstring); identical to ``RPNHead`` without autocast."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for feature in x:
            t = self.conv(feature)
            with torch.autocast(t.device.type, enabled=False):
                t = t.float()
                logits.append(self.cls_logits(t))
                deltas.append(self.bbox_pred(t))
        return logits, deltas
