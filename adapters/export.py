"""Export a torchvision-named ResNet trunk for detectron2, mmsegmentation/mmdetection, torchvision and timm.

Each writer checks the trunk is complete (:func:`adapters.resnet_keys.verify_trunk`) before writing, so no
runner ever receives a partial file.

- detectron2: ``{"model": {name: numpy array}, "__author__": ..., "matching_heuristics": True}`` pickled to a
  ``.pkl`` (PROTOCOLS.md B §5.0), plus a config fragment next to it. torchvision weights expect RGB input
  normalised by the ImageNet mean/std and put the stride on the 3x3 conv; detectron2's defaults are Caffe2's (BGR,
  std 1, stride on the 1x1), and getting this wrong costs ~15 VOC AP points with no error
  (maskrcnn-benchmark#643), so the fragment must be merged whenever the ``.pkl`` is used.
- mmseg / mmdet: ``{"state_dict": sd, "meta": {...}}`` with torchvision names, which are the names of mmcv's
  plain-stem ``ResNet`` (``init_cfg=dict(type='Pretrained', checkpoint=...)`` reads ``state_dict``).
- torchvision / timm: the plain state dict (no ``fc``); timm's ResNets use torchvision's names, and the export
  checks that against the timm model itself.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from adapters.intake import ConversionReport, to_torchvision
from adapters.resnet_keys import format_detectron2, infer_arch, parse_torchvision, verify_trunk
from byol_bench.backbone import IMAGENET_MEAN, IMAGENET_STD
from byol_bench.checkpoint import atomic_save
from byol_bench.fileio import atomic_write, atomic_write_text

_IN_MEMORY = "<state dict to export>"


def to_detectron2(state_dict: Mapping[str, torch.Tensor], author: str = "byol-bench") -> dict[str, Any]:
    """Rename a complete trunk to detectron2 names with numpy values (the ``.pkl`` payload).

    Raises:
        CheckpointError: ``state_dict`` is not exactly a ResNet trunk with torchvision names.
    """
    verify_trunk(state_dict, _IN_MEMORY)
    model = {
        format_detectron2(parse_torchvision(key)): value.detach().cpu().numpy() for key, value in state_dict.items()
    }
    return {"model": model, "__author__": author, "matching_heuristics": True}


def from_detectron2(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`to_detectron2`: detectron2 names and numpy arrays -> torchvision trunk tensors."""
    return to_torchvision(ckpt, fmt="detectron2", source="<detectron2 checkpoint>")[0]


def detectron2_config(arch: str, weights: Path) -> str:
    """The detectron2 config fragment (YAML) that must accompany torchvision-style weights."""
    depth = int(arch.removeprefix("resnet"))
    resnets: dict[str, Any] = {"DEPTH": depth, "STRIDE_IN_1X1": False}
    if depth in (18, 34):
        resnets["RES2_OUT_CHANNELS"] = 64  # detectron2 requires it for basic-block ResNets
    fragment = {
        "MODEL": {
            "WEIGHTS": str(weights.resolve()),
            # RGB input with the ImageNet statistics (A.1); detectron2 wants them in 0-255 pixel units.
            "PIXEL_MEAN": [round(255 * value, 3) for value in IMAGENET_MEAN],
            "PIXEL_STD": [round(255 * value, 3) for value in IMAGENET_STD],
            "RESNETS": resnets,
        },
        "INPUT": {"FORMAT": "RGB"},
    }
    header = (
        f"# detectron2 config fragment for {weights.name}: torchvision-style weights (RGB, ImageNet mean/std in\n"
        "# 0-255 units, stride on the 3x3 conv). Merge it after the base config; detectron2's defaults assume\n"
        "# Caffe2 weights (BGR, std 1, stride on the 1x1 conv) and would silently lower AP.\n"
    )
    return header + yaml.safe_dump(fragment, sort_keys=False)


def to_mm(state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The mmsegmentation/mmdetection pretrained file: ``{"state_dict": sd, "meta": meta}``.

    Raises:
        CheckpointError: ``state_dict`` is not exactly a ResNet trunk with torchvision names.
    """
    verify_trunk(state_dict, _IN_MEMORY)
    return {"state_dict": dict(state_dict), "meta": dict(meta)}


def _write_detectron2(state_dict: Mapping[str, torch.Tensor], report: ConversionReport, out: Path) -> list[Path]:
    if out.suffix != ".pkl":
        # detectron2's checkpointer picks the pickle reader by this suffix (as mmselfsup's converter asserts).
        raise ValueError(f"{out}: detectron2 weights must be written to a .pkl file")
    payload = to_detectron2(state_dict)
    atomic_write(out, lambda handle: pickle.dump(payload, handle, protocol=4), "wb")
    config = atomic_write_text(out.with_suffix(".yaml"), detectron2_config(infer_arch(state_dict, str(out)), out))
    return [out, config]


def _write_mm(state_dict: Mapping[str, torch.Tensor], report: ConversionReport, out: Path) -> list[Path]:
    meta = {
        "converted_by": "byol-bench adapters",
        "source": report.source,
        "source_sha256": report.sha256,
        "source_format": report.format,
        "encoder": report.encoder,
        "arch": report.arch,
    }
    return [atomic_save(to_mm(state_dict, meta), out)]


def _write_torchvision(state_dict: Mapping[str, torch.Tensor], report: ConversionReport, out: Path) -> list[Path]:
    verify_trunk(state_dict, str(out))
    return [atomic_save(dict(state_dict), out)]


def _write_timm(state_dict: Mapping[str, torch.Tensor], report: ConversionReport, out: Path) -> list[Path]:
    # Checked against timm's own model rather than assumed: its ResNet names must equal torchvision's.
    verify_trunk(state_dict, str(out), arch="timm:" + infer_arch(state_dict, str(out)))
    return [atomic_save(dict(state_dict), out)]


EXPORTS: dict[str, Callable[[Mapping[str, torch.Tensor], ConversionReport, Path], list[Path]]] = {
    "torchvision": _write_torchvision,
    "timm": _write_timm,
    "detectron2": _write_detectron2,
    "mmseg": _write_mm,
    "mmdet": _write_mm,
}


def write_export(
    state_dict: Mapping[str, torch.Tensor], report: ConversionReport, out: str | Path, to: str
) -> list[Path]:
    """Write ``state_dict`` (a trunk from :func:`adapters.intake.to_torchvision`) for the ``to`` library.

    Returns:
        The files written (detectron2 also writes ``<out>.yaml``, its config fragment).

    Raises:
        ValueError: unknown ``to`` name, or a detectron2 output not ending in ``.pkl``.
    """
    if to not in EXPORTS:
        raise ValueError(f"unknown export target {to!r}; valid: {', '.join(EXPORTS)}")
    return EXPORTS[to](state_dict, report, Path(out))
