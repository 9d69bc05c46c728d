"""VOC2007 classification labels for the SVM protocol (PROTOCOLS.md B §2.1), and an image dataset over them.

Reads ``ImageSets/Main/<class>_<split>.txt`` for the 20 classes in alphabetical order and maps the VOC values
to the SVM labels exactly as mmselfsup's ``create_voc_data_files.py`` does:

    VOC  1 (present)         -> 1
    VOC -1 (absent)          -> 0
    VOC  0 (difficult only)  -> -1   (ignored in testing; a negative in full-SVM training)

Rows follow the sorted image ids, which is also the order of ``ImageSets/Main/<split>.txt``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from byol_bench.datasets import DatasetError, FileCheck
from byol_bench.datasets.images import check_image_format, load_image
from byol_bench.datasets.voc import VOC_CLASSES, read_id_list, year_dir

SPLITS = ("train", "val", "trainval", "test")
_VOC_TO_SVM = {1: 1, -1: 0, 0: -1}


def _read_class_file(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise DatasetError(f"{path}: class list not found (expected '<image id> <1|-1|0>' lines)")
    values: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("1", "-1", "0"):
            raise DatasetError(f"{path}:{lineno}: expected '<image id> <1|-1|0>', got {line!r}")
        if fields[0] in values:
            raise DatasetError(f"{path}:{lineno}: image {fields[0]} is listed twice")
        values[fields[0]] = int(fields[1])
    return values


def load_voc07_cls_labels(devkit_root: str | Path, split: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Loads the VOC07 classification label matrix for one split.

    Args:
        devkit_root: the ``VOCdevkit/VOC2007`` folder (or its ``VOCdevkit`` parent).
        split: ``"trainval"`` or ``"test"`` for the protocol (``"train"``/``"val"`` also work).

    Returns:
        ``(image_ids, labels, class_names)``: ids sorted ascending; ``labels`` int32 (N, 20) with 1 present /
        0 absent / -1 difficult-only; ``class_names`` the 20 classes in alphabetical order.

    Raises:
        DatasetError: a missing list, a value other than 1/-1/0, or a class file whose ids differ from
            ``ImageSets/Main/<split>.txt`` (the message names the file).
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    main_dir = year_dir(devkit_root, "2007") / "ImageSets" / "Main"
    split_file = main_dir / f"{split}.txt"
    image_ids = sorted(read_id_list(split_file))
    class_names = sorted(VOC_CLASSES)
    labels = np.empty((len(image_ids), len(class_names)), dtype=np.int32)
    for c, name in enumerate(class_names):
        path = main_dir / f"{name}_{split}.txt"
        values = _read_class_file(path)
        if values.keys() != set(image_ids):
            missing = sorted(set(image_ids) - values.keys())[:3]
            extra = sorted(values.keys() - set(image_ids))[:3]
            raise DatasetError(f"{path}: image ids differ from {split_file} (missing {missing}, extra {extra})")
        labels[:, c] = [_VOC_TO_SVM[values[i]] for i in image_ids]
    return image_ids, labels, class_names


class VOCClassification:
    """VOC07 images with their 20-class label rows (see :func:`load_voc07_cls_labels`), in sorted-id order.

    Returns ``(image, labels)`` with ``labels`` an int32 array of shape (20,).

    Args:
        devkit_root: the ``VOCdevkit/VOC2007`` folder (or its ``VOCdevkit`` parent).
        split: ``"trainval"`` or ``"test"`` (or ``"train"``/``"val"``).
        transform: called on the decoded image.
        image_format: ``"pil"`` or ``"tensor"`` (see ``images.load_image``).
        min_size: allow JPEG draft decoding down to this short side (PIL only).
    """

    def __init__(self, devkit_root: str | Path, split: str, transform: Callable[[Any], Any] | None = None,
                 image_format: str = "pil", min_size: int | None = None) -> None:
        self.root = year_dir(devkit_root, "2007")
        self.image_ids, self.labels, self.classes = load_voc07_cls_labels(self.root, split)
        self.list_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        self.transform = transform
        self.image_format = check_image_format(image_format)
        self.min_size = min_size

    def image_path(self, index: int) -> Path:
        """The JPEG file of sample ``index``."""
        return self.root / "JPEGImages" / f"{self.image_ids[index]}.jpg"

    def preflight_item(self, index: int) -> FileCheck:
        """The file ``self[index]`` reads (``byol_bench.preflight``): the JPEG, named by the split's list."""
        return FileCheck(self.image_path(index), self.list_file)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[Any, np.ndarray]:
        image = load_image(self.image_path(index), self.image_format, self.min_size)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]
