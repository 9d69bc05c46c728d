"""Procedurally generated mini-datasets, written in the real on-disk formats (the embedded default data).

``make_tiny_data(out, seed)`` writes every family under ``out`` in the ``--data-root`` layout of
docs/DATASETS.md, so the loaders in ``byol_bench.datasets`` read them exactly as they read the real datasets.
Output is a pure function of the seed and the size profile (byte-identical files), needs no network, and takes
well under a minute on 2 CPU cores. ``ensure_tiny_data`` regenerates only when the folder is missing or was made
differently.

Two size profiles (``sizes``) share the drawing code: ``"tiny"`` (10-12 classes, small images, enough of them to
learn from; the runners read it with ``tiny=true``) and ``"real"`` (the real datasets' class lists and image
sizes, a handful of images: the full presets run on it unchanged, which rehearses them on a CPU).
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from byol_bench.tinydata.cityscapes import make_cityscapes
from byol_bench.tinydata.coco import make_coco
from byol_bench.tinydata.draw import Sizes
from byol_bench.tinydata.imagenet import make_imagenet
from byol_bench.tinydata.inat18 import make_inat18
from byol_bench.tinydata.places205 import make_places205
from byol_bench.tinydata.voc import make_voc2007, make_voc2012

# Bump when the generated content changes, so ensure_tiny_data() rebuilds stale folders.
GENERATOR_VERSION = 1
MARKER = "TINY_DATA.json"
SIZES: tuple[Sizes, ...] = ("tiny", "real")

Job = Callable[[Path, int, Sizes], dict[str, int]]  # (out, seed, sizes) -> image counts per split

# name -> (its independent jobs, the folders under the data root that it owns), slowest first (it is also the
# order in which make_tiny_data hands the jobs to worker processes). ImageNet's splits are separate jobs: the
# real-size train split alone is half of that profile's work.
FAMILIES: dict[str, tuple[tuple[Job, ...], tuple[str, ...]]] = {
    "voc2007": ((make_voc2007,), ("VOCdevkit/VOC2007",)),
    "imagenet": ((partial(make_imagenet, split="train"), partial(make_imagenet, split="val")), ("imagenet",)),
    "voc2012": ((make_voc2012,), ("VOCdevkit/VOC2012",)),
    "inat18": ((make_inat18,), ("inat18",)),
    "places205": ((make_places205,), ("places205",)),
    "coco": ((make_coco,), ("coco",)),
    "cityscapes": ((make_cityscapes,), ("cityscapes",)),
}


def _select(only: list[str] | None, sizes: str) -> list[str]:
    if sizes not in SIZES:
        raise ValueError(f"unknown size profile {sizes!r}; valid: {', '.join(SIZES)}")
    names = list(FAMILIES) if only is None else list(only)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown tiny dataset(s) {unknown}; valid names: {', '.join(FAMILIES)}")
    return names


def make_tiny_data(out: str | Path, seed: int = 0, only: list[str] | None = None,
                   workers: int = 2, sizes: Sizes = "tiny") -> dict[str, dict[str, int]]:
    """Generates the tiny datasets under ``out`` and writes the ``TINY_DATA.json`` marker.

    Args:
        out: data root to write (created if missing). Folders of the selected families are replaced.
        seed: the only source of randomness; the same seed gives byte-identical files.
        only: family names (keys of :data:`FAMILIES`); None = all.
        workers: processes generating families in parallel (output does not depend on it); 1 = in-process.
        sizes: the size profile, ``"tiny"`` or ``"real"`` (see the module docstring).

    Returns:
        Image counts per family and split.

    Raises:
        ValueError: an unknown family name or profile, or ``out`` is a non-empty folder that was not made by
            this generator (so a real data root is never overwritten).
    """
    out = Path(out)
    names = _select(only, sizes)
    marker = out / MARKER
    if out.is_dir() and any(out.iterdir()) and not marker.is_file():
        raise ValueError(f"{out}: refusing to write tiny data into a non-empty folder without {MARKER}; "
                         "choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads(marker.read_text()) if marker.is_file() else {}
    counts = {}
    if _made_as(previous, seed, sizes):
        counts = {name: c for name, c in previous.get("counts", {}).items() if name in FAMILIES}
    else:
        # Another seed, profile or generator version: every family left from it is stale, not just the selected
        # ones.
        for _, folders in FAMILIES.values():
            for folder in folders:
                shutil.rmtree(out / folder, ignore_errors=True)
    for name in names:
        counts.pop(name, None)
        for folder in FAMILIES[name][1]:
            shutil.rmtree(out / folder, ignore_errors=True)
    # Written before and after generating, so an interrupted run never leaves a marker claiming lost folders.
    _write_marker(marker, seed, sizes, counts)
    jobs = [(name, job) for name in FAMILIES if name in names for job in FAMILIES[name][0]]
    if workers <= 1 or len(jobs) == 1:
        results = [(name, job(out, seed, sizes)) for name, job in jobs]
    else:
        # "spawn": the caller may hold torch threads, which do not survive fork() safely.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [(name, pool.submit(job, out, seed, sizes)) for name, job in jobs]
            results = [(name, future.result()) for name, future in futures]
    for name, split_counts in results:
        counts.setdefault(name, {}).update(split_counts)
    _write_marker(marker, seed, sizes, counts)
    return counts


def _made_as(info: dict, seed: int, sizes: str) -> bool:
    """Whether a marker's content was made with this seed, profile and generator version."""
    # Markers written before the real-size profile existed have no "sizes": they were tiny.
    return (info.get("seed") == seed and info.get("version") == GENERATOR_VERSION
            and info.get("sizes", "tiny") == sizes)


def _write_marker(marker: Path, seed: int, sizes: str, counts: dict[str, dict[str, int]]) -> None:
    marker.write_text(json.dumps({"version": GENERATOR_VERSION, "seed": seed, "sizes": sizes,
                                  "counts": dict(sorted(counts.items()))}, indent=1) + "\n")


def ensure_tiny_data(out: str | Path, seed: int = 0, only: list[str] | None = None, sizes: Sizes = "tiny") -> Path:
    """Returns ``out`` after making sure it holds the selected families for ``seed`` and profile ``sizes``
    (generating if needed)."""
    out = Path(out)
    names = _select(only, sizes)
    marker = out / MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        if _made_as(info, seed, sizes) and all(n in info.get("counts", {}) for n in names):
            return out
    make_tiny_data(out, seed, names, sizes=sizes)
    return out
