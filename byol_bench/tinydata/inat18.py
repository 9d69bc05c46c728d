"""Tiny iNaturalist 2018 set: ``inat18/{train,val}2018.json`` (COCO-like) and ``inat18/train_val2018/...``.

Fine-grained on purpose: the species of one supercategory share a shape and differ in colour and texture.
Training classes are long-tailed (about 80 down to 32 images), as in iNat; val has the same count per class.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from byol_bench.seeding import rng_for
from byol_bench.tinydata.draw import TEXTURES, Style, object_image, save_jpeg, write_text

SUPERCATEGORIES = {"Plantae": "burst", "Aves": "crescent", "Insecta": "hexagon", "Fungi": "semicircle"}
SPECIES_PER_SUPERCATEGORY = 3
TRAIN_MAX_PER_CLASS = 80
TRAIN_DECAY = 0.92
VAL_PER_CLASS = 12
SIZE_RANGE = (64, 96)


def categories() -> list[dict]:
    """The category records (ids 0..K-1, as in iNat 2018)."""
    cats = []
    for s, (supercategory, _) in enumerate(SUPERCATEGORIES.items()):
        for j in range(SPECIES_PER_SUPERCATEGORY):
            cats.append({"id": len(cats), "name": f"{supercategory.lower()}_species_{j}",
                         "supercategory": supercategory, "kingdom": "Animalia" if s in (1, 2) else supercategory})
    return cats


def styles() -> list[Style]:
    """One style per category: the supercategory's shape; hue and texture per species."""
    out = []
    for s, shape in enumerate(SUPERCATEGORIES.values()):
        for j in range(SPECIES_PER_SUPERCATEGORY):
            hue = (0.13 * s + 0.3 * j) % 1.0
            out.append(Style(shape, TEXTURES[(2 * j + s) % len(TEXTURES)], hue, (hue + 0.5) % 1.0, 3.0 + j))
    return out


def make_inat18(out: str | Path, seed: int) -> dict[str, int]:
    """Writes the tiny iNat18 under ``out/inat18``; returns image counts per split."""
    root = Path(out) / "inat18"
    cats = categories()
    class_styles = styles()
    counts = {}
    image_id = 0
    for split in ("train", "val"):
        images, annotations = [], []
        for cat in cats:
            n = VAL_PER_CLASS if split == "val" else round(TRAIN_MAX_PER_CLASS * TRAIN_DECAY ** cat["id"])
            for i in range(n):
                rng = rng_for(seed, "inat18", split, cat["id"], i)
                rgb = object_image(class_styles[cat["id"]], rng, SIZE_RANGE)
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
