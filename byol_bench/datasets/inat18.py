"""iNaturalist 2018 from its official JSON files.

Layout under ``<data-root>/inat18`` (see docs/DATASETS.md)::

    train2018.json, val2018.json      # {"images": [{id, file_name, ...}], "annotations": [{image_id,
                                      #  category_id}], "categories": [{id, name, supercategory, ...}]}
    train_val2018/<supercategory>/<category id>/<hash>.jpg   # file_name paths are relative to inat18/

Labels are the category ids' ranks in sorted order; for the real files (ids 0..8141) that is the id itself.
Every image needs exactly one annotation with a known category, otherwise loading fails with the file named.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from byol_bench.datasets import DatasetError, read_annotation_json
from byol_bench.datasets.images import LabelledImages

SPLITS = ("train", "val")
_REQUIRED = {"images": ("id", "file_name"), "annotations": ("image_id", "category_id"), "categories": ("id",)}


def load_inat_json(path: Path) -> tuple[list[tuple[str, int]], list[dict]]:
    """Reads an iNat JSON file into ``(samples, categories)``.

    Returns:
        ``samples``: ``(file_name, label)`` in the file's image order; ``categories``: the records sorted by id
        (``label`` indexes this list).

    Raises:
        DatasetError: missing file, invalid JSON, missing keys, an unknown category or image id, or an image
            with zero or several annotations.
    """
    doc = read_annotation_json(path, _REQUIRED)
    categories = sorted(doc["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    category_of: dict[Any, int] = {}
    image_ids = {img["id"] for img in doc["images"]}
    for ann in doc["annotations"]:
        if ann["category_id"] not in label_of:
            raise DatasetError(f"{path}: annotation for image {ann['image_id']} has unknown category_id "
                               f"{ann['category_id']} (label out of range)")
        if ann["image_id"] not in image_ids:
            raise DatasetError(f"{path}: annotation names unknown image_id {ann['image_id']}")
        if ann["image_id"] in category_of:
            raise DatasetError(f"{path}: image {ann['image_id']} has more than one annotation")
        category_of[ann["image_id"]] = label_of[ann["category_id"]]
    unlabeled = [img["file_name"] for img in doc["images"] if img["id"] not in category_of]
    if unlabeled:
        raise DatasetError(f"{path}: {len(unlabeled)} images have no annotation, e.g. {unlabeled[0]}")
    samples = [(img["file_name"], category_of[img["id"]]) for img in doc["images"]]
    if not samples:
        raise DatasetError(f"{path}: no images")
    return samples, categories


class INat18(LabelledImages):
    """iNaturalist 2018 classification: ``(image, label)``.

    Args:
        root: the ``inat18`` folder (holding ``train2018.json``, ``val2018.json`` and ``train_val2018/``).
        split: ``"train"`` or ``"val"``.
        transform: called on the decoded image.
        image_format: ``"pil"`` or ``"tensor"`` (see ``images.load_image``).
        min_size: allow JPEG draft decoding down to this short side (PIL only).
    """

    def __init__(self, root: str | Path, split: str, transform: Callable[[Any], Any] | None = None,
                 image_format: str = "pil", min_size: int | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        self.root = Path(root)
        self.json_file = self.root / f"{split}2018.json"
        samples, self.categories = load_inat_json(self.json_file)
        self.classes = [c.get("name", str(c["id"])) for c in self.categories]
        super().__init__(samples, self.root, self.json_file, transform, image_format, min_size)
