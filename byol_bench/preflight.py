"""Preflight data check: every file of every split a run reads, checked before its first training step.

Why: the loaders find a corrupt image or a label map of the wrong size when they read it. For a validation image that
is when evaluation starts, hours into a full-scale run, and the hours are lost. :func:`check` reads the header of
every file the run will read instead, in seconds to minutes, and stops the run at the first problem with the one-line
:class:`~byol_bench.datasets.DatasetError` the loaders raise (the CLIs print it and exit 2), naming the file and the
fix. It checks, per item (:class:`~byol_bench.datasets.FileCheck`, from the dataset's ``preflight_item(index)``):

* the image exists and its header is readable: PIL's ``Image.open`` parses the header (format, size, mode) without
  decoding pixels, and fails on a file that is not an image (garbage, an HTML error page, an empty file);
* the image's ``(width, height)`` is what its annotation says (VOC XML ``<size>``, COCO JSON);
* the label map (VOC Aug / Cityscapes PNG) exists, is readable, has a mode the loader accepts and the image's size.

What it does not check: pixels. A JPEG cut off in mid-scan has an intact header and passes here; the loader's full
decode (``images.load_image``) still fails on it, naming the file, when the item is read. Label values need the
pixels too. What the loaders check when they are built (lists and JSON parse, annotation ids name known images and
categories, VOC XML objects name known classes, listed files exist for VOC and COCO) has been checked by the time a
runner holds the dataset objects, and is not repeated; the annotations the loaders parsed are reused, never re-read.

Each process of a multi-process job checks every world_size-th item of each split (no collective): a bad file fails
the process that checks it, and the launcher stops the others. Header reads run one after the other: on this project's
2-core machine a pool of 4 threads was no faster with the files in the page cache or on disk
(``scripts/bench_preflight.py`` measures both).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch.utils.data import ConcatDataset, Dataset, Subset

from byol_bench import dist
from byol_bench.datasets import DatasetError, FileCheck


def check(splits: Mapping[str, Dataset], enabled: bool, label: str) -> dict[str, Any]:
    """Checks every file of every split (module docstring), or says that it was skipped.

    Args:
        splits: split name -> the dataset the run reads, as the runner built it: a loader from
            ``byol_bench.datasets``, or a ``Subset`` / ``ConcatDataset`` of loaders (a rehearsal's cut, VOC07+12);
            only the items the run reads are checked.
        enabled: the config's ``preflight`` field; False skips the check (and says so).
        label: the run's name in the printed line (the protocol).

    Returns:
        ``files`` (images and label maps of all splits, all processes together), ``splits`` (their names),
        ``seconds`` (this process's wall time) and ``skipped``: for the record's details.

    Raises:
        DatasetError: the first bad file found, naming it and the fix.
    """
    if not enabled:
        _say(f"{label}: preflight skipped (preflight=false)")
        return {"files": 0, "splits": list(splits), "seconds": 0.0, "skipped": True}
    began = time.monotonic()
    rank, world = dist.get_rank(), dist.get_world_size()
    files = 0
    for dataset in splits.values():
        for leaf, indices in _loaders(dataset, range(len(dataset))):  # type: ignore[arg-type]
            if indices:
                files += len(indices) * _files(leaf.preflight_item(indices[0]))
            for index in indices[rank::world]:
                check_item(leaf.preflight_item(index))
    seconds = time.monotonic() - began
    plural = "s" if len(splits) != 1 else ""
    shared = f" (shared by {world} processes)" if world > 1 else ""
    _say(f"{label}: preflight checked {files} files of {len(splits)} split{plural} in {seconds:.1f} s{shared}")
    return {"files": files, "splits": list(splits), "seconds": round(seconds, 3), "skipped": False}


def check_item(item: FileCheck) -> None:
    """Checks one item's files (module docstring).

    Raises:
        DatasetError: a missing or unreadable file, an image whose size is not what its annotation says, a label
            map of another mode or size.
    """
    missing_fix = (f" (listed in {item.listed_in}); restore it or remove it from that list" if item.listed_in
                   else "; restore it")
    size, _ = _header(item.image, "image", missing_fix)
    if item.size is not None and size != tuple(item.size):
        raise DatasetError(f"{item.image}: image is {_wxh(size)} but {item.size_from} says {_wxh(item.size)}; "
                           f"replace the image with the original or correct {item.size_from}")
    if item.label_map is None:
        return
    label_size, mode = _header(item.label_map, "label map", f" (the label map of {item.image}); restore it")
    if item.label_modes and mode not in item.label_modes:
        modes = " or ".join(item.label_modes)
        raise DatasetError(f"{item.label_map}: label map has mode {mode}, the loader reads {modes} (a colour rendering "
                           "is not a label map); convert it as docs/DATASETS.md says")
    if label_size != size:
        raise DatasetError(f"{item.label_map}: label map is {_wxh(label_size)} but {item.image} is {_wxh(size)}; "
                           "the label map belongs to another image or was resized: restore the original")


def _header(path: Path, what: str, missing_fix: str) -> tuple[tuple[int, int], str]:
    """``(size, mode)`` from the file's header; PIL's ``Image.open`` reads no pixels until ``load()``."""
    try:
        with Image.open(path) as img:
            return img.size, img.mode
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} not found{missing_fix}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # PIL's own message for an unknown format repeats the path; say what it means instead.
        reason = "no image format recognised" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise DatasetError(f"{path}: {what} is corrupt or not an image ({reason}); replace it with the original file "
                           "(download or extract it again)") from exc


def _loaders(dataset: Dataset, indices: Sequence[int]) -> Iterator[tuple[Any, Sequence[int]]]:
    """The loaders under ``dataset`` and the indices of theirs that ``indices`` of ``dataset`` read, in order."""
    if isinstance(dataset, Subset):
        yield from _loaders(dataset.dataset, [dataset.indices[i] for i in indices])
    elif isinstance(dataset, ConcatDataset):
        starts = [0, *dataset.cumulative_sizes]
        for part, start, end in zip(dataset.datasets, starts[:-1], starts[1:], strict=True):
            yield from _loaders(part, [i - start for i in indices if start <= i < end])
    elif hasattr(dataset, "preflight_item"):
        yield dataset, indices
    else:
        raise TypeError(f"{type(dataset).__name__} has no preflight_item(): pass the loader's dataset "
                        "(byol_bench.datasets), or a Subset / ConcatDataset of loaders, to preflight.check")


def _files(item: FileCheck) -> int:
    """The files one item reads: its image, and its label map if it has one (the same for every item of a loader)."""
    return 1 + (item.label_map is not None)


def _wxh(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"


def _say(line: str) -> None:
    """Prints on rank 0 only: the other processes checked their share of the same splits."""
    if dist.is_main():
        print(line, flush=True)
