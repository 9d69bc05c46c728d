"""Measure the preflight data check (``byol_bench.preflight``) per file, and what it costs on the real val splits.

    python scripts/bench_preflight.py                    # tiny data generated in a temp folder (~10 s)
    python scripts/bench_preflight.py --data data --count 200 --threads 4

Two measurements, each the median of ``--repeats`` passes:

1. ``preflight.check`` as the runners call it, on every split of every tiny dataset (``--data``, the embedded tiny
   data; generated into a temp folder when not given): ms per file, image headers and label maps together;
2. ``preflight.check_item`` on ``--count`` synthetic JPEGs of 500x375 (ImageNet val's typical size) and 640x480
   (COCO val2017's), each with the size an annotation would give: page cache warm (files just read) and cold (every
   file evicted from the page cache with ``posix_fadvise(DONTNEED)`` before the pass, so its header comes from the
   disk), in one thread and in a pool of ``--threads`` (whether a pool pays; preflight uses one thread).

It prints the CPU model and estimates, from the per-file cost at 500x375 and 640x480, for ImageNet val (50,000
images), COCO val2017 (5,000) and ImageNet train (1,281,167: what pretraining reads). The cold figures are this
machine's disk; a network filesystem's latency per file is what a cluster would add (and where a pool could pay).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from bench_decode import synthesize  # one JPEG drawing helper for the bench scripts
from torch.utils.data import ConcatDataset, Dataset

from byol_bench import preflight
from byol_bench.classification import open_split
from byol_bench.cli import main_guard
from byol_bench.datasets import FileCheck
from byol_bench.datasets.cityscapes import Cityscapes
from byol_bench.datasets.coco import COCODetection
from byol_bench.datasets.voc_cls import VOCClassification
from byol_bench.datasets.voc_det import VOCDetection
from byol_bench.datasets.voc_seg import VOCAugSegmentation
from byol_bench.runlog import cpu_model
from byol_bench.tinydata import ensure_tiny_data

# The splits whose check time is estimated: images in the real split.
REAL_SPLITS = {"ImageNet val": 50_000, "COCO val2017": 5_000, "ImageNet train": 1_281_167}
SYNTHETIC_SIZES = ((500, 375), (640, 480))


def tiny_splits(root: Path) -> dict[str, dict[str, Dataset]]:
    """Every split of every tiny dataset, as the runners open them (label -> split -> dataset)."""
    devkit = root / "VOCdevkit"
    splits: dict[str, dict[str, Dataset]] = {
        name: {split: open_split(name, root, split, tiny=True).dataset for split in ("train", "val")}
        for name in ("imagenet", "inat18", "places205")}
    splits["voc07 (svm)"] = {split: VOCClassification(devkit, split) for split in ("trainval", "test")}
    splits["voc07+12 (detection)"] = {
        "train": ConcatDataset([VOCDetection(devkit, "2007", "trainval"), VOCDetection(devkit, "2012", "trainval")]),
        "test": VOCDetection(devkit, "2007", "test", filter_empty=False)}
    splits["voc12aug (segmentation)"] = {split: VOCAugSegmentation(devkit, split) for split in ("trainaug", "val")}
    splits["cityscapes"] = {split: Cityscapes(root / "cityscapes", split) for split in ("train", "val")}
    splits["coco"] = {split: COCODetection(root / "coco", split) for split in ("train", "val")}
    return splits


def synthetic_items(folder: Path, count: int, width: int, height: int) -> list[FileCheck]:
    """``count`` drawn JPEGs of width x height (bench_decode's, the tiny-data drawing code), as checks with their
    sizes."""
    folder.mkdir(parents=True)
    return [FileCheck(path, size=(width, height), size_from=folder / "annotations.json")
            for path in synthesize(folder, count, width, height)]


def evict(paths: list[Path]) -> None:
    """Drops the files' pages from the page cache (written back first), so the next read comes from the disk."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def ms_per_file(run_pass: Callable[[], int], repeats: int, before: Callable[[], None] = lambda: None) -> float:
    """Median over ``repeats`` passes of the ms per file; ``run_pass`` returns the files it checked."""
    per_pass = []
    for _ in range(repeats):
        before()
        began = time.perf_counter()
        files = run_pass()
        per_pass.append((time.perf_counter() - began) * 1000 / files)
    return statistics.median(per_pass)


def check_pass(splits: Mapping[str, Dataset], label: str) -> int:
    """One ``preflight.check`` as a runner calls it (its printed line swallowed); returns the files checked."""
    with contextlib.redirect_stdout(io.StringIO()):
        return preflight.check(splits, True, label)["files"]


def serial_pass(items: list[FileCheck]) -> int:
    """``check_item`` on every item, one after the other (what ``preflight.check`` does)."""
    for item in items:
        preflight.check_item(item)
    return len(items)


def pooled_pass(pool: ThreadPoolExecutor, items: list[FileCheck]) -> int:
    """``check_item`` on every item in a thread pool (header reads wait on I/O, with the GIL released)."""
    list(pool.map(preflight.check_item, items))
    return len(items)


def bench_tiny(splits: Mapping[str, Mapping[str, Dataset]], repeats: int) -> None:
    """Table 1: ``preflight.check`` per tiny dataset, and all of them together."""
    print(f"\n# 1. preflight.check on the tiny data; 1 process; median of {repeats} passes (page cache warm)")
    print(f"| {'dataset':24s} | {'files':>6s} | {'ms/file':>8s} |")
    print(f"|{'-' * 26}|{'-' * 8}|{'-' * 10}|")
    total_files, total_ms = 0, 0.0
    for label, dataset_splits in splits.items():
        files = check_pass(dataset_splits, label)  # also warms the page cache
        ms = ms_per_file(partial(check_pass, dataset_splits, label), repeats)
        total_files, total_ms = total_files + files, total_ms + ms * files
        print(f"| {label:24s} | {files:6d} | {ms:8.4f} |")
    print(f"| {'all':24s} | {total_files:6d} | {total_ms / total_files:8.4f} |")


def bench_synthetic(folder: Path, count: int, threads: int, repeats: int) -> dict[tuple[int, int], float]:
    """Table 2: ``check_item`` on synthetic real-size JPEGs; returns the cold one-thread ms per file per size."""
    print(f"\n# 2. check_item on {count} synthetic JPEGs per size (quality 90); median of {repeats} passes")
    print(f"| {'size':8s} | {'page cache':10s} | {'threads':>7s} | {'ms/file':>8s} |")
    print(f"|{'-' * 10}|{'-' * 12}|{'-' * 9}|{'-' * 10}|")
    cold_ms = {}
    with ThreadPoolExecutor(threads) as pool:
        for width, height in SYNTHETIC_SIZES:
            items = synthetic_items(folder / f"{width}x{height}", count, width, height)
            passes = ((1, partial(serial_pass, items)), (threads, partial(pooled_pass, pool, items)))
            for cache, before in (("warm", lambda: None), ("cold", partial(evict, [item.image for item in items]))):
                for workers, run_pass in passes:
                    ms = ms_per_file(run_pass, repeats, before)
                    if cache == "cold" and workers == 1:
                        cold_ms[(width, height)] = ms
                    print(f"| {width}x{height:<4d} | {cache:10s} | {workers:7d} | {ms:8.4f} |")
    return cold_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="the tiny data root (default: generate it in a temp folder)")
    parser.add_argument("--count", type=int, default=200, help="synthetic JPEGs per size")
    parser.add_argument("--threads", type=int, default=4, help="workers of the thread pool compared")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or ensure_tiny_data(Path(tmp) / "tiny")
        bench_tiny(tiny_splits(root), args.repeats)
        cold_ms = bench_synthetic(Path(tmp) / "synthetic", args.count, args.threads, args.repeats)
    print("\n# estimates: images x cold one-thread ms/file (table 2), one process; a job of N processes takes 1/N")
    for name, images in REAL_SPLITS.items():
        estimates = ", ".join(f"{images * ms / 1000:.1f} s at {w}x{h}" for (w, h), ms in cold_ms.items())
        print(f"{name} ({images:,} images): {estimates}")


if __name__ == "__main__":
    main_guard(main)
