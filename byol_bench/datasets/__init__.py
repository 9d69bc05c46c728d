"""Dataset loaders, one module per on-disk format; the same code reads the real datasets and the tiny ones.

Modules: ``images`` (the one image-decoding helper), ``imagenet`` (folder and list forms), ``inat18``,
``places205``, ``voc`` (devkit layout shared by) ``voc_cls`` / ``voc_det`` / ``voc_seg``, ``coco``,
``cityscapes``. The expected layout of each dataset under ``--data-root`` is in ``docs/DATASETS.md``.

Every loader fails loudly on bad data with a :class:`DatasetError` whose message names the file and the problem.
The few documented skips (e.g. VOC images with no objects when training a detector) are counted on the dataset
object and logged; none of them can change a label.

Every dataset class has ``preflight_item(index)``: the files ``dataset[index]`` reads, as a :class:`FileCheck`, so
``byol_bench.preflight`` can check every file of a split before a run trains on it, from the annotations the loader
has already parsed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple


class DatasetError(ValueError):
    """Bad or missing dataset files; the message names the file and the problem."""


class FileCheck(NamedTuple):
    """The files one dataset item reads and what their headers must agree with (``byol_bench.preflight``).

    Attributes:
        image: the image file.
        listed_in: the list or JSON file naming the image (named in the fix of a missing file); None when the
            loader found it by scanning folders.
        size: ``(width, height)`` the annotation says the image has (VOC XML ``<size>``, COCO JSON), or None.
        size_from: the file saying ``size``.
        label_map: the label PNG that must have the image's size, or None.
        label_modes: the PIL modes the loader accepts for ``label_map``.
    """

    image: Path
    listed_in: Path | None = None
    size: tuple[int, int] | None = None
    size_from: Path | None = None
    label_map: Path | None = None
    label_modes: tuple[str, ...] = ()


def read_annotation_json(path: Path, required: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Read a COCO-style annotation file (iNat18 and COCO use one) and check its lists before anyone indexes them.

    Args:
        path: the JSON file.
        required: top-level key -> the fields every record of that list must have.

    Raises:
        DatasetError: missing file, invalid JSON, not an object, a missing list, or a record lacking a field.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: expected a JSON object with {'/'.join(required)}")
    for key, fields in required.items():
        if not isinstance(doc.get(key), list):
            raise DatasetError(f"{path}: missing key {key!r} (a list)")
        for i, record in enumerate(doc[key]):
            missing = [f for f in fields if f not in record]
            if missing:
                raise DatasetError(f"{path}: {key}[{i}] lacks {missing}")
    return doc
