"""Tiny Cityscapes: street scenes drawn as label maps first (official label ids), then rendered to RGB.

Writes ``cityscapes/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` and
``cityscapes/gtFine/{train,val}/<city>/*_gtFine_{labelIds,labelTrainIds}.png``. The scene has sky, buildings,
road, sidewalks, vegetation, terrain, poles with signs or lights, vehicles and people, plus void labels
(ego vehicle, out of roi, static) and ignored classes (parking, caravan) so the trainId mapping is exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from byol_bench.datasets.cityscapes import ID_TO_TRAIN_ID, LABELS
from byol_bench.seeding import rng_for
from byol_bench.tinydata.draw import save_png, smooth_noise, to_uint8

CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}
IMAGES_PER_CITY = {"train": 10, "val": 8}
WIDTH, HEIGHT = 256, 128
ID = {label.name: label.id for label in LABELS}


def _box(draw: ImageDraw.ImageDraw, name: str, x0: float, y0: float, x1: float, y1: float) -> None:
    draw.rectangle([int(x0), int(y0), int(x1), int(y1)], fill=ID[name])


def draw_label_map(rng: np.random.Generator) -> np.ndarray:
    """Paints one street scene as official label ids, uint8 (HEIGHT, WIDTH), back to front."""
    img = Image.new("L", (WIDTH, HEIGHT), ID["sky"])
    draw = ImageDraw.Draw(img)
    horizon = HEIGHT * rng.uniform(0.38, 0.5)
    vx = WIDTH * rng.uniform(0.35, 0.65)
    x = 0.0
    while x < WIDTH:  # a skyline of buildings, sometimes a low wall
        bw = rng.uniform(20, 60)
        top = horizon - rng.uniform(10, 50)
        _box(draw, "building" if rng.random() < 0.85 else "wall", x, top, x + bw, horizon + 4)
        x += bw
    for _ in range(int(rng.integers(1, 4))):
        cx, r = rng.uniform(0, WIDTH), rng.uniform(8, 20)
        draw.ellipse([cx - r, horizon - 1.6 * r, cx + r, horizon + 0.3 * r], fill=ID["vegetation"])
    _box(draw, "sidewalk", 0, horizon, WIDTH, HEIGHT)
    for side in (0, WIDTH):
        depth = rng.uniform(10, 40)
        draw.polygon([(side, horizon), (side, horizon + depth), (abs(side - 30), horizon)], fill=ID["terrain"])
    draw.polygon([(WIDTH * 0.08, HEIGHT), (WIDTH * 0.92, HEIGHT), (vx + 8, horizon), (vx - 8, horizon)],
                 fill=ID["road"])
    if rng.random() < 0.5:
        px = rng.uniform(0, WIDTH * 0.2)
        draw.polygon([(px, HEIGHT * 0.8), (px + 30, HEIGHT * 0.8), (px + 20, HEIGHT * 0.65), (px + 5, HEIGHT * 0.65)],
                     fill=ID["parking"])
    if rng.random() < 0.5:
        _box(draw, "fence", 0, horizon - 6, rng.uniform(20, 60), horizon + 2)
    for _ in range(int(rng.integers(1, 4))):  # poles carrying a sign or a light
        px = rng.choice([rng.uniform(2, WIDTH * 0.15), rng.uniform(WIDTH * 0.85, WIDTH - 4)])
        base = rng.uniform(horizon + 10, HEIGHT - 10)
        top = horizon - rng.uniform(15, 35)
        _box(draw, "pole", px, top, px + 2, base)
        if rng.random() < 0.5:
            _box(draw, "traffic sign", px - 4, top - 6, px + 5, top + 2)
        else:
            _box(draw, "traffic light", px - 2, top - 9, px + 4, top + 1)
    vehicles = ("car", "car", "car", "truck", "bus", "caravan", "motorcycle", "bicycle", "train")
    for _ in range(int(rng.integers(1, 5))):  # vehicles on the road, bigger when nearer
        y = rng.uniform(horizon + 8, HEIGHT - 8)
        near = (y - horizon) / (HEIGHT - horizon)
        name = vehicles[int(rng.integers(len(vehicles)))]
        w = {"bus": 60, "truck": 50, "train": 80, "caravan": 40, "motorcycle": 12, "bicycle": 10}.get(name, 30) * near
        h = w * {"motorcycle": 0.8, "bicycle": 0.8, "bus": 0.7, "truck": 0.7}.get(name, 0.5)
        cx = vx + (rng.uniform(-0.35, 0.35) * WIDTH) * near
        _box(draw, name, cx - w / 2, y - h, cx + w / 2, y)
        if name == "bicycle":
            _box(draw, "rider", cx - w / 4, y - 2.2 * h, cx + w / 4, y - h)
    for _ in range(int(rng.integers(0, 4))):  # pedestrians on the sidewalk
        y = rng.uniform(horizon + 6, HEIGHT - 6)
        near = (y - horizon) / (HEIGHT - horizon)
        px = rng.choice([rng.uniform(0, WIDTH * 0.2), rng.uniform(WIDTH * 0.8, WIDTH)])
        h = 30 * near + 4
        draw.ellipse([px - h / 6, y - h, px + h / 6, y], fill=ID["person"])
    if rng.random() < 0.5:
        sx, sy = rng.uniform(0, WIDTH), rng.uniform(horizon, HEIGHT)
        _box(draw, "static", sx, sy, sx + 6, sy + 4)
    draw.polygon([(0, HEIGHT), (WIDTH, HEIGHT), (WIDTH * 0.85, HEIGHT - 8), (WIDTH * 0.15, HEIGHT - 8)],
                 fill=ID["ego vehicle"])
    for corner in (0, WIDTH):
        draw.polygon([(corner, HEIGHT), (corner, HEIGHT - 10), (abs(corner - 10), HEIGHT)], fill=ID["out of roi"])
    return np.array(img, dtype=np.uint8)


def render(label_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Renders a label map to RGB: official colour jittered per image, shaded by smooth noise, plus patterns."""
    colours = np.zeros((256, 3), dtype=np.float32)
    for label in LABELS:
        if label.id >= 0:
            base = np.array(label.color, dtype=np.float32) / 255
            colours[label.id] = np.clip(base * rng.uniform(0.75, 1.15) + rng.uniform(-0.06, 0.06, 3) + 0.08, 0, 1)
    rgb = colours[label_ids]
    shade = 0.8 + 0.4 * smooth_noise(HEIGHT, WIDTH, rng, 8)
    rgb *= shade[..., None]
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    windows = (label_ids == ID["building"]) & (yy % 6 < 3) & (xx % 7 < 3)
    rgb[windows] *= 0.6
    lanes = (label_ids == ID["road"]) & (np.abs(xx - WIDTH / 2) < 1.5) & (yy % 10 < 5)
    rgb[lanes] = 0.9
    return to_uint8(rgb, rng, noise=0.02)


def make_cityscapes(out: str | Path, seed: int) -> dict[str, int]:
    """Writes the tiny Cityscapes under ``out/cityscapes``; returns image counts per split."""
    root = Path(out) / "cityscapes"
    counts = {}
    for split, cities in CITIES.items():
        n = 0
        for city in cities:
            for seq in range(IMAGES_PER_CITY[split]):
                rng = rng_for(seed, "cityscapes", city, seq)
                label_ids = draw_label_map(rng)
                stem = f"{city}_{seq:06d}_000019"
                save_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                         Image.fromarray(render(label_ids, rng)))
                gt = root / "gtFine" / split / city
                save_png(gt / f"{stem}_gtFine_labelIds.png", Image.fromarray(label_ids))
                save_png(gt / f"{stem}_gtFine_labelTrainIds.png", Image.fromarray(ID_TO_TRAIN_ID[label_ids]))
                n += 1
        counts[split] = n
    return counts
