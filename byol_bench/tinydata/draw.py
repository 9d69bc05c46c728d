"""Drawing primitives shared by every tiny-data generator.

Every image is drawn from its own ``numpy.random.Generator``
(``byol_bench.seeding.rng_for(seed, family, split, index)``), so the output depends only on the seed and never on
generation order. Objects are polygons rasterised with
pycocotools' own polygon rasteriser, so a COCO polygon annotation decodes to exactly the pixels that were
painted, and every box or mask is computed from those pixels.

Content is learnable on purpose: a class is a :class:`Style` (shape, texture, two hues, texture frequency), and
instances vary in scale, position, rotation, aspect, colour and background, so a better representation can score
higher on the tiny sets too.
"""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

JPEG_QUALITY = 90

# The size profiles every family generator offers: "tiny" (few classes, small images, enough of them to learn
# from) and "real" (the real dataset's classes and image sizes, a handful of images: the full presets' input).
Sizes = Literal["tiny", "real"]

# Unit shapes as polygon vertices around (0, 0) with radius about 1. Simple polygons only: pycocotools merges
# several polygons by union, so a shape with a hole could not round-trip through a COCO annotation.
_CIRCLE_POINTS = 28


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int, inner: float) -> np.ndarray:
    angles = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _crescent() -> np.ndarray:
    outer = np.linspace(-0.5 * np.pi, 1.5 * np.pi, _CIRCLE_POINTS, endpoint=False)[: _CIRCLE_POINTS // 2 + 1]
    outer_pts = np.stack([np.cos(outer + np.pi), np.sin(outer + np.pi)], axis=1)
    inner_pts = outer_pts[::-1] * np.array([0.45, 1.0])
    return np.concatenate([outer_pts, inner_pts[1:-1]])


SHAPES: dict[str, np.ndarray] = {
    "circle": _regular(_CIRCLE_POINTS),
    "square": _regular(4, np.pi / 4) * 1.2,
    "triangle": _regular(3, -np.pi / 2) * 1.1,
    "star": _star(5, 0.45),
    "cross": np.array(
        [[-0.3, -1], [0.3, -1], [0.3, -0.3], [1, -0.3], [1, 0.3], [0.3, 0.3], [0.3, 1], [-0.3, 1], [-0.3, 0.3],
         [-1, 0.3], [-1, -0.3], [-0.3, -0.3]], dtype=float),
    "hexagon": _regular(6),
    "diamond": _regular(4) * np.array([0.65, 1.0]),
    "ellipse": _regular(_CIRCLE_POINTS) * np.array([1.0, 0.5]),
    "arrow": np.array([[-1, -0.3], [0.2, -0.3], [0.2, -0.7], [1, 0], [0.2, 0.7], [0.2, 0.3], [-1, 0.3]],
                      dtype=float),
    "crescent": _crescent(),
    "lshape": np.array([[-0.8, -1], [-0.2, -1], [-0.2, 0.4], [0.8, 0.4], [0.8, 1], [-0.8, 1]], dtype=float),
    "trapezoid": np.array([[-1, 0.6], [1, 0.6], [0.5, -0.6], [-0.5, -0.6]], dtype=float),
    "semicircle": np.concatenate([_regular(_CIRCLE_POINTS)[: _CIRCLE_POINTS // 2 + 1], [[-1.0, 0.0]]])
    - np.array([0.0, 0.4]),
    "pentagon": _regular(5, -np.pi / 2),
    "burst": _star(8, 0.7),
}
TEXTURES = ("solid", "stripes", "checker", "dots", "rings", "blotches")


@dataclass(frozen=True)
class Style:
    """How the instances of one class look.

    Attributes:
        shape: key of :data:`SHAPES`.
        texture: one of :data:`TEXTURES`.
        hue: main hue in [0, 1).
        hue2: second hue (used by two-colour textures).
        freq: texture cycles across the object.
    """

    shape: str
    texture: str
    hue: float
    hue2: float
    freq: float


def make_styles(n: int, hue_offset: float = 0.0) -> list[Style]:
    """Returns ``n`` distinct styles: shapes and textures cycle, hues spread by the golden ratio."""
    shapes = list(SHAPES)
    styles = []
    for i in range(n):
        hue = (hue_offset + i * 0.618034) % 1.0
        styles.append(Style(
            shape=shapes[i % len(shapes)],
            texture=TEXTURES[(i + i // len(shapes)) % len(TEXTURES)],
            hue=hue,
            hue2=(hue + 0.35 + 0.1 * (i % 3)) % 1.0,
            freq=2.0 + (i * 7 % 5),
        ))
    return styles


@dataclass(frozen=True)
class ImageSizes:
    """The image sizes a profile draws: inclusive width and height ranges, and the share of portrait images.

    ``portrait`` swaps width and height for that share of the images, as real photo collections mix both
    orientations. At 0 no random number is spent on it, so a profile without portraits keeps its random stream.
    """

    width: tuple[int, int]
    height: tuple[int, int]
    portrait: float = 0.0

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        """Returns one ``(width, height)``."""
        w = int(rng.integers(self.width[0], self.width[1] + 1))
        h = int(rng.integers(self.height[0], self.height[1] + 1))
        if self.portrait and rng.random() < self.portrait:
            return h, w
        return w, h


def spread(count: int, n: int) -> list[int]:
    """``n`` of the indices ``0..count-1``, evenly spaced with the first and the last included (all when n = count).

    The real-size profiles draw images for a few of the real classes only; these are the ones, so the labels span
    the real range.
    """
    if n >= count:
        return list(range(count))
    return sorted({round(i * (count - 1) / (n - 1)) for i in range(n)})


def hsv(hue: float, sat: float, val: float) -> np.ndarray:
    """Returns an RGB colour in [0, 1] as a float32 array of shape (3,)."""
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val), dtype=np.float32)


def jittered_colour(hue: float, rng: np.random.Generator) -> np.ndarray:
    """A colour near ``hue`` with random saturation and brightness (instance-level colour variation)."""
    return hsv(hue + rng.uniform(-0.04, 0.04), rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))


# --------------------------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------------------------

def smooth_noise(h: int, w: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a ``cells``-sized random grid upsampled bilinearly to (h, w)."""
    grid = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random background (gradient, blotches or waves in 2 random colours), float32 (h, w, 3) in [0, 1]."""
    c1 = hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.3, 0.95))
    c2 = hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.3, 0.95))
    kind = rng.integers(3)
    if kind == 0:
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1) / 2
    elif kind == 1:
        t = smooth_noise(h, w, rng, int(rng.integers(3, 8)))
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        fx, fy = rng.uniform(0.02, 0.12, size=2)
        t = (np.sin(2 * np.pi * fx * xx + rng.uniform(0, 6)) * np.sin(2 * np.pi * fy * yy) + 1) / 2
    return blend(c1, c2, t)


def blend(c1: np.ndarray, c2: np.ndarray, t: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """``(c1 * (1 - t) + c2 * t) * scale`` for colours (3,) and maps ``t``, ``scale`` (h, w): an (h, w, 3) image.

    Computed channel by channel, which gives the same bits as broadcasting over a trailing axis of length 3 but
    runs several times faster (that axis makes numpy's innermost loop 3 elements long).
    """
    keep = 1 - t
    channels = [c1[i] * keep + c2[i] * t for i in range(3)]
    return np.stack(channels if scale is None else [c * scale for c in channels], axis=-1)


# --------------------------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Placement:
    """Where one object goes: centre (x, y) in pixels, size (radius) in pixels, rotation and aspect."""

    cx: float
    cy: float
    size: float
    angle: float
    aspect: float


def random_placement(h: int, w: int, rng: np.random.Generator, scale: tuple[float, float],
                     inside: bool = True) -> Placement:
    """Samples a placement; ``scale`` is the radius as a fraction of the short side.

    With ``inside`` the object's radius fits in the image (so it is not truncated); otherwise its centre can
    be anywhere in the image.
    """
    size = rng.uniform(*scale) * min(h, w)
    margin = size if inside else 0.0
    cx = rng.uniform(margin, max(margin, w - margin))
    cy = rng.uniform(margin, max(margin, h - margin))
    return Placement(cx, cy, size, rng.uniform(-0.45, 0.45), rng.uniform(0.8, 1.25))


def shape_polygon(shape: str, p: Placement) -> np.ndarray:
    """Returns the shape's vertices (K, 2) in pixel coordinates (x, y) for placement ``p``."""
    pts = SHAPES[shape] * np.array([p.aspect, 1.0 / p.aspect]) * p.size
    c, s = np.cos(p.angle), np.sin(p.angle)
    rot = pts @ np.array([[c, s], [-s, c]])
    return rot + np.array([p.cx, p.cy])


def clip_polygon(poly: np.ndarray, w: float, h: float) -> np.ndarray:
    """Clips a polygon to the rectangle [0, w] x [0, h] (Sutherland-Hodgman); may return < 3 vertices."""
    def clip(points: list[np.ndarray], axis: int, bound: float, keep_below: bool) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for i, cur in enumerate(points):
            prev = points[i - 1]
            cur_in = cur[axis] <= bound if keep_below else cur[axis] >= bound
            prev_in = prev[axis] <= bound if keep_below else prev[axis] >= bound
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append(prev + t * (cur - prev))
            if cur_in:
                out.append(cur)
        return out

    if poly[:, 0].min() >= 0 and poly[:, 1].min() >= 0 and poly[:, 0].max() <= w and poly[:, 1].max() <= h:
        return poly.astype(np.float64)
    points = list(poly.astype(np.float64))
    for axis, bound, keep_below in ((0, 0.0, False), (0, float(w), True), (1, 0.0, False), (1, float(h), True)):
        if len(points) < 3:
            return np.zeros((0, 2))
        points = clip(points, axis, bound, keep_below)
    return np.array(points).reshape(-1, 2)


def polygons_to_rle(polys: list[np.ndarray], h: int, w: int) -> dict:
    """Rasterises the union of polygons with pycocotools; returns one compressed RLE."""
    flat = [p.reshape(-1).tolist() for p in polys if len(p) >= 3]
    if not flat:
        return mask_utils.encode(np.zeros((h, w), dtype=np.uint8, order="F"))
    return mask_utils.merge(mask_utils.frPyObjects(flat, h, w))


def rasterize(polys: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """Returns the bool (h, w) mask of the union of polygons, exactly as pycocotools decodes them."""
    return mask_utils.decode(polygons_to_rle(polys, h, w)).astype(bool)


def texture(style: Style, p: Placement, region: tuple[slice, slice], rng: np.random.Generator) -> np.ndarray:
    """Paints the style's texture, in object coordinates, over the canvas ``region`` (rows, cols) only.

    Returns:
        float32 (rows, cols, 3) colours in [0, 1].
    """
    c1 = jittered_colour(style.hue, rng)
    c2 = jittered_colour(style.hue2, rng)
    rows, cols = region
    yy, xx = np.mgrid[rows, cols].astype(np.float32)
    h, w = yy.shape
    c, s = np.cos(p.angle), np.sin(p.angle)
    u = ((xx - p.cx) * c + (yy - p.cy) * s) / max(p.size, 1.0)
    v = (-(xx - p.cx) * s + (yy - p.cy) * c) / max(p.size, 1.0)
    f = style.freq * rng.uniform(0.85, 1.15)
    if style.texture == "solid":
        t = np.zeros_like(u)
    elif style.texture == "stripes":
        t = (np.sin(np.pi * f * u) > 0).astype(np.float32)
    elif style.texture == "checker":
        t = ((np.floor(f * u / 2) + np.floor(f * v / 2)) % 2).astype(np.float32)
    elif style.texture == "dots":
        du = (f * u / 2) % 1 - 0.5
        dv = (f * v / 2) % 1 - 0.5
        t = (du * du + dv * dv < 0.09).astype(np.float32)
    elif style.texture == "rings":
        t = (np.sin(np.pi * f * np.sqrt(u * u + v * v)) > 0).astype(np.float32)
    else:  # blotches
        t = (smooth_noise(h, w, rng, max(3, int(f * 2))) > 0.5).astype(np.float32)
    # A soft light gradient across the object, so even solid objects are not flat colour.
    shade = 0.85 + 0.15 * np.clip(u * rng.uniform(-1, 1) + v * rng.uniform(-1, 1), -1, 1)
    return blend(c1, c2, t, shade)


def paint(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray, opacity: float = 1.0) -> None:
    """Alpha-blends ``colour`` (h, w, 3) or (3,) into ``canvas`` where ``mask`` is set, in place.

    Channel by channel, as :func:`blend` and for the same reason.
    """
    alpha = mask.astype(np.float32) * opacity
    keep = 1 - alpha
    colour = np.broadcast_to(colour, canvas.shape)
    for i in range(3):
        canvas[..., i] *= keep
        canvas[..., i] += alpha * colour[..., i]


@dataclass(frozen=True)
class Shape:
    """One rasterised object: its pixel mask, its polygon clipped to the image, and whether it was clipped.

    ``polygon`` rasterises (with pycocotools) to exactly ``mask``. ``area_unclipped`` is the polygon's area
    before clipping, so callers can reject objects that are mostly outside the image.
    """

    mask: np.ndarray
    polygon: np.ndarray
    truncated: bool
    area_unclipped: float


def polygon_area(poly: np.ndarray) -> float:
    """Shoelace area of a polygon (K, 2)."""
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def make_shape(shape: str, p: Placement, h: int, w: int) -> Shape:
    """Rasterises ``shape`` at placement ``p`` on an (h, w) image, without painting it."""
    raw = shape_polygon(shape, p)
    # Rounded to 0.01 px before rasterising, so the polygon written to JSON rasterises to the same mask.
    poly = np.round(clip_polygon(raw, w, h), 2)
    truncated = bool((raw[:, 0] < 0).any() or (raw[:, 0] > w).any() or (raw[:, 1] < 0).any()
                     or (raw[:, 1] > h).any())
    return Shape(rasterize([poly], h, w), poly, truncated, polygon_area(raw))


def paint_shape(canvas: np.ndarray, shape: Shape, style: Style, p: Placement, rng: np.random.Generator,
                opacity: float = 1.0) -> None:
    """Paints ``shape`` with the style's texture onto ``canvas`` (float32 (h, w, 3)), in place."""
    if shape.mask.any():
        x0, y0, x1, y1 = mask_box(shape.mask)
        region = (slice(y0, y1 + 1), slice(x0, x1 + 1))
        paint(canvas[region], shape.mask[region], texture(style, p, region, rng), opacity)


def draw_object(canvas: np.ndarray, style: Style, p: Placement, rng: np.random.Generator,
                opacity: float = 1.0) -> Shape:
    """Rasterises and paints one instance of ``style`` at ``p`` onto ``canvas``, in place; returns its shape."""
    h, w = canvas.shape[:2]
    shape = make_shape(style.shape, p, h, w)
    paint_shape(canvas, shape, style, p, rng, opacity)
    return shape


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of a bool mask by a (2r+1) square: separable shifted ORs (no SciPy needed)."""
    rows = mask.copy()
    for d in range(1, radius + 1):
        rows[d:] |= mask[:-d]
        rows[:-d] |= mask[d:]
    out = rows.copy()
    for d in range(1, radius + 1):
        out[:, d:] |= rows[:, :-d]
        out[:, :-d] |= rows[:, d:]
    return out


def place_apart(shape: str, h: int, w: int, rng: np.random.Generator, scale: tuple[float, float],
                occupied: np.ndarray, allow_truncation: bool = False,
                tries: int = 60) -> tuple[Placement, Shape] | None:
    """Finds a placement whose pixels avoid ``occupied`` (bool (h, w)); returns None after ``tries``.

    The size shrinks by 15 % every 10 failed tries. A truncated object must keep at least half of its area
    inside the image, and every object at least 16 pixels, so each one stays recognisable.
    """
    for attempt in range(tries):
        shrink = 0.85 ** (attempt // 10)
        p = random_placement(h, w, rng, (scale[0] * shrink, scale[1] * shrink), inside=not allow_truncation)
        candidate = make_shape(shape, p, h, w)
        visible = int(candidate.mask.sum())
        if visible < 16 or visible < 0.5 * candidate.area_unclipped:
            continue
        if not (candidate.mask & occupied).any():
            return p, candidate
    return None


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Returns the inclusive pixel extent (x0, y0, x1, y1) of a non-empty bool mask (0-based)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def to_uint8(canvas: np.ndarray, rng: np.random.Generator, noise: float = 0.03) -> np.ndarray:
    """Adds mild pixel noise (sensor-like) and converts a [0, 1] float canvas to uint8.

    ``noise=0`` draws no random numbers: the normal draw is a third of the time of a photo-sized image.
    """
    if noise:
        canvas = canvas + noise * rng.standard_normal(canvas.shape, dtype=np.float32)
    return (np.clip(canvas, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def object_image(style: Style, rng: np.random.Generator, sizes: ImageSizes | tuple[int, int],
                 distractors: tuple[Style, ...] = (), noise: float = 0.03) -> np.ndarray:
    """A classification image: one instance of ``style`` on a random background, uint8 (h, w, 3).

    The size comes from ``sizes``; a ``(min, max)`` pair draws width and height independently from it (so aspect
    ratios vary). With probability 0.4 a small instance of a random ``distractors`` style is drawn first, partly
    hidden behind the main object, as clutter in real photos. ``noise``: see :func:`to_uint8`.
    """
    if not isinstance(sizes, ImageSizes):
        sizes = ImageSizes(sizes, sizes)
    w, h = sizes.draw(rng)
    canvas = background(h, w, rng)
    if distractors and rng.random() < 0.4:
        other = distractors[int(rng.integers(len(distractors)))]
        draw_object(canvas, other, random_placement(h, w, rng, (0.1, 0.2), inside=False), rng)
    draw_object(canvas, style, random_placement(h, w, rng, (0.25, 0.45)), rng)
    return to_uint8(canvas, rng, noise)


# --------------------------------------------------------------------------------------------------------------
# Deterministic writers (no timestamps, fixed quality; parents created)
# --------------------------------------------------------------------------------------------------------------

def save_jpeg(path: Path, rgb: np.ndarray) -> None:
    """Writes an RGB uint8 array as a baseline JPEG with fixed quality and no metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY)
    path.write_bytes(buf.getvalue())


def save_png(path: Path, image: Image.Image) -> None:
    """Writes a PIL image as PNG (PIL writes no time chunk unless asked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    path.write_bytes(buf.getvalue())


def write_text(path: Path, text: str) -> None:
    """Writes UTF-8 text with '\\n' line ends, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")
