"""Tiny COCO 2017 detection/instance-segmentation set: ``coco/annotations/instances_{train,val}2017.json``,
``coco/train2017/*.jpg``, ``coco/val2017/*.jpg``.

Eight real COCO categories with their real (non-contiguous) ids. Objects are polygons; their ``segmentation``
rasterises with pycocotools to exactly the painted pixels, and ``bbox``/``area`` are that mask's extent and
pixel count. Some images hold a crowd: a cluster of small same-class objects annotated once, ``iscrowd=1``,
as an uncompressed RLE (as in the real files).

The ``real`` profile lists all 80 COCO categories (real ids 1..90 with the real gaps, real names) and draws
16 train + 8 val images at COCO's size (640 px on the long side).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from byol_bench.seeding import rng_for
from byol_bench.tinydata.draw import (
    ImageSizes,
    Placement,
    Sizes,
    Style,
    background,
    dilate,
    make_shape,
    make_styles,
    paint_shape,
    place_apart,
    save_jpeg,
    to_uint8,
    write_text,
)

# The 80 COCO 2017 categories: (id, name, supercategory).
COCO_CATEGORIES = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"), (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
    (9, "boat", "vehicle"), (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"),
    (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"), (41, "skateboard", "sports"), (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"), (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"), (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"),
    (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"),
    (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"), (62, "chair", "furniture"),
    (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
    (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"), (86, "vase", "indoor"),
    (87, "scissors", "indoor"), (88, "teddy bear", "indoor"), (89, "hair drier", "indoor"),
    (90, "toothbrush", "indoor"),
)
TINY_CATEGORY_IDS = (1, 3, 16, 18, 44, 62, 72, 85)
CROWD_PROBABILITY = 0.2


@dataclass(frozen=True)
class Profile:
    """What one size profile writes: categories ``(id, name, supercategory)``, images per split and image sizes."""

    categories: tuple[tuple[int, str, str], ...]
    images: tuple[tuple[str, int], ...]
    sizes: ImageSizes


PROFILES: dict[str, Profile] = {
    "tiny": Profile(tuple(c for c in COCO_CATEGORIES if c[0] in TINY_CATEGORY_IDS), (("train", 120), ("val", 50)),
                    ImageSizes((128, 176), (96, 144))),
    # As COCO's photos: 640 px on the long side, the short side 427-640, 30 % of them portrait.
    "real": Profile(COCO_CATEGORIES, (("train", 16), ("val", 8)), ImageSizes((640, 640), (427, 640), portrait=0.3)),
}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a bool mask: column-major run lengths, starting with a (maybe empty) 0-run."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _crowd(canvas: np.ndarray, style: Style, occupied: np.ndarray,
           rng: np.random.Generator) -> np.ndarray | None:
    """Paints a cluster of 4-7 small instances of ``style``; returns their union mask (None if no room)."""
    h, w = canvas.shape[:2]
    found = place_apart("square", h, w, rng, (0.12, 0.2), occupied)
    if found is None:
        return None
    region, _ = found
    union = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(4, 8))):
        p = Placement(region.cx + rng.uniform(-1, 1) * region.size, region.cy + rng.uniform(-1, 1) * region.size,
                      rng.uniform(0.04, 0.07) * min(h, w), rng.uniform(-0.4, 0.4), 1.0)
        shape = make_shape(style.shape, p, h, w)
        if shape.mask.sum() >= 4 and not (shape.mask & occupied).any():
            paint_shape(canvas, shape, style, p, rng)
            union |= shape.mask
    return union if union.any() else None


def draw_image(profile: Profile, styles: list[Style], rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Draws one image of ``profile`` (one style per category); returns it and its annotations (without ids) in
    COCO form."""
    categories = profile.categories
    w, h = profile.sizes.draw(rng)
    canvas = background(h, w, rng)
    occupied = np.zeros((h, w), dtype=bool)
    anns = []
    for _ in range(int(rng.integers(1, 6))):
        k = int(rng.integers(len(categories)))
        found = place_apart(styles[k].shape, h, w, rng, (0.12, 0.3), occupied, allow_truncation=rng.random() < 0.2)
        if found is None:
            continue
        placement, shape = found
        paint_shape(canvas, shape, styles[k], placement, rng)
        occupied |= dilate(shape.mask, 1)
        rle = mask_utils.frPyObjects([shape.polygon.reshape(-1).tolist()], h, w)[0]
        anns.append({"category_id": categories[k][0], "segmentation": [shape.polygon.reshape(-1).tolist()],
                     "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
    if rng.random() < CROWD_PROBABILITY:
        k = int(rng.integers(len(categories)))
        union = _crowd(canvas, styles[k], occupied, rng)
        if union is not None:
            rle = mask_utils.encode(np.asfortranarray(union.astype(np.uint8)))
            anns.append({"category_id": categories[k][0], "segmentation": uncompressed_rle(union),
                         "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
                         "iscrowd": 1})
    return to_uint8(canvas, rng), anns


def make_coco(out: str | Path, seed: int, sizes: Sizes) -> dict[str, int]:
    """Writes the COCO of profile ``sizes`` under ``out/coco``; returns image counts per split."""
    root = Path(out) / "coco"
    profile = PROFILES[sizes]
    styles = make_styles(len(profile.categories), hue_offset=0.3)
    categories = [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup in profile.categories]
    # Real COCO image ids are sparse 6-digit numbers; draw distinct ones for both splits at once.
    all_ids = rng_for(seed, "coco", "ids").choice(np.arange(1, 600000), size=sum(n for _, n in profile.images),
                                                  replace=False)
    ann_id = 0
    counts = {}
    offset = 0
    for split, n in profile.images:
        images, annotations = [], []
        for image_id in sorted(int(i) for i in all_ids[offset:offset + n]):
            rgb, anns = draw_image(profile, styles, rng_for(seed, "coco", image_id))
            file_name = f"{image_id:012d}.jpg"
            save_jpeg(root / f"{split}2017" / file_name, rgb)
            images.append({"id": image_id, "file_name": file_name, "height": rgb.shape[0], "width": rgb.shape[1],
                           "license": 1})
            for ann in anns:
                ann_id += 1
                annotations.append({"id": ann_id, "image_id": image_id, **ann})
        offset += n
        doc = {"info": {"description": "byol-bench tiny COCO 2017", "year": 2017},
               "licenses": [{"id": 1, "name": "procedurally generated"}],
               "images": images, "annotations": annotations, "categories": categories}
        write_text(root / "annotations" / f"instances_{split}2017.json", json.dumps(doc))
        counts[split] = len(images)
    return counts
