"""Tiny PASCAL VOC 2007 and 2012 devkits (detection, classification, segmentation with SBD "Aug").

Each image shows 1-4 non-overlapping objects of the 20 VOC classes (one :class:`Style` per class) on a random
background. Boxes are the pixel extent of each object's mask. "Difficult" objects are small and faint;
"truncated" ones leave the image. Classification lists follow the XML: 1 if the class has a non-difficult
instance, 0 if it only has difficult ones, -1 otherwise.

Guarantees the protocols rely on (checked by tests): in every split of VOC2007 each class has several positive
images and at least two difficult-only images.

VOC2012 adds ``ImageSets/Segmentation/{train,val,aug}.txt`` with ``SegmentationClass/`` (palette PNGs, 255 on
object borders and over difficult objects) for train/val, and ``SegmentationClassAug/`` (index PNGs) for the
"aug" list = train + SBD-only images (never val), as mmsegmentation's ``voc_aug.py`` builds it.

The ``real`` profile draws VOC's photo sizes (500 px on the long side) and few images: 60 per VOC2007 split, so
each class is the main object of 3 images per split (the VOC07 SVM's 3-fold cross-validation needs a positive in
every fold).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from byol_bench.datasets.voc import VOC_CLASSES
from byol_bench.seeding import rng_for
from byol_bench.tinydata.draw import (
    ImageSizes,
    Sizes,
    Style,
    background,
    dilate,
    make_styles,
    mask_box,
    paint_shape,
    place_apart,
    save_jpeg,
    save_png,
    to_uint8,
    write_text,
)

DIFFICULT_ONLY_PER_CLASS = 3
POSES = ("Unspecified", "Left", "Right", "Frontal", "Rear")


@dataclass(frozen=True)
class Profile:
    """What one size profile writes: image sizes, VOC2007 split sizes, VOC2012 images and segmentation splits
    (``voc12_seg``: train, val and SBD-only images)."""

    sizes: ImageSizes
    voc07_trainval: int
    voc07_test: int
    voc12_images: int
    voc12_seg: tuple[int, int, int]


PROFILES: dict[str, Profile] = {
    "tiny": Profile(ImageSizes((128, 176), (96, 144)), 250, 250, 200, (50, 30, 60)),
    # As VOC's photos: 500 px on the long side, the short side 333-500, 30 % of them portrait.
    "real": Profile(ImageSizes((500, 500), (333, 500), portrait=0.3), 60, 60, 40, (8, 4, 8)),
}


@dataclass(frozen=True)
class VocObject:
    """One drawn object: class index (0..19), flags, inclusive 0-based pixel box and mask."""

    label: int
    difficult: bool
    truncated: bool
    box: tuple[int, int, int, int]
    mask: np.ndarray


def voc_palette() -> list[int]:
    """The standard VOC colour map (bit-interleaved), 256 RGB entries flattened; index 255 = (224, 224, 192)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def plan_split(n_images: int, rng: np.random.Generator) -> list[list[tuple[int, bool]]]:
    """Chooses the (class, difficult) objects of each image of one split.

    Every class is the main object of about n/20 images; 0-2 random extras follow; then each class gets
    :data:`DIFFICULT_ONLY_PER_CLASS` images where it appears only as a difficult object.
    """
    n_cls = len(VOC_CLASSES)
    mains = np.concatenate([rng.permutation(n_cls) for _ in range(n_images // n_cls + 1)])[:n_images]
    plans: list[list[tuple[int, bool]]] = []
    for i in range(n_images):
        objs = [(int(mains[i]), False)]
        for _ in range(int(rng.choice(3, p=[0.45, 0.35, 0.2]))):
            objs.append((int(rng.integers(n_cls)), False))
        if rng.random() < 0.1:  # a difficult instance next to a normal one: the label stays 1
            objs.append((objs[0][0], True))
        plans.append(objs)
    for c in range(n_cls):
        free = [i for i, objs in enumerate(plans) if len(objs) < 4 and all(k != c for k, _ in objs)]
        for i in rng.choice(free, size=DIFFICULT_ONLY_PER_CLASS, replace=False):
            plans[int(i)].append((c, True))
    return plans


def draw_scene(plan: list[tuple[int, bool]], styles: list[Style], rng: np.random.Generator,
               sizes: ImageSizes) -> tuple[np.ndarray, list[VocObject]]:
    """Draws one image following ``plan``; returns the uint8 RGB image and the objects actually placed."""
    w, h = sizes.draw(rng)
    canvas = background(h, w, rng)
    occupied = np.zeros((h, w), dtype=bool)
    objects = []
    # Big objects first, so the small difficult ones fill the gaps.
    for label, difficult in sorted(plan, key=lambda o: o[1]):
        style = styles[label]
        scale = (0.1, 0.15) if difficult else (0.18, 0.36)
        found = place_apart(style.shape, h, w, rng, scale, occupied,
                            allow_truncation=not difficult and rng.random() < 0.25)
        if found is None:
            continue
        placement, shape = found
        paint_shape(canvas, shape, style, placement, rng, opacity=0.55 if difficult else 1.0)
        occupied |= dilate(shape.mask, 2)
        objects.append(VocObject(label, difficult, shape.truncated, mask_box(shape.mask), shape.mask))
    return to_uint8(canvas, rng), objects


def annotation_xml(year: str, image_id: str, width: int, height: int, objects: list[VocObject],
                   segmented: bool, rng: np.random.Generator) -> str:
    """The VOC ``Annotations/<id>.xml`` text; box coordinates are 1-based inclusive pixels, as in VOC."""
    parts = [
        "<annotation>",
        f"\t<folder>VOC{year}</folder>",
        f"\t<filename>{image_id}.jpg</filename>",
        "\t<source>",
        f"\t\t<database>The VOC{year} Database (byol-bench tiny data)</database>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{width}</width>",
        f"\t\t<height>{height}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        f"\t<segmented>{int(segmented)}</segmented>",
    ]
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        parts += [
            "\t<object>",
            f"\t\t<name>{VOC_CLASSES[obj.label]}</name>",
            f"\t\t<pose>{POSES[int(rng.integers(len(POSES)))]}</pose>",
            f"\t\t<truncated>{int(obj.truncated)}</truncated>",
            f"\t\t<difficult>{int(obj.difficult)}</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{x0 + 1}</xmin>",
            f"\t\t\t<ymin>{y0 + 1}</ymin>",
            f"\t\t\t<xmax>{x1 + 1}</xmax>",
            f"\t\t\t<ymax>{y1 + 1}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def class_presence(objects: list[VocObject]) -> np.ndarray:
    """VOC list values per class: 1 = a non-difficult instance, 0 = only difficult ones, -1 = absent."""
    values = np.full(len(VOC_CLASSES), -1, dtype=np.int64)
    for obj in objects:
        if obj.difficult:
            values[obj.label] = max(values[obj.label], 0)
        else:
            values[obj.label] = 1
    return values


def segmentation_map(objects: list[VocObject], h: int, w: int) -> np.ndarray:
    """Class-index map: 0 background, 1..20 objects, 255 on object borders and over difficult objects."""
    labels = np.zeros((h, w), dtype=np.uint8)
    for obj in objects:
        labels[obj.mask] = 255 if obj.difficult else obj.label + 1
    # Label changes between 4-neighbours mark the border; both sides of it become 255 (VOC's "void" band).
    border = np.zeros((h, w), dtype=bool)
    border[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    border[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    border[1:, :] |= labels[1:, :] != labels[:-1, :]
    border[:-1, :] |= labels[1:, :] != labels[:-1, :]
    labels[border] = 255
    return labels


def write_main_lists(main_dir: Path, splits: dict[str, list[str]],
                     presence: dict[str, np.ndarray]) -> None:
    """Writes ``ImageSets/Main/<split>.txt`` and ``<class>_<split>.txt`` (``id  1`` / ``id -1`` / ``id  0``)."""
    for split, ids in splits.items():
        write_text(main_dir / f"{split}.txt", "".join(f"{i}\n" for i in ids))
        for c, name in enumerate(VOC_CLASSES):
            write_text(main_dir / f"{name}_{split}.txt",
                       "".join(f"{i} {int(presence[i][c]):2d}\n" for i in ids))


def _write_year(year_root: Path, year: str, ids: list[str], plans: dict[str, list[tuple[int, bool]]],
                seed: int, segmented: set[str],
                sizes: ImageSizes) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Draws and writes JPEGImages + Annotations; returns per-id class presence and segmentation maps."""
    styles = make_styles(len(VOC_CLASSES))
    presence, seg_maps = {}, {}
    for image_id in ids:
        rng = rng_for(seed, f"voc{year}", image_id)
        rgb, objects = draw_scene(plans[image_id], styles, rng, sizes)
        h, w = rgb.shape[:2]
        save_jpeg(year_root / "JPEGImages" / f"{image_id}.jpg", rgb)
        write_text(year_root / "Annotations" / f"{image_id}.xml",
                   annotation_xml(year, image_id, w, h, objects, image_id in segmented, rng))
        presence[image_id] = class_presence(objects)
        if image_id in segmented:
            seg_maps[image_id] = segmentation_map(objects, h, w)
    return presence, seg_maps


def make_voc2007(out: Path, seed: int, sizes: Sizes) -> dict[str, int]:
    """Writes ``VOCdevkit/VOC2007`` of profile ``sizes`` (trainval/test with train/val halves); returns image
    counts."""
    root = out / "VOCdevkit" / "VOC2007"
    profile = PROFILES[sizes]
    n = profile.voc07_trainval + profile.voc07_test
    order = rng_for(seed, "voc2007", "splits").permutation(n)
    all_ids = [f"{i + 1:06d}" for i in range(n)]
    trainval = sorted(all_ids[i] for i in order[:profile.voc07_trainval])
    test = sorted(all_ids[i] for i in order[profile.voc07_trainval:])
    plans = {}
    for split, ids in (("trainval", trainval), ("test", test)):
        plans.update(zip(ids, plan_split(len(ids), rng_for(seed, "voc2007", split, "plan")), strict=True))
    presence, _ = _write_year(root, "2007", all_ids, plans, seed, segmented=set(), sizes=profile.sizes)
    train_pick = rng_for(seed, "voc2007", "train-val").permutation(len(trainval))[: len(trainval) // 2]
    train = sorted(trainval[i] for i in train_pick)
    val = sorted(set(trainval) - set(train))
    write_main_lists(root / "ImageSets" / "Main",
                     {"train": train, "val": val, "trainval": trainval, "test": test}, presence)
    return {"trainval": len(trainval), "test": len(test)}


def make_voc2012(out: Path, seed: int, sizes: Sizes) -> dict[str, int]:
    """Writes ``VOCdevkit/VOC2012`` of profile ``sizes`` (detection trainval + segmentation train/val/aug);
    returns counts."""
    root = out / "VOCdevkit" / "VOC2012"
    profile = PROFILES[sizes]
    ids = [f"2008_{i + 1:06d}" for i in range(profile.voc12_images)]
    plans = dict(zip(ids, plan_split(len(ids), rng_for(seed, "voc2012", "plan")), strict=True))
    order = [ids[i] for i in rng_for(seed, "voc2012", "seg-splits").permutation(len(ids))]
    n_train, n_val, n_sbd = profile.voc12_seg
    seg_train = sorted(order[:n_train])
    seg_val = sorted(order[n_train:n_train + n_val])
    sbd_only = sorted(order[n_train + n_val:n_train + n_val + n_sbd])
    presence, seg_maps = _write_year(root, "2012", ids, plans, seed,
                                     segmented=set(seg_train) | set(seg_val) | set(sbd_only), sizes=profile.sizes)
    train_pick = rng_for(seed, "voc2012", "train-val").permutation(len(ids))[: len(ids) // 2]
    train = sorted(ids[i] for i in train_pick)
    val = sorted(set(ids) - set(train))
    write_main_lists(root / "ImageSets" / "Main", {"train": train, "val": val, "trainval": ids}, presence)

    palette = voc_palette()
    for image_id in seg_train + seg_val:
        png = Image.fromarray(seg_maps[image_id])
        png.putpalette(palette)
        save_png(root / "SegmentationClass" / f"{image_id}.png", png)
    aug = sorted(seg_train + sbd_only)
    for image_id in aug:
        save_png(root / "SegmentationClassAug" / f"{image_id}.png", Image.fromarray(seg_maps[image_id]))
    seg_dir = root / "ImageSets" / "Segmentation"
    for name, split_ids in (("train", seg_train), ("val", seg_val), ("aug", aug)):
        write_text(seg_dir / f"{name}.txt", "".join(f"{i}\n" for i in split_ids))
    return {"trainval": len(ids), "seg_train": len(seg_train), "seg_val": len(seg_val), "seg_aug": len(aug)}
