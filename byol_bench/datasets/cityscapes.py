"""Cityscapes fine annotations: ``leftImg8bit`` images with ``gtFine`` label maps, labelIds -> trainIds.

Layout under ``<data-root>/cityscapes`` (see docs/DATASETS.md)::

    leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        # official label ids 0..33
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   # optional, made by cityscapesscripts

The label table is the official one (``cityscapesscripts/helpers/labels.py``): 19 evaluated classes get trainIds
0..18, every other id maps to 255 (ignored).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from byol_bench.datasets import DatasetError, FileCheck
from byol_bench.datasets.images import check_image_format, image_size, load_image, load_label_map

IGNORE_INDEX = 255
SPLITS = ("train", "val")


class CityscapesLabel(NamedTuple):
    """One row of the official label table."""

    name: str
    id: int
    train_id: int
    category: str
    ignore_in_eval: bool
    color: tuple[int, int, int]


LABELS = (
    CityscapesLabel("unlabeled", 0, 255, "void", True, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, "void", True, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, "void", True, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, "void", True, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, "void", True, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, "void", True, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, "void", True, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, "flat", False, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, "flat", False, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, "flat", True, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, "flat", True, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, "construction", False, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, "construction", False, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, "construction", False, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, "construction", True, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, "construction", True, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, "construction", True, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, "object", False, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, "object", True, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, "object", False, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, "object", False, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, "nature", False, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, "nature", False, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, "sky", False, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, "human", False, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, "human", False, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, "vehicle", False, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, "vehicle", False, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, "vehicle", False, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, "vehicle", True, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, "vehicle", True, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, "vehicle", False, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, "vehicle", False, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, "vehicle", False, (119, 11, 32)),
    CityscapesLabel("license plate", -1, -1, "vehicle", True, (0, 0, 142)),
)
MAX_LABEL_ID = max(label.id for label in LABELS)
# The 19 evaluated classes in trainId order.
TRAIN_CLASSES = tuple(label.name for label in sorted(LABELS, key=lambda lb: lb.train_id)
                      if 0 <= label.train_id < IGNORE_INDEX)


def _id_to_train_id_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in LABELS:
        if label.id >= 0:
            lut[label.id] = label.train_id if 0 <= label.train_id < IGNORE_INDEX else IGNORE_INDEX
    return lut


ID_TO_TRAIN_ID = _id_to_train_id_lut()


def label_ids_to_train_ids(label_ids: np.ndarray, source: str | Path = "<array>") -> np.ndarray:
    """Maps a labelIds map to trainIds (0..18, 255 = ignore).

    Raises:
        DatasetError: a value above 33 (not an official label id), naming ``source``.
    """
    if label_ids.size and int(label_ids.max()) > MAX_LABEL_ID:
        raise DatasetError(f"{source}: label id {int(label_ids.max())} out of range (official ids are "
                           f"0..{MAX_LABEL_ID})")
    return ID_TO_TRAIN_ID[label_ids]


TARGET_TYPES = ("labelIds", "labelTrainIds")


def _png_mode(path: Path) -> str:
    """The PIL mode of an image file (reads the header only)."""
    with Image.open(path) as img:
        return img.mode


class Cityscapes:
    """Cityscapes fine segmentation: ``(image, target)`` with target uint8 (H, W) trainIds (255 = ignore).

    Args:
        root: the ``cityscapes`` folder (holding ``leftImg8bit/`` and ``gtFine/``).
        split: ``"train"`` or ``"val"``.
        transform: called as ``transform(image, target)`` and must return both (joint crops/flips).
        target_type: ``"labelIds"`` (default; mapped here with the official table) or ``"labelTrainIds"``
            (read the precomputed files, as mmsegmentation does).
        image_format: ``"pil"`` or ``"tensor"`` (see ``images.load_image``).

    Raises:
        DatasetError: missing folders, an image without its label file, an empty split, or bad label values.
    """

    def __init__(self, root: str | Path, split: str,
                 transform: Callable[[Any, np.ndarray], tuple[Any, np.ndarray]] | None = None,
                 target_type: str = "labelIds", image_format: str = "pil") -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        if target_type not in TARGET_TYPES:
            raise ValueError(f"target_type {target_type!r} is not one of {', '.join(TARGET_TYPES)}")
        self.root = Path(root)
        self.transform = transform
        self.target_type = target_type
        self.image_format = check_image_format(image_format)
        image_dir = self.root / "leftImg8bit" / split
        label_dir = self.root / "gtFine" / split
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise DatasetError(f"{folder}: folder not found (see docs/DATASETS.md for the Cityscapes layout)")
        images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise DatasetError(f"{image_dir}: no <city>/*_leftImg8bit.png images")
        self.samples: list[tuple[Path, Path]] = []
        for image in images:
            stem = image.name[: -len("_leftImg8bit.png")]
            label = label_dir / image.parent.name / f"{stem}_gtFine_{target_type}.png"
            if not label.is_file():
                raise DatasetError(f"{label}: label file for {image} not found")
            self.samples.append((image, label))

    def __len__(self) -> int:
        return len(self.samples)

    def preflight_item(self, index: int) -> FileCheck:
        """The files ``self[index]`` reads (``byol_bench.preflight``): the image and its single-channel (L) label
        map of the same size (found by scanning, so no list names them)."""
        image, label = self.samples[index]
        return FileCheck(image, label_map=label, label_modes=("L",))

    def __getitem__(self, index: int) -> tuple[Any, np.ndarray]:
        image_path, label_path = self.samples[index]
        image = load_image(image_path, self.image_format)
        labels = load_label_map(label_path)
        if _png_mode(label_path) == "P":
            # A palette PNG is a colour rendering or another dataset's format: its indices are not official ids.
            raise DatasetError(f"{label_path}: palette PNG, expected a single-channel (L) {self.target_type} map as "
                               "cityscapesScripts writes it")
        if self.target_type == "labelIds":
            target = label_ids_to_train_ids(labels, label_path)
        else:
            bad = (labels >= len(TRAIN_CLASSES)) & (labels != IGNORE_INDEX)
            if bad.any():
                raise DatasetError(f"{label_path}: trainId {int(labels[bad][0])} out of range "
                                   f"(0..{len(TRAIN_CLASSES) - 1} or {IGNORE_INDEX})")
            target = labels
        size = image_size(image)
        if size != (target.shape[1], target.shape[0]):
            raise DatasetError(f"{label_path}: label map is {target.shape[1]}x{target.shape[0]} but "
                               f"{image_path} is {size[0]}x{size[1]}")
        if self.transform is not None:
            return self.transform(image, target)
        return image, target
