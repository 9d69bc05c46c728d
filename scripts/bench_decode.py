"""Measure JPEG decoding speed for the loaders' decode paths and print a table.

    python scripts/bench_decode.py                       # synthetic 500x375 (ImageNet-like) and 1024x768 JPEGs
    python scripts/bench_decode.py --images data/imagenet/val --limit 200

Rows: PIL full decode, PIL with ``draft()`` (libjpeg DCT-domain downscaling to a short side >= --min-size),
and ``torchvision.io.decode_image`` (uint8 tensor), each alone and followed by the resize a transform would do
(short side -> --resize). Single-threaded (torch.set_num_threads(1)), as in one DataLoader worker.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from byol_bench.cli import main_guard
from byol_bench.datasets.images import image_size, load_image
from byol_bench.seeding import rng_for
from byol_bench.tinydata.draw import make_styles, object_image, save_jpeg


def synthesize(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """Writes ``count`` procedurally drawn JPEGs of exactly width x height (the tiny-data drawing code)."""
    styles = make_styles(10)
    paths = []
    for i in range(count):
        # Drawn small (fast) and upscaled: decode cost depends on the pixel count and content, not on detail.
        small = object_image(styles[i % 10], rng_for(0, "bench", i), (96, 96))
        path = folder / f"{i:04d}.jpg"
        save_jpeg(path, np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)))
        paths.append(path)
    return paths


def _resize_pil(image: Image.Image, short: int) -> Image.Image:
    w, h = image.size
    scale = short / min(w, h)
    return image.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)


def _resize_tensor(image: Any, short: int) -> Any:
    from torchvision.transforms.v2 import functional as F

    return F.resize(image, [short], antialias=True)


def time_method(paths: list[Path], fn: Callable[[Path], Any], repeats: int) -> tuple[float, tuple[int, int]]:
    """Median over ``repeats`` passes of the mean ms per image; also the output size of the first image."""
    per_pass = []
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            fn(path)
        per_pass.append((time.perf_counter() - start) * 1000 / len(paths))
    return statistics.median(per_pass), image_size(fn(paths[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="folder searched recursively for .jpg/.JPEG files")
    parser.add_argument("--limit", type=int, default=64, help="number of images to time")
    parser.add_argument("--synthetic-size", nargs="+", default=["500x375", "1024x768"],
                        help="WxH of synthetic images, one table each (without --images)")
    parser.add_argument("--min-size", type=int, default=256, help="draft decoding keeps the short side >= this")
    parser.add_argument("--resize", type=int, default=256, help="short side after the resize step")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    m, r = args.min_size, args.resize
    methods: dict[str, Callable[[Path], Any]] = {
        "PIL full decode": lambda p: load_image(p, "pil"),
        f"PIL draft (min {m})": lambda p: load_image(p, "pil", min_size=m),
        "torchvision decode_image": lambda p: load_image(p, "tensor"),
        f"PIL full + resize {r}": lambda p: _resize_pil(load_image(p, "pil"), r),
        f"PIL draft + resize {r}": lambda p: _resize_pil(load_image(p, "pil", min_size=m), r),
        f"torchvision + resize {r}": lambda p: _resize_tensor(load_image(p, "tensor"), r),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.images is not None:
            paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[: args.limit]
            if not paths:
                raise ValueError(f"{args.images}: no .jpg/.JPEG files found")
            sets = {f"{len(paths)} JPEGs from {args.images}": paths}
        else:
            sets = {}
            for size in args.synthetic_size:
                width, height = (int(v) for v in size.lower().split("x"))
                folder = Path(tmp) / size
                sets[f"{args.limit} synthetic {width}x{height} JPEGs (quality 90)"] = \
                    synthesize(folder, args.limit, width, height)
        for source, paths in sets.items():
            print(f"\n# {source}; 1 thread; median of {args.repeats} passes")
            print(f"| {'method':28s} | {'ms/image':>8s} | {'images/s':>8s} | {'output WxH':>10s} |")
            print(f"|{'-' * 30}|{'-' * 10}|{'-' * 10}|{'-' * 12}|")
            for name, fn in methods.items():
                ms, (w, h) = time_method(paths, fn, args.repeats)
                print(f"| {name:28s} | {ms:8.2f} | {1000 / ms:8.0f} | {f'{w}x{h}':>10s} |")

if __name__ == "__main__":
    main_guard(main)
