"""Places205 from the official split lists.

Layout under ``<data-root>/places205`` (see docs/DATASETS.md)::

    data/vision/torralba/deeplearning/images256/<letter>/<scene>/<file>.jpg   # from imagesPlaces205_resize.tar
    trainvalsplit_places205/train_places205.csv, val_places205.csv           # "a/abbey/gsun_....jpg 0"

The csv files are space-separated ``path label`` lines (no header), read with the same strict parser as the
ImageNet lists; labels must lie in ``[0, 205)`` for the real data (``num_classes``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from byol_bench.datasets import DatasetError
from byol_bench.datasets.imagenet import read_image_list
from byol_bench.datasets.images import LabelledImages

SPLITS = ("train", "val")
IMAGE_SUBDIR = "data/vision/torralba/deeplearning/images256"
NUM_CLASSES = 205


class Places205(LabelledImages):
    """Places205 scene classification: ``(image, label)``.

    Args:
        root: the ``places205`` folder.
        split: ``"train"`` or ``"val"``.
        transform: called on the decoded image.
        num_classes: labels must be below it; ``None`` (the tiny data) infers it as max label + 1 of train.
        image_format: ``"pil"`` or ``"tensor"`` (see ``images.load_image``).
        min_size: allow JPEG draft decoding down to this short side (PIL only).
    """

    def __init__(self, root: str | Path, split: str, transform: Callable[[Any], Any] | None = None,
                 num_classes: int | None = NUM_CLASSES, image_format: str = "pil",
                 min_size: int | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        self.root = Path(root)
        self.image_dir = self.root / IMAGE_SUBDIR
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: image folder not found (see docs/DATASETS.md)")
        split_dir = self.root / "trainvalsplit_places205"
        self.list_file = split_dir / f"{split}_places205.csv"
        if num_classes is None:
            num_classes = max(label for _, label in read_image_list(split_dir / "train_places205.csv")) + 1
        self.num_classes = num_classes
        super().__init__(read_image_list(self.list_file, num_classes), self.image_dir, self.list_file, transform,
                         image_format, min_size)
