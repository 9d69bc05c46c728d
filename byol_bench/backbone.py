"""ResNet backbones and the protocol's multi-layer features (PROTOCOLS.md A.1, B §2.2).

feature1 is the stem output (conv1-bn1-relu) **before** the max-pool; feature2..5 are ``layer1..layer4``. Each is
average-pooled with the fixed Goyal/mmselfsup parameters (count_include_pad=True) and flattened, which gives
9216 / 9216 / 8192 / 9216 / 8192 dims for ResNet-50 at 224x224. Other ResNets keep the same pooling; their dims
follow from their channel widths.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

# Every backbone here takes RGB input normalised with the ImageNet statistics (PROTOCOLS.md A.1; mmselfsup
# v0.5.0's BGR decoding is a bug we never reproduce).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

FEATURE_NAMES: tuple[str, ...] = ("feat1", "feat2", "feat3", "feat4", "feat5")

# (kernel, stride, padding) per feature, mmselfsup `MultiPooling(pool_type='specified')` POOL_PARAMS.
POOL_PARAMS: dict[str, tuple[int, int, int]] = {
    "feat1": (10, 10, 4),
    "feat2": (16, 8, 0),
    "feat3": (13, 5, 0),
    "feat4": (8, 3, 0),
    "feat5": (6, 1, 0),
}

TORCHVISION_RESNETS: dict[str, type | object] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
    "resnet152": torchvision.models.resnet152,
}


def build_resnet(arch: str) -> nn.Module:
    """Build a randomly initialised ResNet by name (never downloads weights).

    Args:
        arch: a torchvision name (``resnet18`` ... ``resnet152``) or ``timm:<name>`` for a timm ResNet.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if arch.startswith("timm:"):
        import timm  # imported lazily: only timm users pay its import time

        name = arch.removeprefix("timm:")
        if name not in timm.list_models("*resnet*"):
            raise ValueError(f"unknown timm ResNet {name!r}; see timm.list_models('*resnet*')")
        return timm.create_model(name, pretrained=False)
    if arch not in TORCHVISION_RESNETS:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(TORCHVISION_RESNETS)} or timm:<name>")
    return TORCHVISION_RESNETS[arch](weights=None)


def trunk_state_dict(resnet: nn.Module) -> dict[str, torch.Tensor]:
    """A torchvision ResNet's weights without its classifier (``fc.*``): what the adapters export and verify."""
    return {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}


def feature_channels(backbone: nn.Module) -> dict[str, int]:
    """Channel count of feature1..5 for a torchvision/timm ResNet."""
    widths = [backbone.bn1.num_features]
    for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        last_block = stage[-1]
        last_norm = last_block.bn3 if hasattr(last_block, "bn3") else last_block.bn2
        widths.append(last_norm.num_features)
    return dict(zip(FEATURE_NAMES, widths, strict=True))


class MultiLayerFeatures(nn.Module):
    """Run a ResNet trunk and return the requested feature maps (pooled + flattened by default).

    Args:
        backbone: a torchvision or timm ResNet (``conv1, bn1, relu|act1, maxpool, layer1..4``).
        layers: which of ``FEATURE_NAMES`` to return; the forward stops after the deepest one requested.
        pooled: apply the protocol AvgPool and flatten (True), or return the raw maps (False).
    """

    def __init__(self, backbone: nn.Module, layers: tuple[str, ...] = FEATURE_NAMES, pooled: bool = True) -> None:
        super().__init__()
        unknown = [name for name in layers if name not in FEATURE_NAMES]
        if unknown or not layers:
            raise ValueError(f"unknown feature layers {unknown or layers}; valid: {', '.join(FEATURE_NAMES)}")
        self.backbone = backbone
        self.layers = tuple(name for name in FEATURE_NAMES if name in layers)
        self.pooled = pooled
        self.pools = nn.ModuleDict(
            {name: nn.AvgPool2d(*POOL_PARAMS[name], count_include_pad=True) for name in self.layers}
        )
        self._relu = backbone.relu if hasattr(backbone, "relu") else backbone.act1

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{name: (N, dim)}`` (pooled) or ``{name: (N, C, H, W)}`` maps for the requested layers."""
        net = self.backbone
        x = self._relu(net.bn1(net.conv1(images)))
        maps = {"feat1": x}
        x = net.maxpool(x)
        deepest = FEATURE_NAMES.index(self.layers[-1])
        for index, stage in enumerate((net.layer1, net.layer2, net.layer3, net.layer4), start=2):
            if index - 1 > deepest:
                break
            x = stage(x)
            maps[f"feat{index}"] = x
        if not self.pooled:
            return {name: maps[name] for name in self.layers}
        return {name: self.pools[name](maps[name]).flatten(1) for name in self.layers}


def pooled_dims(backbone: nn.Module, image_size: int = 224) -> dict[str, int]:
    """Pooled feature dims for ``image_size`` inputs, computed by running shapes through the real modules."""
    extractor = MultiLayerFeatures(backbone).eval()
    with torch.no_grad():
        out = extractor(torch.zeros(1, 3, image_size, image_size))
    return {name: value.shape[1] for name, value in out.items()}


def dilate_resnet(backbone: nn.Module, strides: tuple[int, ...] = (1, 2, 1, 1),
                  dilations: tuple[int, ...] = (1, 1, 2, 4), contract_dilation: bool = True) -> nn.Module:
    """Turn a (loaded) torchvision ResNet into mmseg's dilated ResNet in place: the "D8" of FCN R50-D8.

    Per stage ``i``, the first block strides by ``strides[i]`` and every block's spatial 3x3 conv gets dilation
    ``dilations[i]`` (padding = dilation, so sizes are kept); with ``contract_dilation`` the first block of a dilated
    stage uses ``dilations[i] // 2`` (mmseg ``ResLayer(contract_dilation=True)``). Bottleneck blocks dilate
    ``conv2``; BasicBlocks dilate ``conv1`` only, as mmseg's BasicBlock does (torchvision refuses dilated
    BasicBlocks, so ResNet-18/34 tiny runs need this too). Weights are untouched: only strides and dilations change.
    For Bottleneck ResNets the result equals torchvision's ``replace_stride_with_dilation=[False, True, True]``
    with the default arguments (tested).
    """
    stages = (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
    if len(strides) != 4 or len(dilations) != 4:
        raise ValueError(f"strides {strides} and dilations {dilations} need one value per stage (4)")
    for stage, stride, dilation in zip(stages, strides, dilations, strict=True):
        for index, block in enumerate(stage):
            first = index == 0
            d = dilation // 2 if first and contract_dilation and dilation > 1 else dilation
            conv = block.conv2 if hasattr(block, "conv3") else block.conv1
            conv.stride = (stride, stride) if first else (1, 1)
            conv.dilation, conv.padding = (d, d), (d, d)
            if first and block.downsample is not None:
                block.downsample[0].stride = (stride, stride)
    return backbone
