"""COCO 2017 instances through pycocotools (the same API the evaluation uses).

Layout under ``<data-root>/coco`` (see docs/DATASETS.md)::

    annotations/instances_train2017.json, instances_val2017.json
    train2017/<12-digit id>.jpg, val2017/<12-digit id>.jpg

The JSON is checked before pycocotools indexes it (pycocotools itself fails late with a bare KeyError).
Targets use contiguous labels ``0..K-1`` in sorted category-id order (``category_ids[label]`` maps back, as
COCO results files need the original ids). Boxes are float32 ``x0, y0, x1, y1`` from COCO's ``x, y, w, h``.

Bad input: an annotation naming an unknown image or category, a malformed bbox or polygon (odd coordinate count),
and an image listed in the JSON without its file are one-line :class:`DatasetError` s naming the file. Training
targets (``training=True``) leave out what a detector is not trained on, counted per reason in ``num_dropped``
and logged, as the reference trainers do:

* ``crowd``: ``iscrowd=1`` regions (the evaluation reads them from the JSON and ignores detections on them);
* ``small_box``: a box under 1 px wide or high, or zero area (mmdet ``CocoDataset.parse_data_info``);
* ``no_polygon``: with masks, an annotation none of whose polygons has >= 3 points (a polygon with fewer is
  dropped, detectron2's ``load_coco_json`` rule; pycocotools would read a 2-point polygon as a box).

An image left without objects still trains, as background only (mmdet keeps it: ``filter_empty`` looks at the
JSON's annotations, crowds included).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from byol_bench.datasets import DatasetError, FileCheck, read_annotation_json
from byol_bench.datasets.images import check_image_format, image_size, load_image

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
_REQUIRED = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"),
    "categories": ("id", "name"),
}


def load_coco_json(path: Path) -> COCO:
    """Validates a COCO instances file and returns the indexed ``pycocotools.coco.COCO`` object.

    Raises:
        DatasetError: missing file, invalid JSON, a missing key, an annotation naming an unknown image or
            category (label out of range), or a malformed bbox.
    """
    doc = read_annotation_json(path, _REQUIRED)
    image_ids = {img["id"] for img in doc["images"]}
    category_ids = {cat["id"] for cat in doc["categories"]}
    for ann in doc["annotations"]:
        if ann["image_id"] not in image_ids:
            raise DatasetError(f"{path}: annotation {ann['id']} names unknown image_id {ann['image_id']}")
        if ann["category_id"] not in category_ids:
            raise DatasetError(f"{path}: annotation {ann['id']} has unknown category_id {ann['category_id']} "
                               "(label out of range)")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and bbox[2] >= 0 and bbox[3] >= 0):
            raise DatasetError(f"{path}: annotation {ann['id']} has malformed bbox {bbox} (want [x, y, w, h])")
        segm = ann["segmentation"]
        if isinstance(segm, list) and any(not isinstance(p, list) or len(p) % 2 for p in segm):
            raise DatasetError(f"{path}: annotation {ann['id']} has a polygon with an odd number of coordinates "
                               "(want [x1, y1, x2, y2, ...])")
    coco = COCO()
    coco.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


class COCODetection:
    """COCO instance detection/segmentation: ``(image, target)``.

    ``target`` is a dict: ``image_id`` (int), ``boxes`` float32 (N, 4) xyxy, ``labels`` int64 (N,) contiguous,
    ``iscrowd`` bool (N,), ``area`` float32 (N,), and with ``with_masks`` also ``masks`` uint8 (N, H, W)
    decoded with pycocotools (polygons and RLE alike).

    Args:
        root: the ``coco`` folder.
        split: ``"train"`` or ``"val"`` (the 2017 files).
        transform: called as ``transform(image, target)`` and must return both.
        with_masks: decode instance masks.
        filter_empty: skip images without annotations (training; counted in ``num_skipped_empty`` and logged).
        image_format: ``"pil"`` or ``"tensor"`` (see ``images.load_image``).
        training: training targets: crowds, sub-pixel boxes and (with masks) annotations without a valid polygon
            are left out, counted in ``num_dropped`` (see the module docstring). Evaluation keeps everything.

    Raises:
        DatasetError: a bad annotation file (see :func:`load_coco_json`), or images it lists that are not in the
            image folder.
    """

    def __init__(self, root: str | Path, split: str,
                 transform: Callable[[Any, dict], tuple[Any, dict]] | None = None, with_masks: bool = False,
                 filter_empty: bool = False, image_format: str = "pil", training: bool = False) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        self.root = Path(root)
        self.image_dir = self.root / f"{split}2017"
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: image folder not found (see docs/DATASETS.md)")
        self.ann_file = self.root / "annotations" / f"instances_{split}2017.json"
        self.coco = load_coco_json(self.ann_file)
        self.category_ids = sorted(self.coco.getCatIds())
        self.classes = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.label_of = {c: i for i, c in enumerate(self.category_ids)}
        ids = sorted(self.coco.getImgIds())
        present = set(os.listdir(self.image_dir))  # one listing, not 118k stat calls
        missing = [self.coco.imgs[i]["file_name"] for i in ids if self.coco.imgs[i]["file_name"] not in present]
        if missing:
            raise DatasetError(f"{self.ann_file}: lists {len(missing)} images that are not in {self.image_dir} "
                               f"(first: {missing[0]}); complete the download or use the matching annotation file")
        self.image_ids = [i for i in ids if self.coco.getAnnIds(imgIds=i) or not filter_empty]
        self.num_skipped_empty = len(ids) - len(self.image_ids)
        if self.num_skipped_empty:
            log.warning("%s: skipped %d images without annotations", self.ann_file, self.num_skipped_empty)
        self.transform = transform
        self.with_masks = with_masks
        self.image_format = check_image_format(image_format)
        self.training = training
        self.kept: dict[int, list[dict]] = {}  # image id -> the annotations its target holds
        self.num_dropped: Counter[str] = Counter()
        for image_id in self.image_ids:
            anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
            self.kept[image_id] = [a for a in anns if not training or self._trainable(a)]
        if self.num_dropped:
            log.warning("%s: left %s out of the training targets", self.ann_file,
                        ", ".join(f"{n} {why}" for why, n in sorted(self.num_dropped.items())))

    def _trainable(self, ann: dict) -> bool:
        """Counts and returns False for an annotation a detector does not train on (module docstring)."""
        _, _, w, h = ann["bbox"]
        why = ("crowd" if ann["iscrowd"] else "small_box" if w < 1 or h < 1 or ann["area"] <= 0
               else "no_polygon" if self.with_masks and isinstance(ann["segmentation"], list) and not _polygons(ann)
               else None)
        if why is not None:
            self.num_dropped[why] += 1
        return why is None

    def __len__(self) -> int:
        return len(self.image_ids)

    def preflight_item(self, index: int) -> FileCheck:
        """The file ``self[index]`` reads (``byol_bench.preflight``): the image, of the size the JSON says."""
        info = self.coco.imgs[self.image_ids[index]]
        return FileCheck(self.image_dir / info["file_name"], self.ann_file, (info["width"], info["height"]),
                         self.ann_file)

    def __getitem__(self, index: int) -> tuple[Any, dict]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        image = load_image(path, self.image_format)
        if image_size(image) != (info["width"], info["height"]):
            raise DatasetError(f"{path}: image is {image_size(image)} but {self.ann_file} says "
                               f"{info['width']}x{info['height']}")
        anns = self.kept[image_id]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        target = {
            "image_id": image_id,
            "boxes": boxes,
            "labels": np.array([self.label_of[a["category_id"]] for a in anns], dtype=np.int64),
            "iscrowd": np.array([bool(a["iscrowd"]) for a in anns], dtype=bool),
            "area": np.array([a["area"] for a in anns], dtype=np.float32),
        }
        if self.with_masks:
            h, w = info["height"], info["width"]
            masks = [mask_utils.decode(_rle(a, h, w) if self.training else self.coco.annToRLE(a)) for a in anns]
            target["masks"] = np.stack(masks) if masks else np.zeros((0, h, w), dtype=np.uint8)
        if self.transform is not None:
            return self.transform(image, target)
        return image, target


def _polygons(ann: dict) -> list[list[float]]:
    """A polygon annotation's polygons with >= 3 points."""
    return [p for p in ann["segmentation"] if len(p) >= 6]


def _rle(ann: dict, h: int, w: int) -> dict:
    """The training mask of a kept annotation: the union of its valid polygons, or its RLE."""
    if isinstance(ann["segmentation"], list):
        return mask_utils.merge(mask_utils.frPyObjects(_polygons(ann), h, w))
    segm = ann["segmentation"]
    return mask_utils.frPyObjects(segm, h, w) if isinstance(segm["counts"], list) else segm
