"""Tiny iNaturalist 2018 set: ``inat18/{train,val}2018.json`` (COCO-like) and ``inat18/train_val2018/...``.

Fine-grained on purpose: the species of one supercategory share a shape and differ in colour and texture.
Training classes are long-tailed (about 80 down to 32 images), as in iNat; val has the same count per class.

The ``real`` profile lists all 8142 categories (ids 0..8141, as the real files) but draws images for 32 of them
only (2 train + 1 val each), at iNat 2018's size (longest side 800 px). 64 train images are what a rehearsal of the
8xb32 linear presets trains on (two steps of one process's 32 images).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from byol_bench.seeding import rng_for
from byol_bench.tinydata.draw import TEXTURES, ImageSizes, Sizes, Style, object_image, save_jpeg, spread, write_text

SUPERCATEGORIES = {"Plantae": "burst", "Aves": "crescent", "Insecta": "hexagon", "Fungi": "semicircle"}


@dataclass(frozen=True)
class Profile:
    """What one size profile writes.

    Attributes:
        species: categories per supercategory (in :data:`SUPERCATEGORIES` order).
        with_images: how many categories get images (spread over the ids); the rest are only listed.
        train_max, train_decay: category ``c`` has ``round(train_max * train_decay ** c)`` train images.
        val_per_class: val images per category with images.
        sizes: image sizes.
    """

    species: tuple[int, ...]
    with_images: int
    train_max: int
    train_decay: float
    val_per_class: int
    sizes: ImageSizes


PROFILES: dict[str, Profile] = {
    "tiny": Profile((3, 3, 3, 3), 12, 80, 0.92, 12, ImageSizes((64, 96), (64, 96))),
    # 8142 categories as iNat 2018 (not its split over supercategories). Its images were resized to 800 px on the
    # long side; the short side 533-800, 30 % portrait.
    "real": Profile((2036, 2036, 2035, 2035), 32, 2, 1.0, 1, ImageSizes((800, 800), (533, 800), portrait=0.3)),
}


def categories(profile: Profile) -> list[dict]:
    """The category records (ids 0..K-1, as in iNat 2018)."""
    cats = []
    for s, (supercategory, n) in enumerate(zip(SUPERCATEGORIES, profile.species, strict=True)):
        for j in range(n):
            cats.append({"id": len(cats), "name": f"{supercategory.lower()}_species_{j}",
                         "supercategory": supercategory, "kingdom": "Animalia" if s in (1, 2) else supercategory})
    return cats


def styles(profile: Profile) -> list[Style]:
    """One style per category: the supercategory's shape; hue and texture per species."""
    out = []
    for s, (shape, n) in enumerate(zip(SUPERCATEGORIES.values(), profile.species, strict=True)):
        for j in range(n):
            hue = (0.13 * s + 0.3 * j) % 1.0
            out.append(Style(shape, TEXTURES[(2 * j + s) % len(TEXTURES)], hue, (hue + 0.5) % 1.0, 3.0 + j % 3))
    return out


def make_inat18(out: str | Path, seed: int, sizes: Sizes) -> dict[str, int]:
    """Writes the iNat18 of profile ``sizes`` under ``out/inat18``; returns image counts per split."""
    root = Path(out) / "inat18"
    profile = PROFILES[sizes]
    cats = categories(profile)
    class_styles = styles(profile)
    imaged = [cats[i] for i in spread(len(cats), profile.with_images)]
    counts = {}
    image_id = 0
    for split in ("train", "val"):
        images, annotations = [], []
        for cat in imaged:
            n = (profile.val_per_class if split == "val"
                 else round(profile.train_max * profile.train_decay ** cat["id"]))
            for i in range(n):
                rng = rng_for(seed, "inat18", split, cat["id"], i)
                rgb = object_image(class_styles[cat["id"]], rng, profile.sizes)
                digest = hashlib.sha1(f"{seed}/{split}/{cat['id']}/{i}".encode()).hexdigest()[:32]
                file_name = f"train_val2018/{cat['supercategory']}/{cat['id']}/{digest}.jpg"
                save_jpeg(root / file_name, rgb)
                image_id += 1
                images.append({"id": image_id, "file_name": file_name, "width": rgb.shape[1],
                               "height": rgb.shape[0], "license": 1})
                annotations.append({"id": image_id, "image_id": image_id, "category_id": cat["id"]})
        doc = {"info": {"description": "byol-bench tiny iNaturalist 2018", "year": 2018},
               "licenses": [{"id": 1, "name": "procedurally generated"}],
               "images": images, "annotations": annotations, "categories": cats}
        write_text(root / f"{split}2018.json", json.dumps(doc))
        counts[split] = len(images)
    return counts
