"""ImageNet in its two standard forms: class folders, and ``path label`` list files.

Layout under ``<data-root>/imagenet`` (see docs/DATASETS.md)::

    train/<wnid>/<file>.JPEG        # one folder per class; label = index of the wnid in sorted order
    val/<wnid>/<file>.JPEG          # val sorted into class folders (the usual valprep layout)
    meta/train.txt, meta/val.txt    # optional lists "relative/path label", paths relative to train/ or val/

The list form is what the semi-supervised subsets use (``meta/train_1percent.txt`` ...) and what mmselfsup's
``ImageList`` reads: each line is split at its **last** whitespace into a path and an integer label. A flat val
folder with the Caffe ``val.txt`` (``ILSVRC2012_val_00000001.JPEG 65``) works the same way.

Labels are checked, never guessed: a label outside ``[0, num_classes)`` or a list line whose class folder
disagrees with its label is an error naming the list file and line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from byol_bench.datasets import DatasetError
from byol_bench.datasets.images import LabelledImages

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SPLITS = ("train", "val")


def find_classes(split_dir: Path) -> list[str]:
    """Returns the sorted class-folder names of ``split_dir`` (the wnids).

    Raises:
        DatasetError: the folder is missing or has no class folders.
    """
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: folder not found (expected one sub-folder per class, "
                           "see docs/DATASETS.md)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{split_dir}: has no class folders (expected <wnid>/<image> files)")
    return classes


def scan_class_folders(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """Lists ``(relative path, label)`` for every image in the class folders, sorted by path.

    Files without an image suffix (e.g. ``.DS_Store``) are skipped, counted and logged.

    Raises:
        DatasetError: a class folder has no images (its class would silently vanish from the labels).
    """
    samples: list[tuple[str, int]] = []
    skipped = 0
    for label, name in enumerate(classes):
        files = sorted(p for p in (split_dir / name).iterdir() if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped += len(files) - len(images)
        if not images:
            raise DatasetError(f"{split_dir / name}: class folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        samples.extend((f"{name}/{p.name}", label) for p in images)
    if skipped:
        log.warning("%s: skipped %d non-image files", split_dir, skipped)
    return samples


def read_image_list(list_file: Path, num_classes: int | None = None) -> list[tuple[str, int]]:
    """Reads a ``relative/path label`` list (split at the last whitespace; blank lines ignored).

    Args:
        list_file: the list.
        num_classes: when given, every label must lie in ``[0, num_classes)``.

    Raises:
        DatasetError: missing file, a malformed line, a non-integer or out-of-range label, or an empty list;
            the message gives ``file:line``.
    """
    if not list_file.is_file():
        raise DatasetError(f"{list_file}: list file not found (expected lines 'relative/path label')")
    samples: list[tuple[str, int]] = []
    for lineno, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DatasetError(f"{list_file}:{lineno}: expected 'relative/path label', got {line!r}")
        path, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise DatasetError(f"{list_file}:{lineno}: label {label_text!r} is not an integer") from None
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            raise DatasetError(f"{list_file}:{lineno}: label {label} out of range {bound}")
        samples.append((path.strip(), label))
    if not samples:
        raise DatasetError(f"{list_file}: list is empty")
    return samples


def write_image_list(list_file: Path, samples: Iterable[tuple[str, int]]) -> None:
    """Writes ``relative/path label`` lines (the format :func:`read_image_list` reads)."""
    list_file.parent.mkdir(parents=True, exist_ok=True)
    list_file.write_text("".join(f"{path} {label}\n" for path, label in samples), encoding="utf-8")


def check_list_against_folders(samples: list[tuple[str, int]], classes: list[str], list_file: Path) -> None:
    """Where a list path starts with a class folder name, requires the label to be that class's index.

    Raises:
        DatasetError: a line labels ``n01440764/x.JPEG`` with another class's index.
    """
    class_to_idx = {name: i for i, name in enumerate(classes)}
    for i, (path, label) in enumerate(samples):
        folder = path.split("/", 1)[0]
        if "/" in path and folder in class_to_idx and class_to_idx[folder] != label:
            raise DatasetError(f"{list_file}: entry {i + 1} ({path}) has label {label}, but its folder "
                               f"{folder} is class {class_to_idx[folder]} (classes are sorted folder names)")


class ImageFolderList(LabelledImages):
    """ImageNet-style classification dataset, from class folders or from a list file.

    Returns ``(image, label)``; the image is decoded by :func:`~byol_bench.datasets.images.load_image` and then
    passed through ``transform``. Classes are the sorted folder names of ``root/train`` (the wnids) whenever
    that folder exists, so folder and list forms give the same labels.

    Args:
        root: the ``imagenet`` folder (holding ``train/``, ``val/`` and optionally ``meta/``).
        split: ``"train"`` or ``"val"``; images are read from ``root/split``.
        transform: called on the decoded image.
        list_file: a ``path label`` list (absolute, or relative to ``root``, e.g. ``"meta/train.txt"``);
            paths inside it are relative to ``root/split``. ``None`` scans the class folders.
        image_format: ``"pil"`` or ``"tensor"`` (see ``load_image``).
        min_size: allow JPEG draft decoding down to this short side (PIL only).
        verify_files: check at construction that every listed file exists (one ``stat`` per image).

    Raises:
        DatasetError: missing folders or list, bad labels, missing files (at construction with
            ``verify_files``, otherwise when the image is read).
    """

    def __init__(self, root: str | Path, split: str, transform: Callable[[Any], Any] | None = None,
                 list_file: str | Path | None = None, image_format: str = "pil", min_size: int | None = None,
                 verify_files: bool = False) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        self.root = Path(root)
        self.split_dir = self.root / split
        train_dir = self.root / "train"
        if list_file is None:
            self.classes = find_classes(train_dir)
            split_classes = find_classes(self.split_dir)
            if split_classes != self.classes:
                missing = sorted(set(self.classes) - set(split_classes))[:5]
                extra = sorted(set(split_classes) - set(self.classes))[:5]
                raise DatasetError(f"{self.split_dir}: class folders differ from {train_dir} "
                                   f"(missing {missing}, extra {extra})")
            samples = scan_class_folders(self.split_dir, self.classes)
            self.list_file: Path | None = None
        else:
            self.list_file = Path(list_file) if Path(list_file).is_absolute() else self.root / list_file
            if not self.split_dir.is_dir():
                raise DatasetError(f"{self.split_dir}: image folder not found (list paths are relative to it)")
            # Without a train/ folder there are no wnids to count; then labels are only checked to be >= 0.
            self.classes = find_classes(train_dir) if train_dir.is_dir() else []
            samples = read_image_list(self.list_file, len(self.classes) or None)
            if self.classes:
                check_list_against_folders(samples, self.classes, self.list_file)
            else:
                log.warning("%s: no train/ folder, so the number of classes is taken from the list", self.root)
                self.classes = [str(i) for i in range(max(label for _, label in samples) + 1)]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        super().__init__(samples, self.split_dir, self.list_file, transform, image_format, min_size)
        if verify_files:
            self.verify_files()

    def verify_files(self) -> None:
        """Raises DatasetError listing the first missing files, if any sample's file does not exist."""
        missing = [path for path, _ in self.samples if not (self.split_dir / path).is_file()]
        if missing:
            source = self.list_file or self.split_dir
            raise DatasetError(f"{source}: {len(missing)} listed images do not exist under {self.split_dir}, "
                               f"e.g. {missing[:3]}")


# ---------------------------------------------------------------- labelled subsets (semi-supervised fine-tuning)


def read_label_map(label_map_file: Path) -> dict[str, int]:
    """wnid -> label from a ``wnid/file label`` list (mmselfsup's ``meta/train_labeled.txt``, B §4).

    The first path component of each line is the key, as ``convert_imagenet_subsets.py`` reads it.

    Raises:
        DatasetError: the file is missing or malformed, or one wnid carries two labels.
    """
    if not label_map_file.is_file():
        raise DatasetError(f"{label_map_file}: label map not found; a SimCLR subset list names files only, so its "
                           "labels come from a 'wnid/file label' list (pass label_map=PATH, e.g. "
                           "meta/train_labeled.txt or meta/train.txt)")
    labels: dict[str, int] = {}
    for path, label in read_image_list(label_map_file):
        wnid = path.split("/", 1)[0]
        if labels.setdefault(wnid, label) != label:
            raise DatasetError(f"{label_map_file}: wnid {wnid} has two labels ({labels[wnid]} and {label})")
    return labels


def is_simclr_list(list_file: Path) -> bool:
    """True for a SimCLR ``1percent.txt``-style list (one file name per line, no label); False for ``path label``.

    Raises:
        DatasetError: the file is missing or has no entries.
    """
    if not list_file.is_file():
        raise DatasetError(f"{list_file}: subset list not found (a SimCLR 1percent.txt / 10percent.txt, or "
                           "'wnid/file label' lines)")
    for line in list_file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            return len(line.split()) == 1
    raise DatasetError(f"{list_file}: subset list is empty")


def read_simclr_list(list_file: Path, label_map: dict[str, int]) -> list[tuple[str, int]]:
    """``n04235860_14959.JPEG`` lines -> ``(n04235860/n04235860_14959.JPEG, label)``: the wnid is the file name's
    part before the first ``_`` and its label comes from ``label_map`` (what ``convert_imagenet_subsets.py`` writes).

    Raises:
        DatasetError: a line that is not one ``<wnid>_<n>.<ext>`` file name, or a wnid the label map lacks
            (``file:line``).
    """
    samples = []
    for lineno, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        wnid = name.split("_", 1)[0]
        if len(name.split()) != 1 or "/" in name or "_" not in name:
            raise DatasetError(f"{list_file}:{lineno}: expected one file name such as n01440764_10026.JPEG, "
                               f"got {line!r}")
        if wnid not in label_map:
            raise DatasetError(f"{list_file}:{lineno}: wnid {wnid} is not in the label map")
        samples.append((f"{wnid}/{name}", label_map[wnid]))
    return samples


def check_subset(samples: list[tuple[str, int]], classes: list[str], train_dir: Path, list_file: Path) -> None:
    """A labelled subset must name existing files under ``train/``, each once, and cover every class.

    Raises:
        DatasetError: a file not under ``train_dir``, a duplicate entry or a class with no image; the message
            names ``list_file`` and the first offenders.
    """
    missing = [path for path, _ in samples if not (train_dir / path).is_file()]
    if missing:
        raise DatasetError(f"{list_file}: {len(missing)} entries are not files under {train_dir}, e.g. {missing[:3]}")
    seen: set[str] = set()
    duplicates = [path for path, _ in samples if path in seen or seen.add(path)]
    if duplicates:
        raise DatasetError(f"{list_file}: {len(duplicates)} duplicate entries, e.g. {duplicates[:3]}")
    empty = sorted(set(range(len(classes))) - {label for _, label in samples})
    if empty:
        raise DatasetError(f"{list_file}: {len(empty)} classes have no image in the subset, e.g. "
                           f"{[classes[i] for i in empty[:3]]}")


def balanced_subset(samples: list[tuple[str, int]], num_classes: int, fraction: float, rng: np.random.Generator,
                    source: Path) -> list[tuple[str, int]]:
    """A class-balanced subset: ``k = max(1, round(fraction * len(samples) / num_classes))`` images drawn without
    replacement from every class (12-13 per class at 1 % of ImageNet-1k, as the SimCLR lists hold), sorted by path.

    Raises:
        DatasetError: a class of ``source`` (the full train list or folder) has fewer than ``k`` images.
    """
    k = max(1, round(fraction * len(samples) / num_classes))
    by_class: list[list[tuple[str, int]]] = [[] for _ in range(num_classes)]
    for sample in sorted(samples):
        by_class[sample[1]].append(sample)
    short = [label for label, members in enumerate(by_class) if len(members) < k]
    if short:
        raise DatasetError(f"{source}: class {short[0]} has {len(by_class[short[0]])} training images, fewer than "
                           f"the {k} per class a {fraction:.0%} balanced subset needs")
    chosen = [members[i] for members in by_class for i in sorted(rng.choice(len(members), k, replace=False))]
    return sorted(chosen)
