"""PASCAL VOC 2012 segmentation with the SBD "Aug" annotations, as mmsegmentation's ``voc12aug`` reads it.

Layout under ``<data-root>/VOCdevkit/VOC2012`` (see docs/DATASETS.md)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png        # palette PNGs; the palette index is the class (0 bg, 1..20, 255 void)
    SegmentationClassAug/<id>.png     # index PNGs (from SBD, made by mmseg's tools/convert_datasets/voc_aug.py)
    ImageSets/Segmentation/train.txt, val.txt, aug.txt

Splits: ``train`` / ``val`` read ``SegmentationClass``; ``aug`` reads ``SegmentationClassAug``; ``trainaug`` is
``train`` followed by ``aug``, exactly the two (ann_dir, split) pairs the mmseg config concatenates (images in
both lists appear twice, as there).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from byol_bench.datasets import DatasetError, FileCheck
from byol_bench.datasets.images import LABEL_MODES, check_image_format, image_size, load_image, load_label_map
from byol_bench.datasets.voc import VOC_CLASSES, read_id_list, year_dir

IGNORE_INDEX = 255
NUM_CLASSES = len(VOC_CLASSES) + 1  # background + 20
# split -> [(id list, annotation folder)]
SPLITS = {
    "train": [("train", "SegmentationClass")],
    "val": [("val", "SegmentationClass")],
    "aug": [("aug", "SegmentationClassAug")],
    "trainaug": [("train", "SegmentationClass"), ("aug", "SegmentationClassAug")],
}


def check_label_values(labels: np.ndarray, path: Path) -> np.ndarray:
    """Returns ``labels`` after checking every value is a class (0..20) or 255.

    Raises:
        DatasetError: another value (e.g. an RGB rendering or a wrong palette), naming the file.
    """
    bad = (labels >= NUM_CLASSES) & (labels != IGNORE_INDEX)
    if bad.any():
        raise DatasetError(f"{path}: label value {int(labels[bad][0])} out of range "
                           f"(0..{NUM_CLASSES - 1} or {IGNORE_INDEX})")
    return labels


class VOCAugSegmentation:
    """VOC2012 (+Aug) semantic segmentation: ``(image, target)`` with target uint8 (H, W).

    Args:
        root: the ``VOCdevkit/VOC2012`` folder (or its ``VOCdevkit`` parent).
        split: ``"train"``, ``"val"``, ``"aug"`` or ``"trainaug"``.
        transform: called as ``transform(image, target)`` and must return both (joint crops/flips).
        image_format: ``"pil"`` or ``"tensor"`` (see ``images.load_image``).

    Raises:
        DatasetError: a missing list, image or label file, a label/image size mismatch, or bad label values.
    """

    def __init__(self, root: str | Path, split: str,
                 transform: Callable[[Any, np.ndarray], tuple[Any, np.ndarray]] | None = None,
                 image_format: str = "pil") -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        self.root = year_dir(root, "2012")
        self.samples: list[tuple[Path, Path]] = []
        for list_name, ann_dir in SPLITS[split]:
            list_file = self.root / "ImageSets" / "Segmentation" / f"{list_name}.txt"
            for image_id in read_id_list(list_file):
                image, label = self.root / "JPEGImages" / f"{image_id}.jpg", self.root / ann_dir / f"{image_id}.png"
                for path in (label, image):
                    if not path.is_file():
                        raise DatasetError(f"{list_file}: names {image_id}, but {path} does not exist")
                self.samples.append((image, label))
        self.transform = transform
        self.image_format = check_image_format(image_format)

    def __len__(self) -> int:
        return len(self.samples)

    def preflight_item(self, index: int) -> FileCheck:
        """The files ``self[index]`` reads (``byol_bench.preflight``): the JPEG and its label map, an index or
        palette PNG of the JPEG's size (both checked to exist at construction, naming their list)."""
        image, label = self.samples[index]
        return FileCheck(image, label_map=label, label_modes=LABEL_MODES)

    def __getitem__(self, index: int) -> tuple[Any, np.ndarray]:
        image_path, label_path = self.samples[index]
        image = load_image(image_path, self.image_format)
        target = check_label_values(load_label_map(label_path), label_path)
        size = image_size(image)
        if tuple(size) != (target.shape[1], target.shape[0]):
            raise DatasetError(f"{label_path}: label map is {target.shape[1]}x{target.shape[0]} but "
                               f"{image_path} is {size[0]}x{size[1]}")
        if self.transform is not None:
            return self.transform(image, target)
        return image, target
