"""Tiny Cityscapes: street scenes drawn as label maps first (official label ids), then rendered to RGB.

Writes ``cityscapes/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` and
``cityscapes/gtFine/{train,val}/<city>/*_gtFine_{labelIds,labelTrainIds}.png``. The scene has sky, buildings,
road, sidewalks, vegetation, terrain, poles with signs or lights, vehicles and people, plus void labels
(ego vehicle, out of roi, static) and ignored classes (parking, caravan) so the trainId mapping is exercised.

The scene is laid out in the pixels of the tiny 256x128 image and scaled to the profile's width, so the
``real`` profile (2048x1024, Cityscapes' size) draws the same kind of street, only sharper.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from byol_bench.datasets.cityscapes import ID_TO_TRAIN_ID, LABELS
from byol_bench.seeding import rng_for
from byol_bench.tinydata.draw import Sizes, save_png, smooth_noise, to_uint8

ID = {label.name: label.id for label in LABELS}
BASE_WIDTH = 256  # the width the layout constants below are in


@dataclass(frozen=True)
class Profile:
    """What one size profile writes: ``(split, cities, images per city)`` triples and the image size."""

    splits: tuple[tuple[str, tuple[str, ...], int], ...]
    width: int
    height: int


PROFILES: dict[str, Profile] = {
    "tiny": Profile((("train", ("aachen", "bochum"), 10), ("val", ("frankfurt",), 8)), 256, 128),
    "real": Profile((("train", ("aachen", "bochum"), 2), ("val", ("frankfurt",), 2)), 2048, 1024),
}


def _box(draw: ImageDraw.ImageDraw, name: str, x0: float, y0: float, x1: float, y1: float) -> None:
    draw.rectangle([int(x0), int(y0), int(x1), int(y1)], fill=ID[name])


def draw_label_map(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Paints one street scene as official label ids, uint8 (height, width), back to front.

    Lengths are drawn in 256-px-wide units and multiplied by ``s = width / 256``; at s = 1 (the tiny profile)
    that multiplication is exact, so the tiny maps keep their bytes.
    """
    s = width / BASE_WIDTH
    img = Image.new("L", (width, height), ID["sky"])
    draw = ImageDraw.Draw(img)
    horizon = height * rng.uniform(0.38, 0.5)
    vx = width * rng.uniform(0.35, 0.65)
    x = 0.0
    while x < width:  # a skyline of buildings, sometimes a low wall
        bw = rng.uniform(20, 60) * s
        top = horizon - rng.uniform(10, 50) * s
        _box(draw, "building" if rng.random() < 0.85 else "wall", x, top, x + bw, horizon + 4 * s)
        x += bw
    for _ in range(int(rng.integers(1, 4))):
        cx, r = rng.uniform(0, width), rng.uniform(8, 20) * s
        draw.ellipse([cx - r, horizon - 1.6 * r, cx + r, horizon + 0.3 * r], fill=ID["vegetation"])
    _box(draw, "sidewalk", 0, horizon, width, height)
    for side in (0, width):
        depth = rng.uniform(10, 40) * s
        draw.polygon([(side, horizon), (side, horizon + depth), (abs(side - 30 * s), horizon)], fill=ID["terrain"])
    draw.polygon([(width * 0.08, height), (width * 0.92, height), (vx + 8 * s, horizon), (vx - 8 * s, horizon)],
                 fill=ID["road"])
    if rng.random() < 0.5:
        px = rng.uniform(0, width * 0.2)
        draw.polygon([(px, height * 0.8), (px + 30 * s, height * 0.8), (px + 20 * s, height * 0.65),
                      (px + 5 * s, height * 0.65)], fill=ID["parking"])
    if rng.random() < 0.5:
        _box(draw, "fence", 0, horizon - 6 * s, rng.uniform(20, 60) * s, horizon + 2 * s)
    for _ in range(int(rng.integers(1, 4))):  # poles carrying a sign or a light
        px = rng.choice([rng.uniform(2 * s, width * 0.15), rng.uniform(width * 0.85, width - 4 * s)])
        base = rng.uniform(horizon + 10 * s, height - 10 * s)
        top = horizon - rng.uniform(15, 35) * s
        _box(draw, "pole", px, top, px + 2 * s, base)
        if rng.random() < 0.5:
            _box(draw, "traffic sign", px - 4 * s, top - 6 * s, px + 5 * s, top + 2 * s)
        else:
            _box(draw, "traffic light", px - 2 * s, top - 9 * s, px + 4 * s, top + 1 * s)
    vehicles = ("car", "car", "car", "truck", "bus", "caravan", "motorcycle", "bicycle", "train")
    for _ in range(int(rng.integers(1, 5))):  # vehicles on the road, bigger when nearer
        y = rng.uniform(horizon + 8 * s, height - 8 * s)
        near = (y - horizon) / (height - horizon)
        name = vehicles[int(rng.integers(len(vehicles)))]
        length = {"bus": 60, "truck": 50, "train": 80, "caravan": 40, "motorcycle": 12, "bicycle": 10}.get(name, 30)
        w = length * near * s
        h = w * {"motorcycle": 0.8, "bicycle": 0.8, "bus": 0.7, "truck": 0.7}.get(name, 0.5)
        cx = vx + (rng.uniform(-0.35, 0.35) * width) * near
        _box(draw, name, cx - w / 2, y - h, cx + w / 2, y)
        if name == "bicycle":
            _box(draw, "rider", cx - w / 4, y - 2.2 * h, cx + w / 4, y - h)
    for _ in range(int(rng.integers(0, 4))):  # pedestrians on the sidewalk
        y = rng.uniform(horizon + 6 * s, height - 6 * s)
        near = (y - horizon) / (height - horizon)
        px = rng.choice([rng.uniform(0, width * 0.2), rng.uniform(width * 0.8, width)])
        h = (30 * near + 4) * s
        draw.ellipse([px - h / 6, y - h, px + h / 6, y], fill=ID["person"])
    if rng.random() < 0.5:
        sx, sy = rng.uniform(0, width), rng.uniform(horizon, height)
        _box(draw, "static", sx, sy, sx + 6 * s, sy + 4 * s)
    draw.polygon([(0, height), (width, height), (width * 0.85, height - 8 * s), (width * 0.15, height - 8 * s)],
                 fill=ID["ego vehicle"])
    for corner in (0, width):
        draw.polygon([(corner, height), (corner, height - 10 * s), (abs(corner - 10 * s), height)],
                     fill=ID["out of roi"])
    return np.array(img, dtype=np.uint8)


def render(label_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Renders a label map to RGB: official colour jittered per image, shaded by smooth noise, plus patterns
    (window grid, lane marks) sized in 256-px-wide units like the layout."""
    height, width = label_ids.shape
    s = width / BASE_WIDTH
    colours = np.zeros((256, 3), dtype=np.float32)
    for label in LABELS:
        if label.id >= 0:
            base = np.array(label.color, dtype=np.float32) / 255
            colours[label.id] = np.clip(base * rng.uniform(0.75, 1.15) + rng.uniform(-0.06, 0.06, 3) + 0.08, 0, 1)
    rgb = colours[label_ids]
    shade = 0.8 + 0.4 * smooth_noise(height, width, rng, 8)
    rgb *= shade[..., None]
    yy, xx = np.mgrid[0:height, 0:width] / s
    windows = (label_ids == ID["building"]) & (yy % 6 < 3) & (xx % 7 < 3)
    rgb[windows] *= 0.6
    lanes = (label_ids == ID["road"]) & (np.abs(xx - width / s / 2) < 1.5) & (yy % 10 < 5)
    rgb[lanes] = 0.9
    return to_uint8(rgb, rng, noise=0.02)


def make_cityscapes(out: str | Path, seed: int, sizes: Sizes) -> dict[str, int]:
    """Writes the Cityscapes of profile ``sizes`` under ``out/cityscapes``; returns image counts per split."""
    root = Path(out) / "cityscapes"
    profile = PROFILES[sizes]
    counts = {}
    for split, cities, per_city in profile.splits:
        n = 0
        for city in cities:
            for seq in range(per_city):
                rng = rng_for(seed, "cityscapes", city, seq)
                label_ids = draw_label_map(rng, profile.width, profile.height)
                stem = f"{city}_{seq:06d}_000019"
                save_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                         Image.fromarray(render(label_ids, rng)))
                gt = root / "gtFine" / split / city
                save_png(gt / f"{stem}_gtFine_labelIds.png", Image.fromarray(label_ids))
                save_png(gt / f"{stem}_gtFine_labelTrainIds.png", Image.fromarray(ID_TO_TRAIN_ID[label_ids]))
                n += 1
        counts[split] = n
    return counts
