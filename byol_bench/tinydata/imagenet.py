"""Tiny ImageNet-format set: ``imagenet/{train,val}/<wnid>/*.JPEG`` plus ``imagenet/meta/{train,val}.txt``.

The ``real`` profile has all 1000 classes at ILSVRC2012's usual photo sizes, with 2 train and 1 val image per
class: the fewest for which the full presets' class-balanced 1 % and 10 % subsets (1 image per class each) and a
val pass over every class exist. Its images have no pixel noise: for 3000 photo-sized images the noise draw would
add half to the generation time and nearly triple the files' size (64 instead of 24 KB per image). They are drawn
at half their size and resized up (bilinear): what a rehearsal reads of them is their size (decoding, resizing,
memory), not their detail, and drawing 3000 photo-sized images at full size took 13 ms each, half of the real-size
data's generation time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from byol_bench.datasets.imagenet import write_image_list
from byol_bench.seeding import rng_for
from byol_bench.tinydata.draw import ImageSizes, Sizes, Style, make_styles, object_image, save_jpeg

# The first ten ImageNet-1k wnids, so paths look like the real ones; the content is procedural.
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475",
         "n01496331", "n01498041", "n01514668", "n01514859", "n01518878")
TRAIN_PER_CLASS = 110
VAL_PER_CLASS = 25
SIZE_RANGE = (64, 96)
REAL_CLASSES = 1000


@dataclass(frozen=True)
class Profile:
    """What one size profile writes: the class folders, images per class and split, image sizes and pixel noise."""

    wnids: tuple[str, ...]
    train_per_class: int
    val_per_class: int
    sizes: ImageSizes
    noise: float
    draw_scale: int = 1  # drawn at 1 / draw_scale of the size, then resized up to it


def real_wnids() -> tuple[str, ...]:
    """1000 wnid-like names: the ten real ones, then made-up ``n0…`` names that sort after them, so the sorted
    folders give the ten real wnids their real labels 0-9."""
    return WNIDS + tuple(f"n{2_000_000 + 13_000 * i:08d}" for i in range(REAL_CLASSES - len(WNIDS)))


PROFILES: dict[str, Profile] = {
    "tiny": Profile(WNIDS, TRAIN_PER_CLASS, VAL_PER_CLASS, ImageSizes(SIZE_RANGE, SIZE_RANGE), 0.03),
    # As most ILSVRC2012 photos: 500 px on the long side, the short side 333-500, a quarter of them portrait.
    "real": Profile(real_wnids(), 2, 1, ImageSizes((500, 500), (333, 500), portrait=0.25), 0.0, draw_scale=2),
}


def make_imagenet(out: Path, seed: int, sizes: Sizes, split: str) -> dict[str, int]:
    """Writes ``split`` ("train" or "val") of the ImageNet of profile ``sizes`` under ``out/imagenet``; returns
    its image count. The splits are independent, so they can be generated in parallel."""
    root = out / "imagenet"
    profile = PROFILES[sizes]
    wnids = profile.wnids
    styles = make_styles(len(wnids))
    distractors = tuple(styles)
    per_class = profile.train_per_class if split == "train" else profile.val_per_class
    # Val files are numbered across classes in a shuffled order, as ILSVRC2012_val_* files are.
    val_numbers = rng_for(seed, "imagenet", "val-order").permutation(len(wnids) * profile.val_per_class) + 1
    samples = []
    for label, wnid in enumerate(wnids):
        for i in range(per_class):
            rng = rng_for(seed, "imagenet", split, label, i)
            if split == "train":
                name = f"{wnid}_{i + 1}.JPEG"
            else:
                name = f"ILSVRC2012_val_{val_numbers[label * per_class + i]:08d}.JPEG"
            image = _image(styles[label], rng, profile, distractors)
            save_jpeg(root / split / wnid / name, image)
            samples.append((f"{wnid}/{name}", label))
    write_image_list(root / "meta" / f"{split}.txt", samples)
    return {split: len(samples)}


def _image(style: Style, rng: np.random.Generator, profile: Profile, distractors: tuple[Style, ...]) -> np.ndarray:
    """One image of ``style`` at a size of ``profile``, drawn at ``1 / profile.draw_scale`` of it and resized up."""
    if profile.draw_scale == 1:
        return object_image(style, rng, profile.sizes, distractors, profile.noise)
    w, h = profile.sizes.draw(rng)
    small = (w // profile.draw_scale, h // profile.draw_scale)
    image = object_image(style, rng, ImageSizes((small[0],) * 2, (small[1],) * 2), distractors, profile.noise)
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
