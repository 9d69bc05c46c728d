"""The preflight data check (byol_bench.preflight): clean tiny splits pass; a missing file, a garbage image, a label
map of the wrong size or mode, an annotation disagreeing with its image stop the run with one DatasetError line naming
the file, before any training step.

Bad data is made in a data root of symlinks to the session's tiny data (``_linked``; docs/DATASETS.md: symlinks work
everywhere). Breaking a file replaces its link (``_own``), so the shared data is never written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset

from byol_bench import dist, preflight
from byol_bench.classification import open_split
from byol_bench.datasets import DatasetError, FileCheck
from byol_bench.datasets.cityscapes import Cityscapes
from byol_bench.datasets.coco import COCODetection
from byol_bench.datasets.imagenet import ImageFolderList
from byol_bench.datasets.images import load_image
from byol_bench.datasets.voc_cls import VOCClassification
from byol_bench.datasets.voc_det import VOCDetection
from byol_bench.datasets.voc_seg import VOCAugSegmentation

# pycocotools 2.0.x calls np.array(copy=False) internally under numpy 2; harmless, and not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

Splits = dict[str, Dataset]


# ---------------------------------------------------------------- the splits of every format, as the runners open them

def _imagenet_lists(root: Path) -> Splits:
    return {split: open_split("imagenet", root, split, tiny=True).dataset for split in ("train", "val")}


def _imagenet_folders(root: Path) -> Splits:
    return {split: ImageFolderList(root / "imagenet", split) for split in ("train", "val")}


def _inat18(root: Path) -> Splits:
    return {split: open_split("inat18", root, split, tiny=True).dataset for split in ("train", "val")}


def _places205(root: Path) -> Splits:
    return {split: open_split("places205", root, split, tiny=True).dataset for split in ("train", "val")}


def _voc07_cls(root: Path) -> Splits:
    return {split: VOCClassification(root / "VOCdevkit", split) for split in ("trainval", "test")}


def _voc_det(root: Path) -> Splits:
    devkit = root / "VOCdevkit"
    train = [VOCDetection(devkit, year, "trainval") for year in ("2007", "2012")]
    return {"train": ConcatDataset(train), "test": VOCDetection(devkit, "2007", "test", filter_empty=False)}


def _voc_seg(root: Path) -> Splits:
    return {split: VOCAugSegmentation(root / "VOCdevkit", split) for split in ("trainaug", "val")}


def _cityscapes(root: Path) -> Splits:
    return {split: Cityscapes(root / "cityscapes", split) for split in ("train", "val")}


def _coco(root: Path) -> Splits:
    return {split: COCODetection(root / "coco", split, filter_empty=split == "train") for split in ("train", "val")}


FORMATS: dict[str, Callable[[Path], Splits]] = {
    "imagenet_lists": _imagenet_lists, "imagenet_folders": _imagenet_folders, "inat18": _inat18,
    "places205": _places205, "voc07_cls": _voc07_cls, "voc_det": _voc_det, "voc_seg": _voc_seg,
    "cityscapes": _cityscapes, "coco": _coco,
}


def _linked(tiny: Path, tmp_path: Path) -> Path:
    """A data root in ``tmp_path`` whose entries are symlinks to the tiny data's."""
    for entry in tiny.iterdir():
        (tmp_path / entry.name).symlink_to(entry)
    return tmp_path


def _own(root: Path, path: Path) -> Path:
    """Turns the linked folders between ``root`` (from :func:`_linked`) and ``path`` into real ones (of links) and
    removes ``path``'s link, so that writing ``path`` leaves the tiny data as it is; returns ``path``."""
    folder = root
    for part in path.relative_to(root).parts[:-1]:
        folder = folder / part
        if folder.is_symlink():
            target = folder.resolve()
            folder.unlink()
            folder.mkdir()
            for entry in target.iterdir():
                (folder / entry.name).symlink_to(entry)
    path.unlink()
    return path


def _replace(root: Path, path: Path, data: bytes) -> None:
    _own(root, path).write_bytes(data)


def _replace_image(root: Path, path: Path, image: Image.Image) -> None:
    image.save(_own(root, path), format="PNG")


def _last_val_item(splits: Splits) -> FileCheck:
    """The last item checked: every other file of the splits has passed when a problem there is found."""
    last = list(splits.values())[-1]
    return last.preflight_item(len(last) - 1)


def _fails(splits: Splits, *names: Path | str) -> str:
    """Runs the check, expecting a DatasetError whose single line names every one of ``names``; returns it."""
    with pytest.raises(DatasetError) as caught:
        preflight.check(splits, True, "test")
    message = str(caught.value)
    assert "\n" not in message
    for name in names:
        assert str(name) in message, message
    return message


# ---------------------------------------------------------------- clean data passes

@pytest.mark.parametrize("name", FORMATS)
def test_clean_splits_pass(tiny_data: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    splits = FORMATS[name](tiny_data)
    per_item = 2 if name in ("voc_seg", "cityscapes") else 1  # image + label map
    files = sum(len(split) for split in splits.values()) * per_item  # type: ignore[arg-type]
    out = preflight.check(splits, True, name)
    assert out["files"] == files and out["splits"] == list(splits) and out["skipped"] is False
    assert re.fullmatch(rf"{name}: preflight checked {files} files of 2 splits in \d+\.\d s\n", capsys.readouterr().out)


def test_disabled_check_reads_nothing_and_says_so(tiny_data: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    val = ImageFolderList(tiny_data / "imagenet", "val", list_file="meta/val.txt")
    val.image_dir = tmp_path / "gone"  # none of its files exists
    out = preflight.check({"val": val}, False, "linear_mhead")
    assert out == {"files": 0, "splits": ["val"], "seconds": 0.0, "skipped": True}
    assert capsys.readouterr().out == "linear_mhead: preflight skipped (preflight=false)\n"
    _fails({"val": val}, tmp_path / "gone")


# ---------------------------------------------------------------- one bad file: one line naming it and the fix

@pytest.mark.parametrize("name", FORMATS)
def test_garbage_image_is_named(tiny_data: Path, tmp_path: Path, name: str) -> None:
    root = _linked(tiny_data, tmp_path)
    splits = FORMATS[name](root)  # no loader reads an image's bytes when it is built
    victim = _last_val_item(splits).image
    _replace(root, victim, b"\x13\x37garbage")
    message = _fails(splits, victim)
    assert message.startswith(f"{victim}: image is corrupt or not an image (no image format recognised); replace it")


def test_missing_listed_image_is_named_with_its_list(tiny_data: Path, tmp_path: Path) -> None:
    root = _linked(tiny_data, tmp_path)
    splits = _places205(root)  # the lists are read when the loader is built, the files they name only when read
    victim = _own(root, _last_val_item(splits).image)
    listed_in = root / "places205" / "trainvalsplit_places205" / "val_places205.csv"
    _fails(splits, f"{victim}: image not found (listed in {listed_in}); restore it or remove it from that list")


def test_missing_voc07_jpeg_is_named_with_its_image_set(tiny_data: Path, tmp_path: Path) -> None:
    root = _linked(tiny_data, tmp_path)
    splits = _voc07_cls(root)
    victim = _own(root, _last_val_item(splits).image)
    _fails(splits, victim, root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt")


@pytest.mark.parametrize("name", ["voc_seg", "cityscapes"])
def test_label_map_of_another_size_is_named(tiny_data: Path, tmp_path: Path, name: str) -> None:
    root = _linked(tiny_data, tmp_path)
    splits = FORMATS[name](root)
    item = _last_val_item(splits)
    with Image.open(item.label_map) as label:
        w, h = label.size
        _replace_image(root, item.label_map, label.resize((w + 8, h)))
    _fails(splits, f"{item.label_map}: label map is {w + 8}x{h} but {item.image} is {w}x{h}")


def test_colour_rendered_label_map_is_named(tiny_data: Path, tmp_path: Path) -> None:
    root = _linked(tiny_data, tmp_path)
    splits = _voc_seg(root)
    item = _last_val_item(splits)
    with Image.open(item.label_map) as label:
        _replace_image(root, item.label_map, label.convert("RGB"))
    _fails(splits, f"{item.label_map}: label map has mode RGB, the loader reads P or L")


def test_voc_xml_size_disagreeing_with_the_image_is_named(tiny_data: Path, tmp_path: Path) -> None:
    root = _linked(tiny_data, tmp_path)
    voc07 = root / "VOCdevkit" / "VOC2007"
    image_id = (voc07 / "ImageSets" / "Main" / "test.txt").read_text().split()[-1]
    image, xml = voc07 / "JPEGImages" / f"{image_id}.jpg", voc07 / "Annotations" / f"{image_id}.xml"
    with Image.open(image) as img:
        w, h = img.size
    _replace(root, xml, xml.read_text().replace(f"<width>{w}</width>", f"<width>{w + 10}</width>").encode())
    test = VOCDetection(voc07, "2007", "test", filter_empty=False)  # the XML parses: boxes lie inside the wider size
    _fails({"test": test}, f"{image}: image is {w}x{h} but {xml} says {w + 10}x{h}; replace the image")


def _edit_coco_val(root: Path, edit: Callable[[dict], None]) -> Path:
    ann_file = root / "coco" / "annotations" / "instances_val2017.json"
    doc = json.loads(ann_file.read_text())
    edit(doc)
    _replace(root, ann_file, json.dumps(doc).encode())
    return ann_file


def test_coco_size_disagreeing_with_the_image_is_named(tiny_data: Path, tmp_path: Path) -> None:
    root = _linked(tiny_data, tmp_path)
    ann_file = _edit_coco_val(root, lambda doc: doc["images"][-1].update(height=doc["images"][-1]["height"] + 1))
    info = json.loads(ann_file.read_text())["images"][-1]
    w, h = info["width"], info["height"]
    _fails(_coco(root), f"{root / 'coco' / 'val2017' / info['file_name']}: image is {w}x{h - 1} but {ann_file} says "
                        f"{w}x{h}")


def test_coco_annotation_of_an_unknown_image_is_named(tiny_data: Path, tmp_path: Path) -> None:
    # The loader refuses it when built, before a runner can call preflight.check; the check does not repeat it.
    root = _linked(tiny_data, tmp_path)
    ann_file = _edit_coco_val(root, lambda doc: doc["annotations"][-1].update(image_id=987654))
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(ann_file))}: annotation \d+ names unknown image_id 98"):
        preflight.check(_coco(root), True, "det_coco")


# ---------------------------------------------------------------- what is checked: the items the run reads, its share

def test_subsets_and_concatenations_check_the_items_the_run_reads(tiny_data: Path, tmp_path: Path) -> None:
    root = _linked(tiny_data, tmp_path)
    splits = _cityscapes(root)
    both = ConcatDataset([splits["train"], splits["val"]])
    first = len(splits["train"])  # type: ignore[arg-type]
    victim = splits["val"].preflight_item(3).image  # type: ignore[attr-defined]
    _replace(root, victim, b"garbage")
    # a cut that leaves it out passes (image + label map per item); one that reads it, or the whole, fails
    assert preflight.check({"x": Subset(both, [*range(first + 3), first + 4])}, True, "x")["files"] == 2 * (first + 4)
    _fails({"x": Subset(both, [0, first + 3])}, victim)
    _fails({"x": both}, victim)


def test_each_process_checks_every_world_size_th_file(tiny_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = _linked(tiny_data, tmp_path)
    splits = _cityscapes(root)
    victim = splits["val"].preflight_item(0).image  # type: ignore[attr-defined]
    _replace(root, victim, b"garbage")
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    assert preflight.check(splits, True, "segmentation")["files"] == 56  # all processes together
    assert capsys.readouterr().out == ""  # rank 0 prints the line
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    _fails(splits, victim)


def test_truncated_jpeg_passes_the_header_check_and_fails_when_decoded(tiny_data: Path, tmp_path: Path) -> None:
    """The documented limit: a JPEG cut in mid-scan has an intact header; the loader's full decode catches it."""
    root = _linked(tiny_data, tmp_path)
    splits = _coco(root)
    victim = _last_val_item(splits).image
    _replace(root, victim, victim.read_bytes()[: victim.stat().st_size // 2])
    preflight.check(splits, True, "det_coco")
    with pytest.raises(DatasetError, match=rf"{re.escape(str(victim))}: corrupt or truncated image"):
        load_image(victim)


def test_a_dataset_without_preflight_items_is_refused() -> None:
    with pytest.raises(TypeError, match=r"ndarray has no preflight_item\(\)"):
        preflight.check({"train": np.zeros(3)}, True, "x")  # type: ignore[dict-item]
