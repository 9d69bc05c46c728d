"""Read any supported checkpoint file and load its ResNet trunk strictly: the one entry point the runners use."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from torch import nn

from adapters.intake import ConversionReport, to_torchvision
from adapters.pickle_safe import load_pickle
from adapters.resnet_keys import FC_KEYS
from byol_bench.backbone import build_resnet
from byol_bench.checkpoint import load_state_dict_strict, safe_load, sha256_file

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) container, PyTorch >= 1.6
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # older torch.save: pickled magic


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Load a checkpoint file without executing code.

    torch files (zip or legacy) go through ``torch.load(weights_only=True)``; anything else is read as a plain
    pickle by the restricted unpickler (detectron2 ``.pkl``), which refuses every global but numpy's.

    Raises:
        CheckpointError: missing, truncated, not a checkpoint, or carrying code.
    """
    path = Path(path)
    if not path.is_file():
        return safe_load(path)  # raises the project's one-line "file not found" error
    with open(path, "rb") as handle:
        head = handle.read(len(_LEGACY_TORCH_MAGIC))
    if head.startswith(_ZIP_MAGIC) or head == _LEGACY_TORCH_MAGIC:
        return safe_load(path)
    return load_pickle(path)


def load_backbone(
    path: str | os.PathLike, arch: str | None = None, encoder: str = "online", fmt: str = "auto",
    sha256: str | None = None,
) -> tuple[nn.Module, ConversionReport]:
    """Build a ResNet and load one encoder's trunk from any supported checkpoint, strictly.

    Args:
        path: the checkpoint file.
        arch: ``resnet18`` ... ``resnet152`` or ``timm:<name>``; None infers it from the weights.
        encoder: ``online`` (what the benchmarks evaluate) or ``target`` (the momentum/EMA encoder).
        fmt: a name from ``adapters.FORMATS`` or ``auto``.
        sha256: the file's sha256 when the caller has it already (the run scaffold hashes every checkpoint once;
            a multi-GB file is not read twice); None hashes the file here.

    Returns:
        The model (its ``fc`` randomly initialised: a classifier is never part of the transferred weights) and
        the :class:`ConversionReport` with the file's sha256.

    Raises:
        CheckpointError: unreadable file, unknown layout, missing encoder, or weights that do not fit ``arch``
            exactly (the message names the file and lists missing/unexpected keys).
    """
    source = str(path)
    state_dict, report = to_torchvision(read_checkpoint(path), fmt=fmt, encoder=encoder, arch=arch, source=source)
    model = build_resnet(report.arch)
    load_state_dict_strict(model, state_dict, source, allowed_missing=FC_KEYS)
    return model, dataclasses.replace(report, sha256=sha256 or sha256_file(path))
