"""Procedurally generated mini-datasets, written in the real on-disk formats (the embedded default data).

``make_tiny_data(out, seed)`` writes every family under ``out`` in the ``--data-root`` layout of
docs/DATASETS.md, so the loaders in ``byol_bench.datasets`` read them exactly as they read the real datasets.
Output is a pure function of the seed (byte-identical files), needs no network, and takes well under a minute
on 2 CPU cores. ``ensure_tiny_data`` regenerates only when the folder is missing or was made differently.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from byol_bench.tinydata.cityscapes import make_cityscapes
from byol_bench.tinydata.coco import make_coco
from byol_bench.tinydata.imagenet import make_imagenet
from byol_bench.tinydata.inat18 import make_inat18
from byol_bench.tinydata.places205 import make_places205
from byol_bench.tinydata.voc import make_voc2007, make_voc2012

# Bump when the generated content changes, so ensure_tiny_data() rebuilds stale folders.
GENERATOR_VERSION = 1
MARKER = "TINY_DATA.json"

# name -> (generator, the folders under the data root that it owns), slowest first (it is also the order in
# which make_tiny_data hands them to worker processes).
FAMILIES: dict[str, tuple[Callable[[Path, int], dict[str, int]], tuple[str, ...]]] = {
    "voc2007": (make_voc2007, ("VOCdevkit/VOC2007",)),
    "imagenet": (make_imagenet, ("imagenet",)),
    "voc2012": (make_voc2012, ("VOCdevkit/VOC2012",)),
    "inat18": (make_inat18, ("inat18",)),
    "places205": (make_places205, ("places205",)),
    "coco": (make_coco, ("coco",)),
    "cityscapes": (make_cityscapes, ("cityscapes",)),
}


def _select(only: list[str] | None) -> list[str]:
    names = list(FAMILIES) if only is None else list(only)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown tiny dataset(s) {unknown}; valid names: {', '.join(FAMILIES)}")
    return names


def make_tiny_data(out: str | Path, seed: int = 0, only: list[str] | None = None,
                   workers: int = 2) -> dict[str, dict[str, int]]:
    """Generates the tiny datasets under ``out`` and writes the ``TINY_DATA.json`` marker.

    Args:
        out: data root to write (created if missing). Folders of the selected families are replaced.
        seed: the only source of randomness; the same seed gives byte-identical files.
        only: family names (keys of :data:`FAMILIES`); None = all.
        workers: processes generating families in parallel (output does not depend on it); 1 = in-process.

    Returns:
        Image counts per family and split.

    Raises:
        ValueError: an unknown family name, or ``out`` is a non-empty folder that was not made by this
            generator (so a real data root is never overwritten).
    """
    out = Path(out)
    names = _select(only)
    marker = out / MARKER
    if out.is_dir() and any(out.iterdir()) and not marker.is_file():
        raise ValueError(f"{out}: refusing to write tiny data into a non-empty folder without {MARKER}; "
                         "choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads(marker.read_text()) if marker.is_file() else {}
    counts = {}
    if previous.get("seed") == seed and previous.get("version") == GENERATOR_VERSION:
        counts = {name: c for name, c in previous.get("counts", {}).items() if name in FAMILIES}
    else:
        # Another seed or generator version: every family left from it is stale, not just the selected ones.
        for _, folders in FAMILIES.values():
            for folder in folders:
                shutil.rmtree(out / folder, ignore_errors=True)
    for name in names:
        counts.pop(name, None)
        for folder in FAMILIES[name][1]:
            shutil.rmtree(out / folder, ignore_errors=True)
    # Written before and after generating, so an interrupted run never leaves a marker claiming lost folders.
    _write_marker(marker, seed, counts)
    ordered = [name for name in FAMILIES if name in names]
    if workers <= 1 or len(ordered) == 1:
        counts.update({name: FAMILIES[name][0](out, seed) for name in ordered})
    else:
        # "spawn": the caller may hold torch threads, which do not survive fork() safely.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {name: pool.submit(FAMILIES[name][0], out, seed) for name in ordered}
            counts.update({name: future.result() for name, future in futures.items()})
    _write_marker(marker, seed, counts)
    return counts


def _write_marker(marker: Path, seed: int, counts: dict[str, dict[str, int]]) -> None:
    marker.write_text(json.dumps({"version": GENERATOR_VERSION, "seed": seed,
                                  "counts": dict(sorted(counts.items()))}, indent=1) + "\n")


def ensure_tiny_data(out: str | Path, seed: int = 0, only: list[str] | None = None) -> Path:
    """Returns ``out`` after making sure it holds the selected families for ``seed`` (generating if needed)."""
    out = Path(out)
    names = _select(only)
    marker = out / MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("seed") == seed and info.get("version") == GENERATOR_VERSION and \
                all(n in info.get("counts", {}) for n in names):
            return out
    make_tiny_data(out, seed, names)
    return out
