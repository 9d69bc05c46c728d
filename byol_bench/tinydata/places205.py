"""Tiny Places205 set: ``places205/data/vision/torralba/deeplearning/images256/<l>/<scene>/*.jpg`` plus
``places205/trainvalsplit_places205/{train,val}_places205.csv`` (``a/abbey/gsun_<hash>.jpg <label>``).

A scene class is a layout, not an object: sky and ground colours, horizon height, ground texture, and the
shape and number of structures along the horizon.

The ``real`` profile has 205 classes (labels 0..204, as the real lists) and draws 256x256 images, the size of
the real ``images256`` set, for 32 of them (2 train + 1 val each: 64 train images are what a rehearsal of the 8xb32
linear presets trains on).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from byol_bench.seeding import rng_for
from byol_bench.tinydata.draw import (
    TEXTURES,
    Placement,
    Sizes,
    Style,
    draw_object,
    hsv,
    paint,
    save_jpeg,
    spread,
    texture,
    to_uint8,
    write_text,
)

IMAGE_SUBDIR = "data/vision/torralba/deeplearning/images256"
# Real Places205 category names (label = index in this sorted list, as in the official csv files).
SCENES = ("abbey", "airport_terminal", "beach", "bedroom", "canyon",
          "forest_path", "highway", "mountain", "ocean", "skyscraper")
REAL_CLASSES = 205


@dataclass(frozen=True)
class Profile:
    """What one size profile writes.

    Attributes:
        scenes: the class names, sorted (label = index).
        with_images: how many classes get images (spread over the labels); the rest only count.
        train_per_class, val_per_class: images per class with images.
        size_range: side of the square images.
    """

    scenes: tuple[str, ...]
    with_images: int
    train_per_class: int
    val_per_class: int
    size_range: tuple[int, int]


# The real names above, and made-up ones for the other real classes.
_REAL_SCENES = tuple(sorted(SCENES + tuple(f"scene_{i:03d}" for i in range(REAL_CLASSES - len(SCENES)))))
PROFILES: dict[str, Profile] = {
    "tiny": Profile(SCENES, len(SCENES), 60, 15, (72, 96)),
    "real": Profile(_REAL_SCENES, 32, 2, 1, (256, 256)),
}


@dataclass(frozen=True)
class SceneRecipe:
    """How one scene class is laid out."""

    sky_hue: float
    ground: Style
    horizon: float
    element: Style
    elements: tuple[int, int]


def recipes(n: int) -> list[SceneRecipe]:
    """``n`` recipes, one per scene; the first ten all differ in horizon, textures, element shape and count."""
    shapes = ("triangle", "square", "circle", "trapezoid", "burst", "diamond", "semicircle", "pentagon",
              "ellipse", "lshape")
    out = []
    for k in range(n):
        ground_hue = (0.08 + 0.29 * k) % 1.0
        out.append(SceneRecipe(
            sky_hue=(0.55 + 0.07 * k) % 1.0,
            ground=Style("square", TEXTURES[k % len(TEXTURES)], ground_hue, (ground_hue + 0.1) % 1.0, 4.0 + k % 3),
            horizon=0.3 + 0.4 * ((k * 3) % 10) / 9,
            element=Style(shapes[k % len(shapes)], TEXTURES[(k + 2) % len(TEXTURES)], (0.4 + 0.37 * k) % 1.0, 0.1, 2.0),
            elements=(1 + k % 3, 2 + k % 3 + k % 4),
        ))
    return out


def scene_image(recipe: SceneRecipe, rng: np.random.Generator, size_range: tuple[int, int]) -> np.ndarray:
    """Draws one scene image (square, as Places205's 256x256 images, side from ``size_range``), uint8 (s, s, 3)."""
    size = int(rng.integers(size_range[0], size_range[1] + 1))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Weather and time of day: a quarter of the skies ignore the scene's sky colour altogether.
    sky_hue = recipe.sky_hue + rng.uniform(-0.1, 0.1) if rng.random() < 0.75 else rng.random()
    top = hsv(sky_hue, rng.uniform(0.1, 0.7), rng.uniform(0.45, 1.0))
    canvas = top * (1 - 0.5 * yy[..., None] / size) + 0.5 * yy[..., None] / size
    horizon_frac = recipe.horizon + rng.uniform(-0.15, 0.15)
    horizon = size * horizon_frac + rng.uniform(-0.3, 0.3) * (xx - size / 2)
    shift = rng.uniform(-0.12, 0.12)
    ground = replace(recipe.ground, hue=(recipe.ground.hue + shift) % 1.0, hue2=(recipe.ground.hue2 + shift) % 1.0)
    whole = Placement(size / 2, size / 2, size / 2, rng.uniform(-0.5, 0.5), 1.0)
    paint(canvas, yy >= horizon, texture(ground, whole, (slice(0, size), slice(0, size)), rng))
    for _ in range(int(rng.integers(recipe.elements[0], recipe.elements[1] + 1))):
        cx = rng.uniform(0, size)
        radius = rng.uniform(0.08, 0.2) * size
        cy = float(np.clip(size * horizon_frac, 0, size)) - 0.6 * radius
        draw_object(canvas, recipe.element, Placement(cx, cy, radius, rng.uniform(-0.3, 0.3), 1.0), rng)
    return to_uint8(canvas, rng, noise=0.05)


def make_places205(out: str | Path, seed: int, sizes: Sizes) -> dict[str, int]:
    """Writes the Places205 of profile ``sizes`` under ``out/places205``; returns image counts per split."""
    root = Path(out) / "places205"
    profile = PROFILES[sizes]
    scene_recipes = recipes(len(profile.scenes))
    labels = spread(len(profile.scenes), profile.with_images)
    counts = {}
    for split, per_class in (("train", profile.train_per_class), ("val", profile.val_per_class)):
        lines = []
        for label in labels:
            scene = profile.scenes[label]
            for i in range(per_class):
                rng = rng_for(seed, "places205", split, label, i)
                digest = hashlib.sha1(f"{seed}/{split}/{scene}/{i}".encode()).hexdigest()[:32]
                rel = f"{scene[0]}/{scene}/gsun_{digest}.jpg"
                save_jpeg(root / IMAGE_SUBDIR / rel, scene_image(scene_recipes[label], rng, profile.size_range))
                lines.append(f"{rel} {label}\n")
        write_text(root / "trainvalsplit_places205" / f"{split}_places205.csv", "".join(lines))
        counts[split] = len(lines)
    return counts
