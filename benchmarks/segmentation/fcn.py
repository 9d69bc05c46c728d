"""The FCN R50-D8 model of the segmentation protocol (PROTOCOLS.md B §6.1) and its forward passes.

:class:`FCN` (dilated ResNet, FCN decode head on layer4, auxiliary head on layer3), the training loss
(:func:`seg_losses`) and step (:func:`train_step`), and test-time prediction of one image (:func:`predict`: test
resize, normalisation, whole or slide inference, resize back). The runner (``benchmarks.segmentation.runner``)
trains and scores it; ``scripts/bench_seg.py`` times these very functions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.segmentation.evaluation import IGNORE_INDEX, slide_logits
from byol_bench import training
from byol_bench.backbone import dilate_resnet, feature_channels

AUX_WEIGHT = 0.4  # B §6.1: auxiliary head loss weight
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)  # B §6.1, RGB, on 0..255 pixels
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


class FCNHead(nn.Module):
    """mmseg ``FCNHead``: ``num_convs`` 3x3 ConvBNReLU, optionally concat the input and fuse (3x3), Dropout2d,
    1x1 classifier. Convs have no bias (BN follows), Kaiming-normal fan_out init; classifier N(0, 0.01), bias 0."""

    def __init__(self, in_channels: int, channels: int, num_convs: int, concat_input: bool, num_classes: int,
                 dropout: float = 0.1) -> None:
        super().__init__()

        def conv_bn_relu(c_in: int) -> nn.Sequential:
            conv = nn.Conv2d(c_in, channels, 3, padding=1, bias=False)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

        self.convs = nn.Sequential(*[conv_bn_relu(in_channels if i == 0 else channels) for i in range(num_convs)])
        self.conv_cat = conv_bn_relu(in_channels + channels) if concat_input else None
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(self.dropout(out))


class FCN(nn.Module):
    """Dilated ResNet (output stride 8) + FCN decode head on layer4 + auxiliary FCN head on layer3.

    ``forward`` returns ``(logits, aux_logits)`` at 1/8 of the input size; ``aux_logits`` is None in eval mode.
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = dilate_resnet(backbone)
        self.backbone.fc = nn.Identity()  # never part of the transferred weights; keeps the state dict small
        channels = feature_channels(self.backbone)
        self.decode_head = FCNHead(channels["feat5"], 512, 2, True, num_classes)
        self.aux_head = FCNHead(channels["feat4"], 256, 1, False, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        net = self.backbone
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
        c3 = net.layer3(net.layer2(net.layer1(x)))
        logits = self.decode_head(net.layer4(c3))
        return logits, self.aux_head(c3) if self.training else None


def rescale_size(w: int, h: int, scale: tuple[float, float]) -> tuple[int, int]:
    """mmcv ``rescale_size`` with a (long, short) bound: the largest aspect-kept size within it, rounded."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def resize(image: torch.Tensor, label: torch.Tensor | None, size: tuple[int, int]):
    """Image bilinear (float CHW), label nearest, to ``size`` = (w, h)."""
    image = F.interpolate(image[None].float(), size=(size[1], size[0]), mode="bilinear", align_corners=False)[0]
    if label is not None:
        label = F.interpolate(label[None, None].float(), size=(size[1], size[0]), mode="nearest")[0, 0].to(torch.uint8)
    return image, label


def seg_losses(logits: torch.Tensor, aux_logits: torch.Tensor, labels: torch.Tensor,
               align_corners: bool) -> dict[str, torch.Tensor]:
    """``loss = CE(decode) + AUX_WEIGHT * CE(aux)``; each CE on logits resized to the labels, ignore 255, summed
    over the labelled pixels and divided by all pixels (mmseg ``avg_non_ignore=False``)."""
    def ce(x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=labels.shape[-2:], mode="bilinear", align_corners=align_corners)
        return F.cross_entropy(x, labels, ignore_index=IGNORE_INDEX, reduction="sum") / labels.numel()

    decode, aux = ce(logits), ce(aux_logits)
    return {"loss": decode + AUX_WEIGHT * aux, "loss_decode": decode, "loss_aux": aux}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               align_corners: bool, precision: str, device: torch.device) -> dict[str, float]:
    """One SGD step on a batch; returns the losses as floats. ``scripts/bench_seg.py`` times this very function."""
    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    with training.autocast(device, precision):
        logits, aux_logits = model(images)
    losses = seg_losses(logits, aux_logits, labels, align_corners)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    return {k: v.item() for k, v in losses.items()}


@torch.no_grad()
def predict(model: FCN, image: torch.Tensor, cfg: Any, precision: str) -> torch.Tensor:
    """Class map (H, W) of one uint8 CHW image: test resize, normalise, whole or slide logits, resize back, argmax.

    ``cfg``: the runner's config (``test_scale``, ``test_mode``, ``test_crop``, ``test_stride``, ``align_corners``).
    """
    device = next(model.parameters()).device
    h, w = image.shape[1:]
    resized, _ = resize(image.to(device), None, rescale_size(w, h, cfg.test_scale))
    x = ((resized - MEAN.to(device)) / STD.to(device))[None]

    def forward(crop: torch.Tensor) -> torch.Tensor:
        with training.autocast(device, precision):
            logits = model(crop)[0]
        return F.interpolate(logits.float(), size=crop.shape[-2:], mode="bilinear", align_corners=cfg.align_corners)

    if cfg.test_mode == "slide":
        logits = slide_logits(forward, x, (cfg.test_crop, cfg.test_crop), (cfg.test_stride, cfg.test_stride))
    else:
        logits = forward(x)
    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=cfg.align_corners)
    return logits[0].argmax(0).to(torch.uint8).cpu()
