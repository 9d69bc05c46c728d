"""Tiny ImageNet-format set: ``imagenet/{train,val}/<wnid>/*.JPEG`` plus ``imagenet/meta/{train,val}.txt``."""

from __future__ import annotations

from pathlib import Path

from byol_bench.datasets.imagenet import write_image_list
from byol_bench.seeding import rng_for
from byol_bench.tinydata.draw import make_styles, object_image, save_jpeg

# The first ten ImageNet-1k wnids, so paths look like the real ones; the content is procedural.
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475",
         "n01496331", "n01498041", "n01514668", "n01514859", "n01518878")
TRAIN_PER_CLASS = 110
VAL_PER_CLASS = 25
SIZE_RANGE = (64, 96)


def make_imagenet(out: Path, seed: int) -> dict[str, int]:
    """Writes the tiny ImageNet under ``out/imagenet``; returns image counts per split."""
    root = out / "imagenet"
    styles = make_styles(len(WNIDS))
    counts = {}
    # Val files are numbered across classes in a shuffled order, as ILSVRC2012_val_* files are.
    val_numbers = rng_for(seed, "imagenet", "val-order").permutation(len(WNIDS) * VAL_PER_CLASS) + 1
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        samples = []
        for label, wnid in enumerate(WNIDS):
            for i in range(per_class):
                rng = rng_for(seed, "imagenet", split, label, i)
                if split == "train":
                    name = f"{wnid}_{i + 1}.JPEG"
                else:
                    name = f"ILSVRC2012_val_{val_numbers[label * per_class + i]:08d}.JPEG"
                save_jpeg(root / split / wnid / name, object_image(styles[label], rng, SIZE_RANGE, tuple(styles)))
                samples.append((f"{wnid}/{name}", label))
        write_image_list(root / "meta" / f"{split}.txt", samples)
        counts[split] = len(samples)
    return counts
