"""Checkpoint intake: recognise a framework's layout and return the ResNet trunk with torchvision names.

Every supported layout is one entry of :data:`FORMATS`: where the model state sits inside the file, under which
key prefix each encoder's trunk lives, and how trunk keys are spelled there. Conversion is prefix match + slice
(never a substring replacement inside a key); everything outside the chosen trunk is dropped and reported by
group (projector, predictor, heads, the other encoder). The result must then fit a torchvision ResNet exactly
(:func:`adapters.resnet_keys.verify_trunk`), so a partial or mislabelled file fails here instead of producing
low numbers later.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from adapters.resnet_keys import (
    TRUNK_MODULES,
    format_torchvision,
    parse_detectron2,
    parse_torchvision,
    verify_trunk,
)
from byol_bench.checkpoint import CheckpointError

ENCODERS: tuple[str, ...] = ("online", "target")


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion kept and dropped; ``dataclasses.asdict`` of it goes into result records.

    Attributes:
        source: the file (or description) the weights came from.
        format: the :data:`FORMATS` name that was used.
        arch: the ResNet the weights fit (``resnet50``, ``timm:resnet50``, ...).
        encoder: ``online`` or ``target``.
        tensors: number of trunk tensors kept.
        dropped: key group -> tensor count, for everything in the model state that is not the chosen trunk.
        filled_num_batches_tracked: BN counters created (as 0) because the file lacked them (pre-0.4.1 PyTorch,
            Caffe2-era detectron2 files); BN only reads them when its momentum is None, never in a ResNet.
        sha256: of the file; empty for an in-memory checkpoint.
    """

    source: str
    format: str
    arch: str
    encoder: str
    tensors: int
    dropped: dict[str, int]
    filled_num_batches_tracked: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class Naming:
    """How trunk keys are spelled under a format's prefix.

    Attributes:
        to_torchvision: key (prefix removed) -> torchvision trunk key, or None when it is not a trunk key.
        trunk_roots: first key components that belong to the trunk: a key under one of them that does not
            convert is an unsupported ResNet variant (deep stem, SE block, ...) and is an error, never a drop.
        probe: a key every ResNet trunk has in this spelling, used to recognise the layout.
    """

    to_torchvision: Callable[[str], str | None]
    trunk_roots: tuple[str, ...]
    probe: str


def _torchvision_key(key: str) -> str | None:
    return key if parse_torchvision(key) else None


def _detectron2_key(key: str) -> str | None:
    parsed = parse_detectron2(key)
    return format_torchvision(parsed) if parsed else None


# torchvision ResNet children in order: conv1, bn1, relu, maxpool, layer1..4, avgpool, fc. lightly and
# solo-learn style code wraps ``nn.Sequential(*list(resnet.children())[:-1])``, which numbers them 0..8.
_SEQUENTIAL_CHILDREN: dict[str, str] = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
                                        "7": "layer4"}


def _sequential_key(key: str) -> str | None:
    index, _, rest = key.partition(".")
    if index not in _SEQUENTIAL_CHILDREN or not rest:
        return None
    return _torchvision_key(f"{_SEQUENTIAL_CHILDREN[index]}.{rest}")


TORCHVISION_NAMES = Naming(_torchvision_key, TRUNK_MODULES, "layer1.0.conv1.weight")
DETECTRON2_NAMES = Naming(_detectron2_key, ("stem", "res2", "res3", "res4", "res5"), "res2.0.conv1.weight")
SEQUENTIAL_NAMES = Naming(_sequential_key, tuple(_SEQUENTIAL_CHILDREN), "4.0.conv1.weight")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one dict with dotted keys (checkpoint trees here; the detectron2 tests flatten configs)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _plain_state(ckpt: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The file is the state dict itself."""
    return ckpt


def _wrapped_state(ckpt: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``{"state_dict": sd, ...}`` (mmcv/mmengine, Lightning, MoCo) or ``{"model": sd, ...}`` (detectron2,
    Barlow Twins); a file without either wrapper is taken as the state dict itself."""
    for key in ("state_dict", "model"):
        if isinstance(ckpt.get(key), Mapping):
            return ckpt[key]
    return ckpt


def _state_dict_entry(ckpt: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Only ``{"state_dict": sd, ...}``: mmselfsup's extract_backbone_weights.py output and mm* pretrained files."""
    return ckpt["state_dict"] if isinstance(ckpt.get("state_dict"), Mapping) else None


def _byol_bench_state(ckpt: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """This project's checkpoint: ``{"format": "byol-bench", "online": {...}, "target": {...}, ...}``."""
    if ckpt.get("format") != "byol-bench":
        return None
    return flatten({name: ckpt[name] for name in ENCODERS if isinstance(ckpt.get(name), Mapping)})


def _vissl_state(ckpt: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """VISSL nests the model as ``classy_state_dict -> base_model -> model -> {trunk, heads}``; files saved
    from an inner level (e.g. ``{"model": {...}}`` or ``{"trunk": ..., "heads": ...}``) start further down."""
    node: Any = ckpt
    for level in ("classy_state_dict", "base_model", "model"):
        if isinstance(node.get(level), Mapping):
            node = node[level]
    return flatten(node) if isinstance(node.get("trunk"), Mapping) else None


@dataclass(frozen=True)
class Format:
    """One checkpoint layout.

    Attributes:
        description: what produces it (shown by ``inspect`` and in errors).
        state: finds the model state dict inside the loaded file; None when the layout does not apply.
        online: candidate prefixes of the online (or only) encoder's trunk; the first present wins.
        target: the same for the momentum/target encoder; empty when the format holds one encoder.
        names: how trunk keys are spelled under the prefix.
        auto: whether auto-detection considers it (False for aliases that cannot be told apart by content).
        marker: an extra condition for auto-detection where the prefixes alone are shared with another format.
    """

    description: str
    state: Callable[[Mapping[str, Any]], Mapping[str, Any] | None]
    online: tuple[str, ...]
    target: tuple[str, ...] = ()
    names: Naming = TORCHVISION_NAMES
    auto: bool = True
    marker: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] | None = None


def _lightning_marker(ckpt: Mapping[str, Any], state: Mapping[str, Any]) -> bool:
    return "pytorch-lightning_version" in ckpt or any(key.startswith("momentum_backbone.") for key in state)


# Auto-detection tries these in order and takes the first whose state and probe key are present; the order puts
# the more specific layouts first (a MoCo checkpoint also has a plain `module.` prefix, solo-learn's
# `backbone.` is shared with mmselfsup).
FORMATS: dict[str, Format] = {
    "byol-bench": Format(
        "this project's pretraining checkpoint ({'format': 'byol-bench', 'online': {'backbone', 'projector', "
        "'predictor'}, 'target': {...}})",
        _byol_bench_state, ("online.backbone.",), ("target.backbone.",),
    ),
    "vissl": Format(
        "VISSL (classy_state_dict -> base_model -> model -> trunk, `_feature_blocks.` names)",
        _vissl_state, ("trunk._feature_blocks.",),
    ),
    "detectron2": Format(
        "detectron2 .pkl/.pth (stem./res2..res5 names, numpy arrays; also trained models' backbone.bottom_up.)",
        _wrapped_state, ("", "backbone.bottom_up.", "backbone."), names=DETECTRON2_NAMES,
    ),
    "mocov3": Format(
        "MoCo v3 (module.base_encoder. / module.momentum_encoder.)",
        _wrapped_state, ("module.base_encoder.", "base_encoder."), ("module.momentum_encoder.", "momentum_encoder."),
    ),
    "densecl": Format(
        "DenseCL and OpenSelfSup MoCo (encoder_q.0. / encoder_k.0., neck at .1)",
        _wrapped_state, ("module.encoder_q.0.", "encoder_q.0."), ("module.encoder_k.0.", "encoder_k.0."),
    ),
    "moco": Format(
        "MoCo v1/v2 (module.encoder_q. / module.encoder_k., fc = projection head)",
        _wrapped_state, ("module.encoder_q.", "encoder_q."), ("module.encoder_k.", "encoder_k."),
    ),
    "lightly": Format(
        "lightly (backbone = nn.Sequential(*resnet.children()[:-1]): backbone.0/1/4-7. / backbone_momentum.) "
        "and plain nn.Sequential state dicts",
        _wrapped_state, ("backbone.", ""), ("backbone_momentum.",), names=SEQUENTIAL_NAMES,
    ),
    "solo-learn": Format(
        "solo-learn and other Lightning checkpoints with a torchvision-named backbone. (target: momentum_backbone.)",
        _wrapped_state, ("backbone.",), ("momentum_backbone.",), marker=_lightning_marker,
    ),
    "mmselfsup": Format(
        "mmselfsup 0.x/1.x and mmpretrain algorithm checkpoint (backbone. or online_net.0.; target_net.0. or "
        "target_net.module.0.)",
        _wrapped_state, ("backbone.", "online_net.0."), ("target_net.0.", "target_net.module.0."),
    ),
    "hub": Format(
        "SwAV/DINO/Barlow Twins hub-style ResNet file (module. or module.backbone.; heads, prototypes dropped)",
        _wrapped_state, ("module.", "module.backbone."),
    ),
    "mmselfsup-backbone": Format(
        "extracted backbone {'state_dict': sd} (mmselfsup extract_backbone_weights.py, mmseg/mmdet exports)",
        _state_dict_entry, ("",),
    ),
    "torchvision": Format("torchvision/timm ResNet state dict (fc dropped)", _plain_state, ("",)),
    "timm": Format("timm ResNet state dict (same names as torchvision)", _plain_state, ("",), auto=False),
}


def _find_prefix(fmt: Format, state: Mapping[str, Any], encoder: str) -> str | None:
    prefixes = fmt.online if encoder == "online" else fmt.target
    return next((prefix for prefix in prefixes if prefix + fmt.names.probe in state), None)


def available_encoders(ckpt: Mapping[str, Any], fmt: str) -> tuple[str, ...]:
    """The encoders (``online``, ``target``) whose trunk a ``fmt`` checkpoint holds."""
    layout = FORMATS[fmt]
    state = layout.state(ckpt)
    return tuple(name for name in ENCODERS if state is not None and _find_prefix(layout, state, name) is not None)


def _describe(ckpt: Any) -> str:
    """Top-level keys and sample parameter names, for an error about an unrecognised file."""
    if not isinstance(ckpt, Mapping):
        return f"the file holds a {type(ckpt).__name__}, not a dict"
    state = _wrapped_state(ckpt)
    params = [key for key, value in state.items() if isinstance(value, (torch.Tensor, np.ndarray))][:6]
    return f"top-level keys {list(ckpt)[:10]}, sample parameter names {params}"


def detect_format(ckpt: Any, source: str) -> str:
    """Name the first :data:`FORMATS` entry whose layout ``ckpt`` has.

    Raises:
        CheckpointError: no known layout; the message shows what the file holds and lists the known formats.
    """
    if isinstance(ckpt, Mapping):
        for name, fmt in FORMATS.items():
            state = fmt.state(ckpt) if fmt.auto else None
            if (
                state is not None
                and _find_prefix(fmt, state, "online") is not None
                and (fmt.marker is None or fmt.marker(ckpt, state))
            ):
                return name
    raise CheckpointError(
        f"{source}: unrecognised checkpoint layout: {_describe(ckpt)}; known formats: {', '.join(FORMATS)} "
        "(see docs/ADAPTERS.md); if it is one of them, pass --from NAME to see what is missing"
    )


def _group(key: str, prefix: str) -> str:
    """Report name for a dropped key. Inside the trunk prefix: the prefix plus the next component (e.g.
    ``module.encoder_q.fc``). Outside: the components shared with the prefix plus one (``module.encoder_k``,
    ``target_net``, ``online.projector``), i.e. the module that sits beside the chosen trunk."""
    if key.startswith(prefix):
        return prefix + key[len(prefix):].split(".")[0]
    parts, prefix_parts = key.split("."), prefix.split(".")[:-1]
    shared = 0
    while shared < min(len(parts) - 1, len(prefix_parts)) and parts[shared] == prefix_parts[shared]:
        shared += 1
    return ".".join(parts[: shared + 1])


def _as_tensor(value: Any, key: str, source: str) -> torch.Tensor:
    if isinstance(value, (np.ndarray, np.generic)):
        if np.asarray(value).dtype.kind not in "biuf":
            raise CheckpointError(f"{source}: {key} is a numpy array of dtype {value.dtype}, not numbers")
        value = torch.from_numpy(np.array(value))
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{source}: {key} holds a {type(value).__name__}, not a tensor")
    if value.is_floating_point() and value.numel() and not _all_finite(value):
        raise CheckpointError(f"{source}: {key} contains NaN or Inf values; refusing a diverged checkpoint")
    return value


def _all_finite(value: torch.Tensor) -> bool:
    # min/max propagate NaN and expose +-Inf: one fused reduction, ~10x faster than isfinite().all() on R50.
    return bool(torch.isfinite(torch.stack(torch.aminmax(value))).all())


def _fill_num_batches_tracked(trunk: dict[str, torch.Tensor]) -> int:
    """Add a zero ``num_batches_tracked`` for each BN that lacks one (pre-0.4.1 PyTorch files, Caffe2-era
    detectron2 files). torch's own BatchNorm loader does the same for state dicts without version metadata;
    doing it here makes every exported file complete and puts the count in the report."""
    missing = [key.removesuffix("running_mean") + "num_batches_tracked" for key in trunk
               if key.endswith(".running_mean")]
    missing = [key for key in missing if key not in trunk]
    for key in missing:
        trunk[key] = torch.tensor(0, dtype=torch.long)
    return len(missing)


def to_torchvision(
    ckpt: Any,
    fmt: str = "auto",
    encoder: str = "online",
    arch: str | None = None,
    source: str = "<in-memory checkpoint>",
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Extract one encoder's ResNet trunk from a loaded checkpoint, with torchvision names and no ``fc``.

    Args:
        ckpt: the loaded file (any layout in :data:`FORMATS`).
        fmt: a :data:`FORMATS` name, or ``auto`` to detect it.
        encoder: ``online`` (default; the encoder the benchmarks evaluate) or ``target`` (momentum/EMA encoder).
        arch: the ResNet the weights must fit; None infers it from the block type and counts.
        source: the file name used in error messages and the report.

    Returns:
        The trunk state dict and a :class:`ConversionReport`.

    Raises:
        ValueError: unknown ``fmt`` or ``encoder`` name.
        CheckpointError: layout not recognised, encoder absent, unsupported trunk keys, non-finite values, or
            weights that do not fit the ResNet exactly.
    """
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; valid: {', '.join(ENCODERS)}")
    if fmt == "auto":
        fmt = detect_format(ckpt, source)
    elif fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; valid: auto, {', '.join(FORMATS)}")
    layout = FORMATS[fmt]
    state = layout.state(ckpt) if isinstance(ckpt, Mapping) else None
    if state is None:
        raise CheckpointError(f"{source}: not a {fmt} checkpoint ({layout.description}): {_describe(ckpt)}")
    if encoder == "target" and not layout.target:
        raise CheckpointError(f"{source}: {fmt} checkpoints hold a single encoder; use --encoder online")
    prefix = _find_prefix(layout, state, encoder)
    if prefix is None:
        wanted = " or ".join(repr(p + layout.names.probe) for p in (layout.online if encoder == "online"
                                                                     else layout.target))
        raise CheckpointError(f"{source}: no {encoder} encoder in this {fmt} checkpoint: no key {wanted}; "
                              f"{_describe(ckpt)}")

    trunk: dict[str, torch.Tensor] = {}
    dropped: Counter[str] = Counter()
    for key, value in state.items():
        rest = key[len(prefix):] if key.startswith(prefix) else None
        name = layout.names.to_torchvision(rest) if rest is not None else None
        if name is None:
            if rest is not None and rest.split(".")[0] in layout.names.trunk_roots:
                raise CheckpointError(f"{source}: {key} is not a plain torchvision-style ResNet parameter "
                                      "(deep stem, SE or other variant?); only standard ResNets are supported")
            dropped[_group(key, prefix)] += 1
            continue
        if name in trunk:
            raise CheckpointError(f"{source}: two keys map to {name}; ambiguous checkpoint")
        trunk[name] = _as_tensor(value, key, source)
    filled = _fill_num_batches_tracked(trunk)
    arch = verify_trunk(trunk, source, arch)
    report = ConversionReport(source, fmt, arch, encoder, len(trunk), dict(sorted(dropped.items())), filled)
    return trunk, report

