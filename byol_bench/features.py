"""Frozen multi-layer feature extraction with an on-disk cache, and the proof that the backbone stayed frozen.

Shared by the frozen-feature protocols. Features are cached per (checkpoint sha256, encoder, arch, transform,
split, image list) and per layer, so a rerun, another cost grid or the low-shot pass never extracts again, and a
run that asks for more layers extracts only the missing ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from byol_bench.backbone import IMAGENET_MEAN, IMAGENET_STD, MultiLayerFeatures
from byol_bench.fileio import atomic_write
from byol_bench.runlog import progress

# The image paths of the frozen-feature protocols (see squash_transform); the dataset's image_format has the same name.
PREPROCESS_PATHS = {
    "pil": "PIL.Image.open(path).convert('RGB'), PIL bilinear resizes, then to tensor (the reference's path)",
    "tensor": "torchvision.io decode, antialiased bilinear resizes of the uint8 tensor (opt-in; not the reference's "
              "pixels)",
}


def squash_transform(resize_short: int = 256, size: int = 224,
                     preprocess: str = "pil") -> tuple[v2.Compose, str]:
    """The SVM protocol's test pipeline (B §2.2): Resize(short side) -> Resize((size, size)), no crop; RGB.

    Args:
        resize_short: the first resize (short side).
        size: the square size of the second resize (the aspect ratio is deliberately not kept).
        preprocess: ``"pil"`` (default): the reference's path (mmselfsup v0.5.0 ``ImageList`` + torchvision):
            both resizes on the PIL image (PIL bilinear, uint8 after each), then to a float tensor; the dataset
            must hand it a PIL image decoded as ``PIL.Image.open(path).convert("RGB")``. ``"tensor"`` (opt-in):
            both resizes on the uint8 tensor (torch's antialiased bilinear), for a dataset that decodes with
            ``torchvision.io`` (``image_format="tensor"``); faster on large photos, but the pixels differ
            slightly from the reference's (features ~1e-4 relative, up to 6e-4 per image), so not the reference's.

    Returns:
        The transform (PIL image or uint8 tensor in, normalised float tensor out) and a description for cache keys
        that names the path.
    """
    if preprocess not in PREPROCESS_PATHS:
        raise ValueError(f"preprocess {preprocess!r} is not one of {', '.join(PREPROCESS_PATHS)}")
    resize = [v2.Resize(resize_short, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
              # aspect ratio deliberately not kept: the protocol squashes
              v2.Resize((size, size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)]
    # "pil": PIL image -> two PIL resizes -> tensor (as ToTensor after two transforms.Resize in the reference);
    # "tensor": uint8 tensor (or PIL image) -> tensor -> two uint8 tensor resizes.
    steps = [_require_pil, *resize, v2.ToImage()] if preprocess == "pil" else [v2.ToImage(), *resize]
    transform = v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return transform, f"{preprocess}-resize{resize_short}-squash{size}-rgb-imagenetnorm"


def _require_pil(image: Any) -> Image.Image:
    # The reference path resizes PIL images; a tensor here would silently take the tensor path instead.
    if not isinstance(image, Image.Image):
        raise TypeError(f"the 'pil' preprocessing path needs a PIL image (image_format='pil'), got {type(image)}")
    return image


def cache_key(**identity: Any) -> str:
    """Short sha256 of everything that determines the features (JSON of the keyword arguments)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer (BN running statistics included)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_frozen(model: nn.Module, snapshot: dict[str, torch.Tensor], source: str) -> None:
    """PROTOCOLS.md A.1: after a frozen-feature run, every backbone tensor must equal what was loaded.

    Raises:
        RuntimeError: naming the tensors that changed (a bug, e.g. BN left in train mode).
    """
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v.cpu(), snapshot[k].cpu())]
    if changed:
        raise RuntimeError(f"{source}: the frozen backbone changed during the run: {changed[:5]}")


@torch.no_grad()
def extract_features(model: nn.Module, dataset: Dataset, layers: Sequence[str], *, batch_size: int,
                     num_workers: int, device: torch.device, cache_dir: Path | None, key: str,
                     desc: str) -> dict[str, np.ndarray]:
    """Pooled, flattened feature1..5 (float32, not normalised) for every sample of ``dataset``, in order.

    Args:
        model: an eval-mode ResNet (the caller proves frozenness with :func:`assert_frozen`).
        dataset: yields ``(image_tensor, anything)``.
        layers: which of feat1..feat5 to return.
        batch_size: images per forward.
        num_workers: DataLoader worker processes.
        device: where the forward runs (bf16 autocast and channels_last on CUDA).
        cache_dir: cache root (None: no cache); files are ``<cache_dir>/<key>/<layer>.npy``.
        key: the identity of these features (see :func:`cache_key`).
        desc: progress-bar label.
    """
    folder = cache_dir / key if cache_dir is not None else None
    cached = {name: np.load(folder / f"{name}.npy") for name in layers
              if folder is not None and (folder / f"{name}.npy").is_file()}
    missing = [name for name in layers if name not in cached]
    if not missing:
        return cached
    extractor = MultiLayerFeatures(model, tuple(missing)).to(device).eval()
    on_cuda = device.type == "cuda"
    if on_cuda:
        extractor = extractor.to(memory_format=torch.channels_last)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=on_cuda, persistent_workers=False)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in missing}
    for images, _ in progress(loader, desc=desc, total=len(loader)):
        images = images.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
            out = extractor(images)
        for name in missing:
            parts[name].append(out[name].float().cpu().numpy())
    fresh = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    if folder is not None:
        for name, array in fresh.items():
            atomic_write(folder / f"{name}.npy", lambda handle, a=array: np.save(handle, a), "wb")
    return {name: cached[name] if name in cached else fresh[name] for name in layers}
