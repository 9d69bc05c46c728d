"""PASCAL VOC detection: ``Annotations/<id>.xml`` boxes with their ``difficult`` and ``truncated`` flags.

Boxes are returned as float32 ``(x0, y0, x1, y1)`` in pixel-edge coordinates: VOC's 1-based inclusive
``xmin..xmax`` becomes ``xmin - 1 .. xmax`` (the detectron2 convention), so width = ``xmax - xmin + 1`` pixels.
Labels index :data:`~byol_bench.datasets.voc.VOC_CLASSES`. Difficult objects are kept and flagged: detectron2
trains on them, mmdet ignores them, and every VOC evaluation ignores them.

Images whose XML has no objects are a documented skip when ``filter_empty`` is set (training): they are counted
in ``num_skipped_empty`` and logged. Evaluation must keep them (``filter_empty=False``).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from byol_bench.datasets import DatasetError, FileCheck
from byol_bench.datasets.images import check_image_format, image_size, load_image
from byol_bench.datasets.voc import VOC_CLASSES, read_id_list, year_dir

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "trainval", "test")


@dataclass(frozen=True)
class VOCAnnotation:
    """One parsed XML file.

    Attributes:
        image_id: the file stem (e.g. ``000005``).
        width, height: image size from ``<size>``.
        boxes: float32 (N, 4) ``x0, y0, x1, y1`` pixel-edge coordinates.
        labels: int64 (N,) indices into ``VOC_CLASSES``.
        difficult, truncated: bool (N,).
    """

    image_id: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    truncated: np.ndarray


def _int(node: ET.Element, tag: str, path: Path, default: int | None = None) -> int:
    child = node.find(tag)
    if child is None or child.text is None:
        if default is not None:
            return default
        raise DatasetError(f"{path}: missing <{tag}>")
    try:
        return int(float(child.text))
    except ValueError:
        raise DatasetError(f"{path}: <{tag}> is {child.text!r}, not a number") from None


def parse_voc_xml(path: Path) -> VOCAnnotation:
    """Parses one VOC annotation file.

    Raises:
        DatasetError: missing or malformed XML, an unknown class name, or a box outside the image or inverted
            (the message names the file and the object).
    """
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DatasetError(f"{path}: malformed XML ({exc})") from exc
    size = root.find("size")
    if size is None:
        raise DatasetError(f"{path}: missing <size>")
    width, height = _int(size, "width", path), _int(size, "height", path)
    boxes, labels, difficult, truncated = [], [], [], []
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise DatasetError(f"{path}: object {k} has unknown class {name!r} (valid: {', '.join(VOC_CLASSES)})")
        box = obj.find("bndbox")
        if box is None:
            raise DatasetError(f"{path}: object {k} ({name}) has no <bndbox>")
        x0, y0, x1, y1 = (_int(box, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        if not (1 <= x0 <= x1 <= width and 1 <= y0 <= y1 <= height):
            raise DatasetError(f"{path}: object {k} ({name}) box {x0},{y0},{x1},{y1} is outside the "
                               f"{width}x{height} image or inverted")
        boxes.append((x0 - 1, y0 - 1, x1, y1))
        labels.append(VOC_CLASSES.index(name))
        difficult.append(_int(obj, "difficult", path, default=0) == 1)
        truncated.append(_int(obj, "truncated", path, default=0) == 1)
    return VOCAnnotation(path.stem, width, height, np.array(boxes, dtype=np.float32).reshape(-1, 4),
                         np.array(labels, dtype=np.int64), np.array(difficult, dtype=bool),
                         np.array(truncated, dtype=bool))


class VOCDetection:
    """VOC detection for one year and split: ``(image, annotation)`` with a :class:`VOCAnnotation`.

    Concatenate two instances for VOC07+12 training.

    Args:
        root: the ``VOCdevkit/VOC<year>`` folder (or its ``VOCdevkit`` parent).
        year: ``"2007"`` or ``"2012"``.
        split: an ``ImageSets/Main`` list name (``trainval``, ``test``, ...).
        transform: called as ``transform(image, annotation)`` and must return both.
        filter_empty: skip images whose XML has no objects (counted and logged); use False for evaluation.
        image_format: ``"pil"`` or ``"tensor"`` (see ``images.load_image``).
        first: keep only the first ``first`` images of the list (tiny runs); None keeps all.
    """

    def __init__(self, root: str | Path, year: str, split: str,
                 transform: Callable[[Any, VOCAnnotation], tuple[Any, Any]] | None = None,
                 filter_empty: bool = True, image_format: str = "pil", first: int | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        self.root = year_dir(root, year)
        self.list_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        ids = read_id_list(self.list_file)[:first]
        missing = [i for i in ids if not (self.root / "JPEGImages" / f"{i}.jpg").is_file()]
        if missing:  # checked up front: a training run would otherwise fail hours in, in a DataLoader worker
            raise DatasetError(f"{self.root / 'JPEGImages' / (missing[0] + '.jpg')}: image file not found (listed in "
                               f"ImageSets/Main/{split}.txt; {len(missing)} listed image(s) missing)")
        annotations = [parse_voc_xml(self.root / "Annotations" / f"{i}.xml") for i in ids]
        self.annotations = [a for a in annotations if len(a.labels) or not filter_empty]
        self.num_skipped_empty = len(annotations) - len(self.annotations)
        if self.num_skipped_empty:
            log.warning("%s %s: skipped %d images whose XML has no objects", self.root, split,
                        self.num_skipped_empty)
        self.transform = transform
        self.image_format = check_image_format(image_format)

    def __len__(self) -> int:
        return len(self.annotations)

    def preflight_item(self, index: int) -> FileCheck:
        """The file ``self[index]`` reads (``byol_bench.preflight``): the JPEG, of the size its XML says."""
        ann = self.annotations[index]
        return FileCheck(self.root / "JPEGImages" / f"{ann.image_id}.jpg", self.list_file, (ann.width, ann.height),
                         self.root / "Annotations" / f"{ann.image_id}.xml")

    def __getitem__(self, index: int) -> tuple[Any, VOCAnnotation]:
        ann = self.annotations[index]
        path = self.root / "JPEGImages" / f"{ann.image_id}.jpg"
        image = load_image(path, self.image_format)
        size = image_size(image)
        if tuple(size) != (ann.width, ann.height):
            raise DatasetError(f"{path}: image is {size[0]}x{size[1]} but its XML says {ann.width}x{ann.height}")
        if self.transform is not None:
            return self.transform(image, ann)
        return image, ann


def detection_sample(image: torch.Tensor, ann: VOCAnnotation) -> tuple[torch.Tensor, dict[str, Any]]:
    """A ``VOCDetection`` transform giving torchvision detection samples (``benchmarks.detection.data``).

    ``labels`` are the class index + 1 (0 is the background); ``difficult`` boxes are kept (detectron2 trains on
    them; every VOC evaluation ignores them).
    """
    return image, {"boxes": torch.from_numpy(ann.boxes), "labels": torch.from_numpy(ann.labels + 1),
                   "difficult": torch.from_numpy(ann.difficult), "image_id": ann.image_id}
