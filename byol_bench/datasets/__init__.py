"""Dataset loaders, one module per on-disk format; the same code reads the real datasets and the tiny ones.

Modules: ``images`` (the one image-decoding helper), ``imagenet`` (folder and list forms), ``inat18``,
``places205``, ``voc`` (devkit layout shared by) ``voc_cls`` / ``voc_det`` / ``voc_seg``, ``coco``,
``cityscapes``. The expected layout of each dataset under ``--data-root`` is in ``docs/DATASETS.md``.

Every loader fails loudly on bad data with a :class:`DatasetError` whose message names the file and the problem.
The few documented skips (e.g. VOC images with no objects when training a detector) are counted on the dataset
object and logged; none of them can change a label.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """Bad or missing dataset files; the message names the file and the problem."""


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
