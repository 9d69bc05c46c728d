"""Checkpoint adapters: read any common self-supervised ResNet checkpoint strictly, export it for every runner.

Runners load weights only through :func:`load_backbone`::

    from adapters import load_backbone
    model, report = load_backbone("byol.pth", arch=None, encoder="online", fmt="auto")

The pure functions below work on loaded objects and state dicts; ``python -m adapters inspect|convert`` is the
command line (docs/ADAPTERS.md lists the formats).
"""

from adapters.export import EXPORTS, detectron2_config, from_detectron2, to_detectron2, to_mm, write_export
from adapters.intake import ENCODERS, FORMATS, ConversionReport, detect_format, to_torchvision
from adapters.loading import load_backbone, read_checkpoint
from adapters.resnet_keys import infer_arch, verify_trunk

__all__ = [
    "ENCODERS",
    "EXPORTS",
    "FORMATS",
    "ConversionReport",
    "detect_format",
    "detectron2_config",
    "from_detectron2",
    "infer_arch",
    "load_backbone",
    "read_checkpoint",
    "to_detectron2",
    "to_mm",
    "to_torchvision",
    "verify_trunk",
    "write_export",
]
