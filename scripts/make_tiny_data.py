"""Generate the embedded tiny datasets (real on-disk formats) under a data root.

    python scripts/make_tiny_data.py --out data            # all families, seed 0
    python scripts/make_tiny_data.py --out data --only imagenet voc2007 --seed 1
    python scripts/make_tiny_data.py --out data/real-size --real-size   # real classes and image sizes

Deterministic (same seed -> byte-identical files), offline, well under a minute on 2 cores. The layout is the
``--data-root`` layout of docs/DATASETS.md, read by the same loaders as the real datasets. --real-size writes the
real datasets' class lists and image sizes with a handful of images, so the full presets (tiny=false) run on it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from byol_bench.cli import main_guard
from byol_bench.tinydata import FAMILIES, make_tiny_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="data root to write; must be new, empty, or made by this script before")
    parser.add_argument("--seed", type=int, default=0, help="the same seed always gives the same bytes")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes (output does not depend on it)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(FAMILIES),
                        help=f"generate only these families ({', '.join(FAMILIES)})")
    parser.add_argument("--real-size", action="store_true",
                        help="the real-size profile: real class lists and image sizes, a few images (full presets)")
    args = parser.parse_args()
    sizes = "real" if args.real_size else "tiny"
    start = time.perf_counter()
    counts = make_tiny_data(args.out, args.seed, args.only, args.workers, sizes=sizes)
    for name, splits in counts.items():
        print(f"{name:11s} " + "  ".join(f"{split}={n}" for split, n in splits.items()))
    print(f"wrote {args.out} ({sizes} sizes, seed {args.seed}) in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main_guard(main)
