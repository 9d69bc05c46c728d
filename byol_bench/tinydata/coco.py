"""Tiny COCO 2017 detection/instance-segmentation set: ``coco/annotations/instances_{train,val}2017.json``,
``coco/train2017/*.jpg``, ``coco/val2017/*.jpg``.

Eight real COCO categories with their real (non-contiguous) ids. Objects are polygons; their ``segmentation``
rasterises with pycocotools to exactly the painted pixels, and ``bbox``/``area`` are that mask's extent and
pixel count. Some images hold a crowd: a cluster of small same-class objects annotated once, ``iscrowd=1``,
as an uncompressed RLE (as in the real files).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from byol_bench.seeding import rng_for
from byol_bench.tinydata.draw import (
    Placement,
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

CATEGORIES = (
    (1, "person", "person"), (3, "car", "vehicle"), (16, "bird", "animal"), (18, "dog", "animal"),
    (44, "bottle", "kitchen"), (62, "chair", "furniture"), (72, "tv", "electronic"), (85, "clock", "indoor"),
)
IMAGES = {"train": 120, "val": 50}
SIZE_W = (128, 176)
SIZE_H = (96, 144)
CROWD_PROBABILITY = 0.2


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


def draw_image(styles: list[Style], rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Draws one image; returns it and its annotations (without ids) in COCO form."""
    w = int(rng.integers(SIZE_W[0], SIZE_W[1] + 1))
    h = int(rng.integers(SIZE_H[0], SIZE_H[1] + 1))
    canvas = background(h, w, rng)
    occupied = np.zeros((h, w), dtype=bool)
    anns = []
    for _ in range(int(rng.integers(1, 6))):
        k = int(rng.integers(len(CATEGORIES)))
        found = place_apart(styles[k].shape, h, w, rng, (0.12, 0.3), occupied, allow_truncation=rng.random() < 0.2)
        if found is None:
            continue
        placement, shape = found
        paint_shape(canvas, shape, styles[k], placement, rng)
        occupied |= dilate(shape.mask, 1)
        rle = mask_utils.frPyObjects([shape.polygon.reshape(-1).tolist()], h, w)[0]
        anns.append({"category_id": CATEGORIES[k][0], "segmentation": [shape.polygon.reshape(-1).tolist()],
                     "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
    if rng.random() < CROWD_PROBABILITY:
        k = int(rng.integers(len(CATEGORIES)))
        union = _crowd(canvas, styles[k], occupied, rng)
        if union is not None:
            rle = mask_utils.encode(np.asfortranarray(union.astype(np.uint8)))
            anns.append({"category_id": CATEGORIES[k][0], "segmentation": uncompressed_rle(union),
                         "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
                         "iscrowd": 1})
    return to_uint8(canvas, rng), anns


def make_coco(out: str | Path, seed: int) -> dict[str, int]:
    """Writes the tiny COCO under ``out/coco``; returns image counts per split."""
    root = Path(out) / "coco"
    styles = make_styles(len(CATEGORIES), hue_offset=0.3)
    categories = [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup in CATEGORIES]
    # Real COCO image ids are sparse 6-digit numbers; draw distinct ones for both splits at once.
    all_ids = rng_for(seed, "coco", "ids").choice(np.arange(1, 600000), size=sum(IMAGES.values()), replace=False)
    ann_id = 0
    counts = {}
    offset = 0
    for split, n in IMAGES.items():
        images, annotations = [], []
        for image_id in sorted(int(i) for i in all_ids[offset:offset + n]):
            rgb, anns = draw_image(styles, rng_for(seed, "coco", image_id))
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
