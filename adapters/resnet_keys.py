"""The ResNet trunk's parameter names in torchvision and detectron2 spelling, and architecture inference.

Every trunk key is parsed into a :class:`TrunkKey` (stage, block, conv, norm, param) and rendered back in the
target spelling, so renaming is a parse + format with anchored patterns, never a substring replacement inside a
key (a replacement such as ``k.replace("bn1", "conv1.norm")`` also rewrites ``layer1.0.bn1`` wrongly when names
nest; MoCo/mmselfsup's converters rely on rule order to avoid that).

torchvision names (also timm's and mmcv/mmseg/mmdet's for the plain 7x7-stem ResNet)::

    conv1.weight                      bn1.{weight,bias,running_mean,running_var,num_batches_tracked}
    layer{1-4}.{b}.conv{1-3}.weight   layer{1-4}.{b}.bn{1-3}.{...}
    layer{1-4}.{b}.downsample.0.weight  layer{1-4}.{b}.downsample.1.{...}

detectron2 names (PROTOCOLS.md B §5.0)::

    stem.conv1.weight                 stem.conv1.norm.{...}
    res{2-5}.{b}.conv{1-3}.weight     res{2-5}.{b}.conv{1-3}.norm.{...}
    res{2-5}.{b}.shortcut.weight      res{2-5}.{b}.shortcut.norm.{...}
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from byol_bench.backbone import build_resnet
from byol_bench.checkpoint import CheckpointError, load_state_dict_strict

BN_PARAMS: tuple[str, ...] = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
FC_KEYS: tuple[str, ...] = ("fc.weight", "fc.bias")

# Top-level module names of a torchvision ResNet trunk: a key under one of them that does not parse is an
# unsupported variant (deep stem, SE blocks, ...) and must fail loudly instead of being dropped as a "head".
TRUNK_MODULES: tuple[str, ...] = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")

# (block type, blocks per stage) -> torchvision name. Widths are not part of the signature: the strict shape
# check against the built model rejects wide/ResNeXt variants with the offending key named.
ARCHS: dict[tuple[str, tuple[int, int, int, int]], str] = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}

_BN = "|".join(BN_PARAMS)
_TV_STEM = re.compile(rf"(?:conv1\.(?P<conv_param>weight)|bn1\.(?P<bn_param>{_BN}))")
_TV_BLOCK = re.compile(
    rf"layer(?P<stage>[1-4])\.(?P<block>\d+)\."
    rf"(?:conv(?P<conv>[1-3])\.(?P<conv_param>weight)|bn(?P<bn>[1-3])\.(?P<bn_param>{_BN})"
    rf"|downsample\.0\.(?P<down_param>weight)|downsample\.1\.(?P<down_bn_param>{_BN}))"
)
_D2_STEM = re.compile(rf"stem\.conv1\.(?:(?P<conv_param>weight)|norm\.(?P<bn_param>{_BN}))")
_D2_BLOCK = re.compile(
    rf"res(?P<stage>[2-5])\.(?P<block>\d+)\.(?:conv(?P<conv>[1-3])|(?P<shortcut>shortcut))"
    rf"\.(?:(?P<conv_param>weight)|norm\.(?P<bn_param>{_BN}))"
)


class TrunkKey(NamedTuple):
    """One ResNet trunk tensor, independent of any library's spelling.

    Attributes:
        stage: 0 for the stem, 1..4 for torchvision ``layer1..4`` (detectron2 ``res2..5``).
        block: block index inside the stage (0 for the stem).
        conv: 1..3 for ``convK``; 0 for the projection shortcut (``downsample`` / ``shortcut``).
        norm: True for the BatchNorm that follows that convolution.
        param: ``weight`` for a convolution, one of :data:`BN_PARAMS` for a norm.
    """

    stage: int
    block: int
    conv: int
    norm: bool
    param: str


def parse_torchvision(key: str) -> TrunkKey | None:
    """Parse a torchvision trunk key; None when ``key`` is not one (``fc.weight``, a head, ...)."""
    if match := _TV_STEM.fullmatch(key):
        norm = match["bn_param"] is not None
        return TrunkKey(0, 0, 1, norm, match["bn_param"] if norm else match["conv_param"])
    if match := _TV_BLOCK.fullmatch(key):
        stage, block = int(match["stage"]), int(match["block"])
        if match["conv"]:
            return TrunkKey(stage, block, int(match["conv"]), False, match["conv_param"])
        if match["bn"]:
            return TrunkKey(stage, block, int(match["bn"]), True, match["bn_param"])
        if match["down_param"]:
            return TrunkKey(stage, block, 0, False, match["down_param"])
        return TrunkKey(stage, block, 0, True, match["down_bn_param"])
    return None


def format_torchvision(key: TrunkKey) -> str:
    """Render a trunk key with torchvision names."""
    if key.stage == 0:
        return f"bn1.{key.param}" if key.norm else f"conv1.{key.param}"
    head = f"layer{key.stage}.{key.block}."
    if key.conv == 0:
        return head + (f"downsample.1.{key.param}" if key.norm else f"downsample.0.{key.param}")
    return head + (f"bn{key.conv}.{key.param}" if key.norm else f"conv{key.conv}.{key.param}")


def parse_detectron2(key: str) -> TrunkKey | None:
    """Parse a detectron2 ResNet key (``stem.*``, ``res2..5.*``); None when ``key`` is not one."""
    if match := _D2_STEM.fullmatch(key):
        norm = match["bn_param"] is not None
        return TrunkKey(0, 0, 1, norm, match["bn_param"] if norm else match["conv_param"])
    if match := _D2_BLOCK.fullmatch(key):
        conv = 0 if match["shortcut"] else int(match["conv"])
        norm = match["bn_param"] is not None
        param = match["bn_param"] if norm else match["conv_param"]
        return TrunkKey(int(match["stage"]) - 1, int(match["block"]), conv, norm, param)
    return None


def format_detectron2(key: TrunkKey) -> str:
    """Render a trunk key with detectron2 names."""
    if key.stage == 0:
        layer = "stem.conv1"
    else:
        unit = "shortcut" if key.conv == 0 else f"conv{key.conv}"
        layer = f"res{key.stage + 1}.{key.block}.{unit}"
    return f"{layer}.norm.{key.param}" if key.norm else f"{layer}.{key.param}"


def infer_arch(state_dict: Mapping[str, Any], source: str) -> str:
    """Name the torchvision ResNet whose block type and per-stage block counts match ``state_dict``.

    Args:
        state_dict: trunk weights with torchvision names.
        source: the file (or description) named in errors.

    Raises:
        CheckpointError: a stage is missing, or the layout matches no known ResNet.
    """
    parsed = [key for key in map(parse_torchvision, state_dict) if key is not None]
    counts = tuple(
        1 + max((key.block for key in parsed if key.stage == stage), default=-1) for stage in range(1, 5)
    )
    has_stem = any(key.stage == 0 for key in parsed)
    missing = ([] if has_stem else ["the stem (conv1/bn1)"]) + [
        f"layer{stage}" for stage, count in enumerate(counts, start=1) if count == 0
    ]
    if missing:
        raise CheckpointError(
            f"{source}: no weights for {', '.join(missing)}: not a complete ResNet trunk (truncated or "
            "partially extracted checkpoint?)"
        )
    block = "bottleneck" if any(key.conv == 3 for key in parsed) else "basic"
    if (block, counts) not in ARCHS:
        known = "; ".join(f"{name} ({kind} {'-'.join(map(str, n))})" for (kind, n), name in ARCHS.items())
        raise CheckpointError(
            f"{source}: {block} blocks per stage {'-'.join(map(str, counts))} match no known ResNet ({known}); "
            "pass the architecture explicitly (--arch)"
        )
    return ARCHS[(block, counts)]


def verify_trunk(state_dict: Mapping[str, Any], source: str, arch: str | None = None) -> str:
    """Check that ``state_dict`` is exactly a ResNet trunk (all of it, nothing else, right shapes).

    The check loads into a ResNet built on the ``meta`` device, so it costs no memory or initialisation time and
    applies the same rule as the real load: missing keys may only be ``fc.*``; no unexpected keys.

    Args:
        state_dict: trunk weights with torchvision names.
        source: the file (or description) named in errors.
        arch: the expected architecture (any name ``build_resnet`` accepts); None infers it from the weights.

    Returns:
        The architecture name.

    Raises:
        CheckpointError: missing/unexpected keys or shape mismatches, listed.
    """
    arch = arch or infer_arch(state_dict, source)
    with torch.device("meta"):
        model = build_resnet(arch)
    with warnings.catch_warnings():
        # A copy into meta tensors is a no-op by design here; torch warns about it for BN buffers it fills in.
        warnings.filterwarnings("ignore", message=".*meta parameter in the current model.*")
        load_state_dict_strict(
            model, {key: value.to("meta") for key, value in state_dict.items()}, source, allowed_missing=FC_KEYS
        )
    return arch
