"""PASCAL VOC devkit layout shared by ``voc_cls``, ``voc_det`` and ``voc_seg``.

Layout under ``<data-root>/VOCdevkit`` (see docs/DATASETS.md)::

    VOC2007/{Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/{train,val,trainval,test}.txt,
             ImageSets/Main/<class>_<split>.txt}
    VOC2012/{... same ..., SegmentationClass/<id>.png, SegmentationClassAug/<id>.png,
             ImageSets/Segmentation/{train,val,aug}.txt}

Loaders take the year folder (``VOCdevkit/VOC2007``); :func:`year_dir` also accepts the ``VOCdevkit`` folder.
"""

from __future__ import annotations

from pathlib import Path

from byol_bench.datasets import DatasetError

# The 20 VOC classes. This is also their alphabetical order, the order B §2.1 takes from the sorted
# <class>_<split>.txt file names, and the index order (1..20) of the segmentation masks.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def year_dir(root: str | Path, year: str) -> Path:
    """Returns the ``VOC<year>`` folder given it or its ``VOCdevkit`` parent.

    Raises:
        DatasetError: neither ``root`` nor ``root/VOC<year>`` has ``ImageSets/``.
    """
    root = Path(root)
    for candidate in (root, root / f"VOC{year}"):
        if (candidate / "ImageSets").is_dir():
            return candidate
    raise DatasetError(f"{root}: not a VOC{year} devkit folder (expected {root}/ImageSets or "
                       f"{root}/VOC{year}/ImageSets, see docs/DATASETS.md)")


def read_id_list(path: Path) -> list[str]:
    """Reads an ``ImageSets`` id list (one image id per line; blank lines ignored).

    Raises:
        DatasetError: missing, empty, a line with more than one field, or a duplicated id.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: image-set list not found")
    ids: list[str] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 1:
            raise DatasetError(f"{path}:{lineno}: expected one image id per line, got {line!r}")
        ids.append(fields[0])
    if not ids:
        raise DatasetError(f"{path}: list is empty")
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: lists some image ids more than once")
    return ids
