"""Loaders read the generated tiny data back exactly, and fail loudly (file named) on bad data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from byol_bench.datasets import DatasetError
from byol_bench.datasets.cityscapes import ID_TO_TRAIN_ID, TRAIN_CLASSES, Cityscapes, label_ids_to_train_ids
from byol_bench.datasets.coco import COCODetection, load_coco_json
from byol_bench.datasets.imagenet import ImageFolderList, read_image_list
from byol_bench.datasets.images import load_image, load_label_map
from byol_bench.datasets.inat18 import INat18
from byol_bench.datasets.places205 import Places205
from byol_bench.datasets.voc import VOC_CLASSES
from byol_bench.datasets.voc_cls import VOCClassification, load_voc07_cls_labels
from byol_bench.datasets.voc_det import VOCDetection, parse_voc_xml
from byol_bench.datasets.voc_seg import VOCAugSegmentation
from byol_bench.tinydata import imagenet as tiny_imagenet

# pycocotools 2.0.x calls np.array(copy=False) internally under numpy 2; harmless, and not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

@pytest.fixture(scope="module")
def root(tiny_data: Path) -> Path:
    # The session's one generation (tests/conftest.py); tests that corrupt files work on copies.
    return tiny_data


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------------------------
# ImageNet
# ------------------------------------------------------------------------------------------------------------

def test_imagenet_folder_and_list_forms_agree(root: Path) -> None:
    for split, per_class in (("train", tiny_imagenet.TRAIN_PER_CLASS), ("val", tiny_imagenet.VAL_PER_CLASS)):
        folder = ImageFolderList(root / "imagenet", split)
        listed = ImageFolderList(root / "imagenet", split, list_file=f"meta/{split}.txt", verify_files=True)
        assert folder.classes == listed.classes == sorted(tiny_imagenet.WNIDS)
        assert sorted(folder.samples) == sorted(listed.samples)
        assert np.bincount(folder.targets).tolist() == [per_class] * len(tiny_imagenet.WNIDS)
        for path, label in folder.samples[:: 97]:
            assert path.split("/")[0] == folder.classes[label]
    image, label = ImageFolderList(root / "imagenet", "val")[3]
    assert image.mode == "RGB" and min(image.size) >= tiny_imagenet.SIZE_RANGE[0] and label == 0
    # JPEG draft decoding: libjpeg scales by 1/2 here (64-96 px -> 32-48 px), never below min_size.
    small, _ = ImageFolderList(root / "imagenet", "val", min_size=30)[3]
    assert small.mode == "RGB" and min(small.size) >= 30 and small.size[0] <= (image.size[0] + 1) // 2


def test_imagenet_transform_and_tensor_decoding(root: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    pil = ImageFolderList(root / "imagenet", "val", transform=lambda im: np.asarray(im))
    tensors = ImageFolderList(root / "imagenet", "val", image_format="tensor")
    a, label_a = pil[5]
    b, label_b = tensors[5]
    assert label_a == label_b and b.dtype == torch.uint8 and b.shape == (3, *a.shape[:2])
    # Both decoders are libjpeg; allow a tiny difference from IDCT/upsampling implementation details.
    assert np.abs(b.permute(1, 2, 0).numpy().astype(int) - a.astype(int)).mean() < 2.0


def test_imagenet_bad_inputs(root: Path, tmp_path: Path) -> None:
    inet = _copy(root / "imagenet", tmp_path / "imagenet")
    with pytest.raises(DatasetError, match=r"nope.txt: list file not found"):
        ImageFolderList(inet, "train", list_file="meta/nope.txt")

    bad_list = inet / "meta" / "bad.txt"
    bad_list.write_text("n01440764/n01440764_1.JPEG 0\nn01443537/n01443537_1.JPEG 10\n")
    with pytest.raises(DatasetError, match=r"bad.txt:2: label 10 out of range \[0, 10\)"):
        ImageFolderList(inet, "train", list_file=bad_list)
    bad_list.write_text("n01440764/n01440764_1.JPEG zero\n")
    with pytest.raises(DatasetError, match=r"bad.txt:1: label 'zero' is not an integer"):
        ImageFolderList(inet, "train", list_file=bad_list)
    bad_list.write_text("n01440764/n01440764_1.JPEG 3\n")
    with pytest.raises(DatasetError, match=r"has label 3, but its folder n01440764 is class 0"):
        ImageFolderList(inet, "train", list_file=bad_list)

    bad_list.write_text("n01440764/n01440764_1.JPEG 0\nn01440764/missing.JPEG 0\n")
    with pytest.raises(DatasetError, match=r"1 listed images do not exist .*missing.JPEG"):
        ImageFolderList(inet, "train", list_file=bad_list, verify_files=True)
    lazy = ImageFolderList(inet, "train", list_file=bad_list)
    with pytest.raises(DatasetError, match=r"bad.txt: names n01440764/missing.JPEG, which does not exist"):
        lazy[1]

    victim = inet / "train" / "n01440764" / "n01440764_1.JPEG"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"n01440764_1.JPEG: corrupt or truncated image"):
        ImageFolderList(inet, "train")[0]
    victim.write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match=r"n01440764_1.JPEG: corrupt or truncated image"):
        load_image(victim)

    shutil.rmtree(inet / "val" / "n01518878")
    with pytest.raises(DatasetError, match=r"class folders differ .*missing \['n01518878'\]"):
        ImageFolderList(inet, "val")
    shutil.rmtree(inet / "val")
    with pytest.raises(DatasetError, match=r"val: folder not found"):
        ImageFolderList(inet, "val")


def test_truncated_jpeg_is_caught_by_tensor_decoder(root: Path, tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    src = next((root / "imagenet" / "val" / "n01440764").iterdir())
    cut = tmp_path / "cut.JPEG"
    cut.write_bytes(src.read_bytes()[:-400])
    with pytest.raises(DatasetError, match=r"cut.JPEG: corrupt or truncated image"):
        load_image(cut, "tensor")
    with pytest.raises(DatasetError, match=r"cut.JPEG: corrupt or truncated image"):
        load_image(cut, "pil")


def test_read_image_list_rejects_malformed_lines(tmp_path: Path) -> None:
    lst = tmp_path / "l.txt"
    lst.write_text("a/b.jpg 1\n\nonlypath\n")
    with pytest.raises(DatasetError, match=r"l.txt:3: expected 'relative/path label'"):
        read_image_list(lst)
    lst.write_text("a/b c.jpg 1\n")  # spaces inside a path: split at the last whitespace, as mmselfsup does
    assert read_image_list(lst) == [("a/b c.jpg", 1)]
    lst.write_text("\n")
    with pytest.raises(DatasetError, match=r"l.txt: list is empty"):
        read_image_list(lst)


# ------------------------------------------------------------------------------------------------------------
# VOC
# ------------------------------------------------------------------------------------------------------------

def _labels_from_xml(voc: Path, image_ids: list[str]) -> np.ndarray:
    """B §2.1 labels recomputed from the XML: 1 non-difficult instance, -1 difficult only, 0 absent."""
    out = np.zeros((len(image_ids), len(VOC_CLASSES)), dtype=np.int32)
    for row, image_id in enumerate(image_ids):
        ann = parse_voc_xml(voc / "Annotations" / f"{image_id}.xml")
        for label, difficult in zip(ann.labels, ann.difficult, strict=True):
            if not difficult:
                out[row, label] = 1
            elif out[row, label] == 0:
                out[row, label] = -1
    return out


@pytest.mark.parametrize("split", ["trainval", "test"])
def test_voc07_cls_labels_follow_b21_and_the_xml(root: Path, split: str) -> None:
    ids, labels, names = load_voc07_cls_labels(root / "VOCdevkit" / "VOC2007", split)
    assert names == sorted(VOC_CLASSES) == list(VOC_CLASSES)
    assert ids == sorted(ids) and len(ids) == 250 and labels.shape == (250, 20) and labels.dtype == np.int32
    listed = (root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    assert ids == listed
    np.testing.assert_array_equal(labels, _labels_from_xml(root / "VOCdevkit" / "VOC2007", ids))
    # What the SVM protocol needs: every class has positives and difficult-only images in both splits.
    assert (labels == 1).sum(axis=0).min() >= 8
    assert (labels == -1).sum(axis=0).min() >= 2
    # VOCdevkit parent works too, and the image dataset serves the same rows.
    ds = VOCClassification(root / "VOCdevkit", split)
    image, row = ds[7]
    assert image.mode == "RGB" and ds.image_ids == ids
    np.testing.assert_array_equal(row, labels[7])


def test_voc07_cls_bad_inputs(root: Path, tmp_path: Path) -> None:
    voc = _copy(root / "VOCdevkit" / "VOC2007", tmp_path / "VOC2007")
    main = voc / "ImageSets" / "Main"
    cat = main / "cat_test.txt"
    lines = cat.read_text().splitlines()
    cat.write_text("\n".join([lines[0].split()[0] + "  2", *lines[1:]]) + "\n")
    with pytest.raises(DatasetError, match=r"cat_test.txt:1: expected '<image id> <1\|-1\|0>'"):
        load_voc07_cls_labels(voc, "test")
    cat.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DatasetError, match=r"cat_test.txt: image ids differ from .*test.txt"):
        load_voc07_cls_labels(voc, "test")
    cat.unlink()
    with pytest.raises(DatasetError, match=r"cat_test.txt: class list not found"):
        load_voc07_cls_labels(voc, "test")
    with pytest.raises(DatasetError, match=r"not a VOC2007 devkit folder"):
        load_voc07_cls_labels(tmp_path / "nowhere", "test")


def test_voc_detection_reads_xml_boxes_and_flags(root: Path) -> None:
    voc07 = root / "VOCdevkit" / "VOC2007"
    ds = VOCDetection(voc07, "2007", "trainval")
    assert len(ds) == 250 and ds.num_skipped_empty == 0
    n_difficult = n_truncated = 0
    for i in range(len(ds)):
        ann = ds.annotations[i]
        assert len(ann.labels) >= 1
        assert (ann.boxes[:, 0] >= 0).all() and (ann.boxes[:, 2] <= ann.width).all()
        assert (ann.boxes[:, 2] > ann.boxes[:, 0]).all() and (ann.boxes[:, 3] > ann.boxes[:, 1]).all()
        n_difficult += int(ann.difficult.sum())
        n_truncated += int(ann.truncated.sum())
    assert n_difficult >= 60 and n_truncated >= 10
    image, ann = ds[0]
    assert image.size == (ann.width, ann.height)
    voc12 = VOCDetection(root / "VOCdevkit", "2012", "trainval")
    assert len(voc12) == 200


def test_voc_detection_bad_inputs(root: Path, tmp_path: Path) -> None:
    voc = _copy(root / "VOCdevkit" / "VOC2007", tmp_path / "VOC2007")
    first = (voc / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    xml = voc / "Annotations" / f"{first}.xml"
    text = xml.read_text()
    start, end = text.index("\t<object>"), text.rindex("</object>") + len("</object>\n")
    xml.write_text(text[:start] + text[end:])
    train = VOCDetection(voc, "2007", "test")
    assert train.num_skipped_empty == 1 and len(train) == 249
    evaluation = VOCDetection(voc, "2007", "test", filter_empty=False)
    assert evaluation.num_skipped_empty == 0 and len(evaluation.annotations[0].labels) == 0

    xml.write_text(text.replace("<name>", "<name>unicorn", 1))
    with pytest.raises(DatasetError, match=rf"{first}.xml: object 0 has unknown class 'unicorn"):
        VOCDetection(voc, "2007", "test")
    xml.write_text(text.replace("<xmax>", "<xmax>9", 1))
    with pytest.raises(DatasetError, match=rf"{first}.xml: object 0 .* is outside the"):
        VOCDetection(voc, "2007", "test")
    xml.write_text(text[:50])
    with pytest.raises(DatasetError, match=rf"{first}.xml: malformed XML"):
        VOCDetection(voc, "2007", "test")
    xml.unlink()
    with pytest.raises(DatasetError, match=rf"{first}.xml: annotation file not found"):
        VOCDetection(voc, "2007", "test")


def test_voc_aug_segmentation_masks_agree_with_boxes(root: Path) -> None:
    voc12 = root / "VOCdevkit" / "VOC2012"
    sizes = {split: len(VOCAugSegmentation(voc12, split)) for split in ("train", "val", "aug", "trainaug")}
    assert sizes == {"train": 50, "val": 30, "aug": 110, "trainaug": 160}
    train_ids = set((voc12 / "ImageSets" / "Segmentation" / "train.txt").read_text().split())
    val_ids = set((voc12 / "ImageSets" / "Segmentation" / "val.txt").read_text().split())
    aug_ids = set((voc12 / "ImageSets" / "Segmentation" / "aug.txt").read_text().split())
    assert train_ids <= aug_ids and not aug_ids & val_ids
    with Image.open(voc12 / "SegmentationClass" / f"{min(train_ids)}.png") as png:
        assert png.mode == "P"
    with Image.open(voc12 / "SegmentationClassAug" / f"{min(aug_ids)}.png") as png:
        assert png.mode == "L"
    ds = VOCAugSegmentation(voc12, "val")
    for image_path, label_path in ds.samples:
        target = load_label_map(label_path)
        ann = parse_voc_xml(voc12 / "Annotations" / f"{image_path.stem}.xml")
        assert set(np.unique(target)) <= set(range(21)) | {255}
        assert (target == 255).any()  # object borders
        for c in np.unique(target):
            if c in (0, 255):
                continue
            inside = np.zeros(target.shape, dtype=bool)
            for box, label in zip(ann.boxes.astype(int), ann.labels, strict=True):
                if label == c - 1:
                    inside[box[1]:box[3], box[0]:box[2]] = True
            assert inside[target == c].all(), f"{label_path}: class {c} pixels outside its boxes"
        for box, label, difficult in zip(ann.boxes.astype(int), ann.labels, ann.difficult, strict=True):
            crop = target[box[1]:box[3], box[0]:box[2]]
            assert (crop == (255 if difficult else label + 1)).any()


def test_voc_segmentation_bad_inputs(root: Path, tmp_path: Path) -> None:
    voc = _copy(root / "VOCdevkit" / "VOC2012", tmp_path / "VOC2012")
    first = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    png = voc / "SegmentationClass" / f"{first}.png"
    labels = load_label_map(png)
    labels[0, 0] = 42
    Image.fromarray(labels).save(png)
    with pytest.raises(DatasetError, match=rf"{first}.png: label value 42 out of range"):
        VOCAugSegmentation(voc, "val")[0]
    Image.fromarray(np.zeros((*labels.shape, 3), dtype=np.uint8)).save(png)
    with pytest.raises(DatasetError, match=rf"{first}.png: label map has mode RGB"):
        VOCAugSegmentation(voc, "val")[0]
    png.unlink()
    with pytest.raises(DatasetError, match=rf"val.txt: names {first}, but .*{first}.png does not exist"):
        VOCAugSegmentation(voc, "val")
    (voc / "ImageSets" / "Segmentation" / "aug.txt").unlink()
    with pytest.raises(DatasetError, match=r"aug.txt: image-set list not found"):
        VOCAugSegmentation(voc, "aug")


# ------------------------------------------------------------------------------------------------------------
# COCO
# ------------------------------------------------------------------------------------------------------------

def test_coco_pycocotools_loads_and_scores_perfect_predictions(root: Path) -> None:
    ann_file = root / "coco" / "annotations" / "instances_val2017.json"
    gt = COCO(str(ann_file))
    anns = gt.loadAnns(gt.getAnnIds())
    assert any(a["iscrowd"] for a in anns) and any(isinstance(a["segmentation"], list) for a in anns)
    assert sorted(gt.getCatIds()) == [1, 3, 16, 18, 44, 62, 72, 85]
    for a in anns:  # bbox and area are exactly the decoded mask's extent and pixel count
        mask = gt.annToMask(a)
        rle = mask_utils.encode(np.asfortranarray(mask))
        assert mask_utils.toBbox(rle).tolist() == a["bbox"] and int(mask.sum()) == a["area"]
    for iou_type in ("bbox", "segm"):
        dets = []
        for a in anns:
            if a["iscrowd"]:
                continue
            det = {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0}
            det["bbox" if iou_type == "bbox" else "segmentation"] = (
                a["bbox"] if iou_type == "bbox" else gt.annToRLE(a))
            dets.append(det)
        for det in dets:
            if "segmentation" in det:
                det["segmentation"]["counts"] = det["segmentation"]["counts"].decode()
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0)


def test_coco_dataset_targets(root: Path) -> None:
    ds = COCODetection(root / "coco", "train", with_masks=True)
    assert len(ds) == 120 and ds.category_ids == [1, 3, 16, 18, 44, 62, 72, 85]
    image, target = ds[0]
    assert target["masks"].shape == (len(target["labels"]), image.size[1], image.size[0])
    for box, mask in zip(target["boxes"], target["masks"], strict=True):
        ys, xs = np.nonzero(mask)
        np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_coco_bad_inputs(root: Path, tmp_path: Path) -> None:
    doc = json.loads((root / "coco" / "annotations" / "instances_val2017.json").read_text())
    path = tmp_path / "instances.json"
    broken = {k: v for k, v in doc.items() if k != "categories"}
    path.write_text(json.dumps(broken))
    with pytest.raises(DatasetError, match=r"instances.json: missing key 'categories'"):
        load_coco_json(path)
    broken = json.loads(json.dumps(doc))
    del broken["annotations"][3]["bbox"]
    path.write_text(json.dumps(broken))
    with pytest.raises(DatasetError, match=r"instances.json: annotations\[3\] lacks \['bbox'\]"):
        load_coco_json(path)
    broken = json.loads(json.dumps(doc))
    broken["annotations"][0]["category_id"] = 999
    path.write_text(json.dumps(broken))
    with pytest.raises(DatasetError, match=r"unknown category_id 999 .label out of range"):
        load_coco_json(path)
    path.write_text("{not json")
    with pytest.raises(DatasetError, match=r"instances.json: not valid JSON"):
        load_coco_json(path)


# ------------------------------------------------------------------------------------------------------------
# Cityscapes
# ------------------------------------------------------------------------------------------------------------

# The official table (cityscapesscripts/helpers/labels.py): label id -> trainId for the 19 evaluated classes.
OFFICIAL_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                      25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def test_cityscapes_mapping_matches_official_table() -> None:
    for label_id in range(256):
        assert ID_TO_TRAIN_ID[label_id] == OFFICIAL_TRAIN_IDS.get(label_id, 255)
    assert TRAIN_CLASSES == ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                             "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
                             "bus", "train", "motorcycle", "bicycle")
    with pytest.raises(DatasetError, match=r"x.png: label id 40 out of range"):
        label_ids_to_train_ids(np.array([[7, 40]], dtype=np.uint8), "x.png")


def test_cityscapes_reads_both_target_types(root: Path) -> None:
    mapped = Cityscapes(root / "cityscapes", "train")
    stored = Cityscapes(root / "cityscapes", "train", target_type="labelTrainIds")
    assert len(mapped) == 20 and len(Cityscapes(root / "cityscapes", "val")) == 8
    seen: set[int] = set()
    for i in range(len(mapped)):
        image, a = mapped[i]
        _, b = stored[i]
        np.testing.assert_array_equal(a, b)
        assert image.size == (a.shape[1], a.shape[0])
        seen |= set(np.unique(a).tolist())
    assert 255 in seen and len(seen - {255}) >= 12


def test_cityscapes_bad_inputs(root: Path, tmp_path: Path) -> None:
    cs = _copy(root / "cityscapes", tmp_path / "cityscapes")
    label = sorted((cs / "gtFine" / "val").glob("*/*_labelIds.png"))[0]
    ids = load_label_map(label)
    ids[0, 0] = 77
    Image.fromarray(ids).save(label)
    with pytest.raises(DatasetError, match=rf"{label.name}: label id 77 out of range"):
        Cityscapes(cs, "val")[0]
    label.unlink()
    with pytest.raises(DatasetError, match=rf"{label.name}: label file for .* not found"):
        Cityscapes(cs, "val")
    shutil.rmtree(cs / "gtFine")
    with pytest.raises(DatasetError, match=r"gtFine/train: folder not found"):
        Cityscapes(cs, "train")


# ------------------------------------------------------------------------------------------------------------
# iNat18 and Places205
# ------------------------------------------------------------------------------------------------------------

def test_inat18_reads_json(root: Path, tmp_path: Path) -> None:
    train, val = INat18(root / "inat18", "train"), INat18(root / "inat18", "val")
    assert len(train.classes) == 12 and len(val) == 12 * 12
    counts = np.bincount(train.targets)
    assert counts[0] == 80 and counts[-1] < counts[0] and len(train) == counts.sum()
    image, label = val[0]
    assert image.mode == "RGB" and label == 0

    doc = json.loads((root / "inat18" / "val2018.json").read_text())
    bad = tmp_path / "inat18"
    bad.mkdir()
    (bad / "val2018.json").write_text(json.dumps(doc))  # the JSON without the images
    with pytest.raises(DatasetError, match=r"val2018.json: names train_val2018/.*, which does not exist under"):
        INat18(bad, "val")[0]
    doc["annotations"][5]["category_id"] = 12
    (bad / "val2018.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"val2018.json: annotation for image .* unknown category_id 12"):
        INat18(bad, "val")
    del doc["images"]
    (bad / "val2018.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"val2018.json: missing key 'images'"):
        INat18(bad, "val")


def test_places205_reads_csv_lists(root: Path, tmp_path: Path) -> None:
    val = Places205(root / "places205", "val", num_classes=None)
    assert val.num_classes == 10 and len(val) == 150 and np.bincount(val.targets).tolist() == [15] * 10
    assert Places205(root / "places205", "val").num_classes == 205  # the real default
    image, _ = val[0]
    assert image.size[0] == image.size[1]
    places = _copy(root / "places205", tmp_path / "places205")
    csv = places / "trainvalsplit_places205" / "val_places205.csv"
    csv.write_text(csv.read_text() + "z/zoo/gsun_missing.jpg 3\n")
    ds = Places205(places, "val", num_classes=None)
    with pytest.raises(DatasetError, match=r"val_places205.csv: names z/zoo/gsun_missing.jpg, which does not"):
        ds[len(ds) - 1]
    csv.write_text("a/abbey/x.jpg 10\n")
    with pytest.raises(DatasetError, match=r"val_places205.csv:1: label 10 out of range \[0, 10\)"):
        Places205(places, "val", num_classes=None)
