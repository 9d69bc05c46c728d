"""The one image-decoding helper every loader uses.

``load_image(path, image_format, min_size)`` decodes to an RGB PIL image (``"pil"``) or a uint8 CHW tensor
(``"tensor"``, via ``torchvision.io.decode_image``). ``min_size`` turns on JPEG draft decoding in PIL: libjpeg
scales by 1/2, 1/4 or 1/8 during decoding while keeping both sides >= ``min_size``, which is much faster for
large photos that a transform will shrink anyway (``scripts/bench_decode.py`` measures it). Draft decoding changes
pixels slightly, so protocols default to full decoding.

Label maps (segmentation PNGs) are read with :func:`load_label_map`, which keeps palette indices as they are.
:class:`LabelledImages` is the common read path of the classification loaders (ImageNet, iNat18, Places205).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from byol_bench.datasets import DatasetError, FileCheck

IMAGE_FORMATS = ("pil", "tensor")
LABEL_MODES = ("P", "L")  # what load_label_map reads: palette or index PNGs, never a colour rendering


def check_image_format(image_format: str) -> str:
    """Validates an ``image_format`` argument (datasets call it at construction) and returns it."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format {image_format!r} is not one of {', '.join(IMAGE_FORMATS)}")
    return image_format


def _load_pil(path: Path, min_size: int | None) -> Image.Image:
    with Image.open(path) as img:
        if min_size is not None and img.format == "JPEG":
            img.draft("RGB", (min_size, min_size))
        # load() forces the full decode here, so a truncated file fails now and not later inside a transform.
        img.load()
        return img.convert("RGB")


def _load_tensor(path: Path, min_size: int | None) -> Any:
    # Imported lazily: the loaders themselves must not need torch to list or validate a dataset.
    import torch
    from torchvision.io import ImageReadMode, decode_image

    del min_size  # NOTE: torchvision has no reduced-size JPEG decode; the tensor path always decodes fully.
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec; they still work and are measured
        # in scripts/bench_decode.py. Truncated files raise RuntimeError ("Image is incomplete or truncated").
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        return decode_image(data, mode=ImageReadMode.RGB)


_DECODERS = {"pil": _load_pil, "tensor": _load_tensor}


def load_image(path: str | Path, image_format: str = "pil", min_size: int | None = None) -> Any:
    """Decodes an image file to RGB.

    Args:
        path: image file.
        image_format: ``"pil"`` (RGB ``PIL.Image``) or ``"tensor"`` (uint8 tensor, 3 x H x W).
        min_size: PIL only: allow JPEG draft decoding down to a short side of at least this many pixels.

    Returns:
        The decoded image.

    Raises:
        DatasetError: the file is missing, not an image, corrupt or truncated (the message names the file).
    """
    check_image_format(image_format)
    path = Path(path)
    try:
        return _DECODERS[image_format](path, min_size)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, RuntimeError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: corrupt or truncated image ({exc})") from exc


def load_label_map(path: str | Path) -> np.ndarray:
    """Reads a single-channel label PNG (palette or grayscale) as uint8 indices (H x W), without colour mapping.

    Raises:
        DatasetError: missing, unreadable, or not a palette/grayscale image (e.g. an RGB colour rendering).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode, labels = img.mode, np.array(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"{path}: label file not found") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: corrupt or truncated label image ({exc})") from exc
    if mode not in LABEL_MODES:
        raise DatasetError(f"{path}: label map has mode {mode}, expected a palette (P) or index (L) PNG; "
                           "colour renderings cannot be used as labels")
    return labels


def image_size(image: Any) -> tuple[int, int]:
    """``(width, height)`` of a decoded image from :func:`load_image` (PIL image or C x H x W tensor)."""
    if isinstance(image, Image.Image):
        return image.size
    return int(image.shape[-1]), int(image.shape[-2])


class LabelledImages:
    """``(image, label)`` pairs from ``(path relative to image_dir, label)`` samples: the classification loaders' base.

    A subclass reads its on-disk format into ``samples`` and calls ``__init__``. ``source`` is the file that named
    the images (a list or JSON file): a listed image that does not exist is an error naming that file, raised when
    the image is read. ``None`` means the images were found by scanning ``image_dir``, so they exist.
    """

    def __init__(self, samples: list[tuple[str, int]], image_dir: Path, source: Path | None,
                 transform: Callable[[Any], Any] | None, image_format: str, min_size: int | None) -> None:
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.image_dir = image_dir
        self.source = source
        self.transform = transform
        self.image_format = check_image_format(image_format)
        self.min_size = min_size

    def __len__(self) -> int:
        return len(self.samples)

    def preflight_item(self, index: int) -> FileCheck:
        """The file ``self[index]`` reads (``byol_bench.preflight``): the image, named by ``source``."""
        return FileCheck(self.image_dir / self.samples[index][0], self.source)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        rel, label = self.samples[index]
        path = self.image_dir / rel
        if self.source is not None and not path.is_file():
            raise DatasetError(f"{self.source}: names {rel}, which does not exist under {self.image_dir}")
        image = load_image(path, self.image_format, self.min_size)
        if self.transform is not None:
            image = self.transform(image)
        return image, label
