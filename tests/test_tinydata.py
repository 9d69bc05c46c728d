"""The tiny-data generator: deterministic, small, learnable, and its annotations are exactly what it drew."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from sklearn.linear_model import RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from byol_bench.classification import open_split
from byol_bench.datasets import DatasetError
from byol_bench.datasets.cityscapes import ID_TO_TRAIN_ID
from byol_bench.datasets.imagenet import ImageFolderList
from byol_bench.datasets.images import load_label_map
from byol_bench.datasets.inat18 import INat18
from byol_bench.datasets.places205 import Places205
from byol_bench.datasets.voc_det import parse_voc_xml
from byol_bench.datasets.voc_seg import VOCAugSegmentation
from byol_bench.seeding import rng_for
from byol_bench.tinydata import MARKER, ensure_tiny_data, make_tiny_data
from byol_bench.tinydata import cityscapes as tiny_cityscapes
from byol_bench.tinydata import coco as tiny_coco
from byol_bench.tinydata import imagenet as tiny_imagenet
from byol_bench.tinydata import inat18 as tiny_inat18
from byol_bench.tinydata.draw import (
    SHAPES,
    ImageSizes,
    Placement,
    Style,
    draw_object,
    make_styles,
    mask_box,
    rasterize,
    save_jpeg,
)

# pycocotools 2.0.x calls np.array(copy=False) internally under numpy 2; harmless, and not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def root(tiny_data: Path) -> Path:
    # The session's one generation (tests/conftest.py); tests that corrupt files work on copies.
    return tiny_data


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_and_independent_of_workers(root: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_tiny_data(again, seed=0, workers=1)
    first, second = _digests(root), _digests(again)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_other_seed_gives_other_data(root: Path, tmp_path: Path) -> None:
    make_tiny_data(tmp_path, seed=1, only=["cityscapes"])
    a = (root / "cityscapes" / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000019_gtFine_labelIds.png")
    b = tmp_path / a.relative_to(root)
    assert a.read_bytes() != b.read_bytes()


def test_size_budget_and_marker(root: Path) -> None:
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 50e6
    marker = json.loads((root / MARKER).read_text())
    assert marker["seed"] == 0 and marker["sizes"] == "tiny"
    assert set(marker["counts"]) == {"imagenet", "voc2007", "voc2012", "inat18", "places205", "coco", "cityscapes"}
    assert marker["counts"]["imagenet"] == {"train": 1100, "val": 250}


def test_marker_guards_and_reuse(tmp_path: Path) -> None:
    foreign = tmp_path / "real_data"
    foreign.mkdir()
    (foreign / "something").write_text("x")
    with pytest.raises(ValueError, match=r"refusing to write tiny data into a non-empty folder"):
        make_tiny_data(foreign)
    with pytest.raises(ValueError, match=r"unknown tiny dataset.*valid names: voc2007, imagenet"):
        make_tiny_data(tmp_path / "new", only=["mnist"])
    out = ensure_tiny_data(tmp_path / "cache", only=["cityscapes"])
    label = next((out / "cityscapes").rglob("*_labelIds.png"))
    stamp = label.stat().st_mtime_ns
    ensure_tiny_data(out, only=["cityscapes"])  # already there: nothing is rewritten
    assert label.stat().st_mtime_ns == stamp
    ensure_tiny_data(out, seed=3, only=["cityscapes"])  # another seed: regenerated
    assert json.loads((out / MARKER).read_text())["seed"] == 3


def _features(dataset: object) -> tuple[np.ndarray, np.ndarray]:
    """8x8 downsampled RGB pixels + per-channel 8-bin histograms: a deliberately weak representation."""
    xs, ys = [], []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        image, label = dataset[i]  # type: ignore[index]
        small = np.asarray(image.resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float32).ravel() / 255
        pixels = np.asarray(image)
        hist = np.concatenate([np.histogram(pixels[..., c], bins=8, range=(0, 256))[0] for c in range(3)])
        xs.append(np.concatenate([small, hist / pixels[..., 0].size]))
        ys.append(label)
    return np.array(xs), np.array(ys)


@pytest.mark.parametrize("name", ["imagenet", "inat18", "places205"])
def test_a_simple_model_clearly_beats_chance(root: Path, name: str) -> None:
    make = {
        "imagenet": lambda split: ImageFolderList(root / "imagenet", split),
        "inat18": lambda split: INat18(root / "inat18", split),
        "places205": lambda split: Places205(root / "places205", split, num_classes=None),
    }[name]
    x_train, y_train = _features(make("train"))
    x_val, y_val = _features(make("val"))
    clf = make_pipeline(StandardScaler(), RidgeClassifier(alpha=100.0)).fit(x_train, y_train)
    accuracy = float((clf.predict(x_val) == y_val).mean())
    chance = 1 / len(np.unique(y_train))
    assert accuracy > 3 * chance, f"{name}: {accuracy:.2f} vs chance {chance:.2f}"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_painted_pixels_are_exactly_the_mask_and_polygon(shape: str) -> None:
    rng = rng_for(0, "test", shape)
    canvas = np.full((60, 80, 3), -1.0, dtype=np.float32)  # outside [0, 1]: every painted pixel changes
    style = Style(shape, "checker", 0.3, 0.7, 3.0)
    drawn = draw_object(canvas, style, Placement(75.0, 30.0, 22.0, 0.3, 1.1), rng)  # crosses the right edge
    changed = (canvas != -1.0).any(axis=2)
    np.testing.assert_array_equal(changed, drawn.mask)
    np.testing.assert_array_equal(rasterize([drawn.polygon], 60, 80), drawn.mask)
    assert drawn.truncated and drawn.polygon[:, 0].max() <= 80
    x0, y0, x1, y1 = mask_box(drawn.mask)
    rows, cols = np.nonzero(drawn.mask)
    assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max(), rows.max())


def test_styles_are_distinct() -> None:
    styles = make_styles(20)
    assert len({(s.shape, s.texture) for s in styles}) == 20


def test_coco_files_hold_exactly_what_was_drawn(root: Path, tmp_path: Path) -> None:
    doc = json.loads((root / "coco" / "annotations" / "instances_val2017.json").read_text())
    profile = tiny_coco.PROFILES["tiny"]
    styles = make_styles(len(profile.categories), hue_offset=0.3)
    by_image: dict[int, list[dict]] = {}
    for ann in doc["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for info in doc["images"][:12]:
        rgb, anns = tiny_coco.draw_image(profile, styles, rng_for(0, "coco", info["id"]))
        stored = [{k: v for k, v in a.items() if k not in ("id", "image_id")} for a in by_image.get(info["id"], [])]
        assert stored == anns
        redrawn = tmp_path / "redrawn.jpg"
        save_jpeg(redrawn, rgb)
        assert redrawn.read_bytes() == (root / "coco" / "val2017" / info["file_name"]).read_bytes()
    crowds = [a for a in doc["annotations"] if a["iscrowd"]]
    assert crowds and all(isinstance(a["segmentation"]["counts"], list) for a in crowds)
    for a in crowds:
        h, w = a["segmentation"]["size"]
        decoded = mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], h, w))
        assert tiny_coco.uncompressed_rle(decoded.astype(bool)) == a["segmentation"]


def test_cityscapes_files_hold_exactly_what_was_drawn(root: Path) -> None:
    gt = root / "cityscapes" / "gtFine" / "train" / "aachen"
    profile = tiny_cityscapes.PROFILES["tiny"]
    for seq in range(3):
        ids = tiny_cityscapes.draw_label_map(rng_for(0, "cityscapes", "aachen", seq), profile.width, profile.height)
        stem = f"aachen_{seq:06d}_000019_gtFine"
        np.testing.assert_array_equal(load_label_map(gt / f"{stem}_labelIds.png"), ids)
        np.testing.assert_array_equal(load_label_map(gt / f"{stem}_labelTrainIds.png"), ID_TO_TRAIN_ID[ids])
        assert {1, 3}.issubset(set(np.unique(ids).tolist()))  # void ids present: the mapping is exercised


def test_voc_boxes_are_tight_and_flags_consistent(root: Path) -> None:
    voc12 = root / "VOCdevkit" / "VOC2012"
    for _, label_path in VOCAugSegmentation(voc12, "train").samples:
        target = load_label_map(label_path)
        ann = parse_voc_xml(voc12 / "Annotations" / f"{label_path.stem}.xml")
        for box, label, difficult in zip(ann.boxes.astype(int), ann.labels, ann.difficult, strict=True):
            x0, y0, x1, y1 = box
            crop = target[y0:y1, x0:x1]
            assert (crop == (255 if difficult else label + 1)).any()
            # Tight box: the object's pixels (its own class, or void where they are border) reach all 4 edges.
            rows, cols = np.nonzero((crop == label + 1) | (crop == 255))
            assert (rows.min(), cols.min(), rows.max(), cols.max()) == (0, 0, crop.shape[0] - 1, crop.shape[1] - 1)
    voc07 = root / "VOCdevkit" / "VOC2007" / "Annotations"
    n_truncated = 0
    for xml in sorted(voc07.glob("*.xml")):
        ann = parse_voc_xml(xml)
        for box, truncated in zip(ann.boxes, ann.truncated, strict=True):
            if truncated:  # a truncated object reaches the image border
                n_truncated += 1
                assert box[0] == 0 or box[1] == 0 or box[2] == ann.width or box[3] == ann.height
    assert n_truncated >= 20


# ---------------------------------------------------------------- the real-size profile (full presets, tiny=False)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_tiny_data.py"


@pytest.fixture(scope="module")
def real_places(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The cheapest real-size family (about a second): 205 classes, 96 images of 256x256.
    return ensure_tiny_data(tmp_path_factory.mktemp("real") / "data", only=["places205"], sizes="real")


def test_real_size_places205_is_what_the_full_presets_read(real_places: Path) -> None:
    for split, count in (("train", 64), ("val", 32)):
        opened = open_split("places205", real_places, split, tiny=False)
        labels = [label for _, label in opened.dataset.samples]
        assert opened.num_classes == 205 and len(labels) == count
        assert (min(labels), max(labels)) == (0, 204)  # spread over the real label range
        assert {Image.open(opened.dataset.image_dir / path).size for path, _ in opened.dataset.samples} == {(256, 256)}


def test_real_size_cli_marker_and_profile_switch(real_places: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    monkeypatch.setattr(sys, "argv", ["make_tiny_data.py", "--out", str(out), "--only", "places205", "--real-size",
                                      "--workers", "1"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    marker = json.loads((out / MARKER).read_text())
    assert marker["sizes"] == "real" and marker["counts"] == {"places205": {"train": 64, "val": 32}}
    assert _digests(out) == _digests(real_places)  # deterministic, as the tiny profile
    csv = out / "places205" / "trainvalsplit_places205" / "train_places205.csv"
    stamp = csv.stat().st_mtime_ns
    ensure_tiny_data(out, only=["places205"], sizes="real")  # made so already: nothing is rewritten
    assert csv.stat().st_mtime_ns == stamp
    ensure_tiny_data(out, only=["cityscapes"])  # the tiny profile: every real-size family left is stale
    marker = json.loads((out / MARKER).read_text())
    assert marker["sizes"] == "tiny" and set(marker["counts"]) == {"cityscapes"} and not (out / "places205").exists()
    with pytest.raises(ValueError, match=r"unknown size profile 'huge'; valid: tiny, real"):
        make_tiny_data(out, sizes="huge")  # type: ignore[arg-type]
    foreign = tmp_path / "real_data"
    foreign.mkdir()
    (foreign / "something").write_text("x")
    with pytest.raises(ValueError, match=r"refusing to write tiny data into a non-empty folder"):
        make_tiny_data(foreign, only=["places205"], sizes="real")


def test_real_size_inat18_lists_every_category(tiny_data: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # The class list does not depend on how many categories get images; 2 instead of 32 keep this test cheap.
    cheap = dataclasses.replace(tiny_inat18.PROFILES["real"], with_images=2)
    monkeypatch.setitem(tiny_inat18.PROFILES, "real", cheap)
    make_tiny_data(tmp_path, only=["inat18"], sizes="real", workers=1)
    for split in ("train", "val"):
        opened = open_split("inat18", tmp_path, split, tiny=False)
        assert opened.num_classes == 8142 and sorted({label for _, label in opened.dataset.samples}) == [0, 8141]
        sizes = [Image.open(opened.dataset.image_dir / path).size for path, _ in opened.dataset.samples]
        assert {max(size) for size in sizes} == {800} and min(min(size) for size in sizes) >= 533
    with pytest.raises(DatasetError, match=r"inat18 has 12 classes here, expected 8142"):
        open_split("inat18", tiny_data, "val", tiny=False)  # what the real-size profile is for


def test_real_size_class_lists_and_sizes() -> None:
    real = tiny_imagenet.PROFILES["real"]
    assert len(set(real.wnids)) == 1000 and list(real.wnids) == sorted(real.wnids)
    assert real.wnids[:10] == tiny_imagenet.WNIDS and all(re.fullmatch(r"n\d{8}", w) for w in real.wnids)
    # 2 train images per class: the class-balanced 1 % and 10 % subsets take 1 per class.
    assert (real.train_per_class, real.val_per_class) == (2, 1)
    ids = [cid for cid, _, _ in tiny_coco.PROFILES["real"].categories]
    assert len(ids) == 80 and ids == sorted(ids)
    assert sorted(set(range(1, 91)) - set(ids)) == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    drawn = [ImageSizes((500, 500), (333, 500), portrait=0.25).draw(rng_for(0, "test", i)) for i in range(200)]
    assert {max(size) for size in drawn} == {500} and min(min(size) for size in drawn) >= 333
    assert 25 < sum(h > w for w, h in drawn) < 75  # both orientations
