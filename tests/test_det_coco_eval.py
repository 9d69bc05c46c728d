"""COCO evaluation from results files (benchmarks.detection.coco_eval) and the COCO training targets
(byol_bench.datasets.coco): ground truth as detections scores AP 100 through the results-file path, crowds are
ignored as COCO does, rejected results files and bad annotations are one-line errors, documented drops counted."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from benchmarks.detection.coco_eval import ResultsError, evaluate_files, to_coco_results, write_results
from byol_bench.datasets import DatasetError
from byol_bench.datasets.coco import COCODetection, load_coco_json

# pycocotools 2.0.x calls np.array(copy=False) internally under numpy 2; harmless, and not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _gt_as_predictions(ds: COCODetection, shift: float = 0.0) -> dict[int, dict[str, torch.Tensor]]:
    """Every annotation of ``ds`` (crowds included) as a torchvision detection with score 1 (boxes moved by
    ``shift`` pixels)."""
    preds = {}
    for i, image_id in enumerate(ds.image_ids):
        _, target = ds[i]
        preds[image_id] = {"boxes": torch.from_numpy(target["boxes"]) + shift,
                           "scores": torch.ones(len(target["labels"])),
                           "labels": torch.from_numpy(target["labels"]) + 1,
                           "masks": torch.from_numpy(target["masks"]).float()[:, None]}
    return preds


def _score(ds: COCODetection, preds: dict, out: Path) -> tuple[dict, dict]:
    bbox, segm = [], []
    for image_id, pred in preds.items():
        b, s = to_coco_results(image_id, pred, ds.category_ids)
        bbox += b
        segm += s
    # the standard plain files (the records loader reads JSON objects only: these lists never count as records)
    files = {"bbox": write_results(out / "bbox.json", bbox), "segm": write_results(out / "segm.json", segm)}
    return evaluate_files(ds.coco, files)


@pytest.fixture(scope="module")
def val(tiny_data: Path) -> COCODetection:
    return COCODetection(tiny_data / "coco", "val", with_masks=True, image_format="tensor")


@pytest.fixture(scope="module")
def gt_preds(val) -> dict[int, dict[str, torch.Tensor]]:
    return _gt_as_predictions(val)


def test_ground_truth_as_detections_scores_100_crowds_ignored(val, gt_preds, tmp_path):
    assert any(a["iscrowd"] for a in val.coco.anns.values())  # the crowds are detected too and must not count
    metrics, details = _score(val, gt_preds, tmp_path)
    assert set(metrics) == {f"{t}_{k}" for t in ("bbox", "segm") for k in ("AP", "AP50", "AP75")}
    assert metrics == pytest.approx(dict.fromkeys(metrics, 100.0))
    for iou_type in ("bbox", "segm"):
        assert {"APs", "APm", "APl"} <= set(details[iou_type])
        assert all(details[iou_type][k] in (100.0, -1.0) for k in ("APs", "APm", "APl"))  # -1: no GT of that size
    # the files are the standard ones: a segm entry is an RLE with text counts at the image's size
    first = json.loads((tmp_path / "segm.json").read_text())[0]
    info = val.coco.imgs[first["image_id"]]
    assert first["segmentation"]["size"] == [info["height"], info["width"]]
    assert isinstance(first["segmentation"]["counts"], str)
    bbox = json.loads((tmp_path / "bbox.json").read_text())
    assert {d["category_id"] for d in bbox} <= set(val.category_ids)
    # pycocotools opens them as they are (a file name, no decompression) and scores the same
    for iou_type in ("bbox", "segm"):
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval(val.coco, val.coco.loadRes(str(tmp_path / f"{iou_type}.json")), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        assert 100.0 * evaluator.stats[0] == pytest.approx(metrics[f"{iou_type}_AP"])


def test_gzip_results_of_earlier_runs_still_score(val, gt_preds, tmp_path):
    metrics, _ = _score(val, gt_preds, tmp_path)
    for iou_type in ("bbox", "segm"):
        packed = tmp_path / f"{iou_type}.json.gz"
        packed.write_bytes(gzip.compress((tmp_path / f"{iou_type}.json").read_bytes()))
        again, _ = evaluate_files(val.coco, {iou_type: packed})
        assert again == {k: v for k, v in metrics.items() if k.startswith(iou_type)}


def test_moved_boxes_lose_ap(val, tmp_path):
    # a 6 px shift on 10-40 px objects: still found at IoU 0.5 mostly, rarely at 0.75; masks untouched
    metrics, _ = _score(val, _gt_as_predictions(val, shift=6.0), tmp_path)
    assert metrics["bbox_AP75"] < metrics["bbox_AP50"] < 100.0 and metrics["bbox_AP"] < 60.0
    assert metrics["segm_AP"] == pytest.approx(100.0)


def test_no_detections_score_zero(val, tmp_path):
    files = {"bbox": write_results(tmp_path / "bbox.json", []), "segm": write_results(tmp_path / "segm.json", [])}
    metrics, details = evaluate_files(val.coco, files)
    assert metrics == dict.fromkeys(metrics, 0.0) and details["segm"]["num_detections"] == 0


@pytest.mark.parametrize(("iou_type", "edit", "message"), [
    ("bbox", lambda d: d.update(image_id=123456789), r"detection 0 names image_id 123456789, which the ground truth"),
    ("bbox", lambda d: d.update(category_id=2), r"detection 0 names category_id 2, which the ground truth"),
    ("bbox", lambda d: d.update(bbox=[1, 2, 3]), r"detection 0 has bbox \[1, 2, 3\]"),
    ("bbox", lambda d: d.update(score=float("nan")), r"detection 0 has score nan"),
    ("bbox", lambda d: d.pop("score"), r"detection 0 lacks \['score'\]"),
    ("segm", lambda d: d["segmentation"].update(size=[5, 5]), r"detection 0 has an RLE of size \[5, 5\], but image"),
    ("segm", lambda d: d.update(segmentation=[[1, 2, 3, 4, 5, 6]]), r"detection 0 has a segmentation that is"),
])
def test_rejected_results_are_one_line_errors(val, gt_preds, tmp_path, iou_type, edit, message):
    image_id = val.image_ids[0]
    results = to_coco_results(image_id, gt_preds[image_id], val.category_ids)[0 if iou_type == "bbox" else 1]
    edit(results[0])
    path = tmp_path / f"{iou_type}.json"
    path.write_text(json.dumps(results))
    with pytest.raises(ResultsError, match=rf"{iou_type}.json: {message}") as err:
        evaluate_files(val.coco, {iou_type: path})
    assert "\n" not in str(err.value)
    path.write_text("{not json")
    with pytest.raises(ResultsError, match=rf"{iou_type}.json: not valid JSON"):
        evaluate_files(val.coco, {iou_type: path})
    truncated = tmp_path / f"{iou_type}.json.gz"
    truncated.write_bytes(gzip.compress(json.dumps(results).encode())[:-9])
    with pytest.raises(ResultsError, match=rf"{iou_type}.json.gz: not valid JSON"):
        evaluate_files(val.coco, {iou_type: truncated})
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ResultsError, match=r"a COCO results file is a JSON list"):
        evaluate_files(val.coco, {iou_type: path})


# ------------------------------------------------------------------------------------------------ training targets

@pytest.fixture()
def coco_copy(tiny_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_data / "coco", tmp_path / "coco"))


def _edit(root: Path, split: str, fn) -> None:
    path = root / "annotations" / f"instances_{split}2017.json"
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def test_training_targets_drop_crowds_and_degenerate_annotations(coco_copy):
    square = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]
    doc = json.loads((coco_copy / "annotations" / "instances_train2017.json").read_text())
    crowds = sum(a["iscrowd"] for a in doc["annotations"])
    assert crowds > 0
    plain = [a for a in doc["annotations"] if not a["iscrowd"]]
    edited = {plain[0]["id"]: "two polygons, one of 2 points", plain[1]["id"]: "only a 2-point polygon",
              plain[2]["id"]: "zero width", plain[3]["id"]: "half a pixel high"}

    def edit(d):
        anns = {a["id"]: a for a in d["annotations"]}
        anns[plain[0]["id"]]["segmentation"] = [square, [1.0, 1.0, 5.0, 5.0]]
        anns[plain[1]["id"]]["segmentation"] = [[1.0, 1.0, 5.0, 5.0]]
        anns[plain[2]["id"]]["bbox"][2] = 0.0
        anns[plain[3]["id"]]["bbox"][3] = 0.5
    _edit(coco_copy, "train", edit)
    assert len(edited) == 4
    evaluation = COCODetection(coco_copy, "train", with_masks=True)
    training = COCODetection(coco_copy, "train", with_masks=True, training=True)
    assert training.num_dropped == {"crowd": crowds, "no_polygon": 1, "small_box": 2}
    assert evaluation.num_dropped == {}
    assert sum(len(a) for a in training.kept.values()) == len(doc["annotations"]) - crowds - 3
    # the annotation with a valid and a 2-point polygon trains on the valid one only (pycocotools would read the
    # 2-point one as a 4-pixel box)
    index = training.image_ids.index(plain[0]["image_id"])
    _, target = training[index]
    kept_ids = [a["id"] for a in training.kept[plain[0]["image_id"]]]
    mask = target["masks"][kept_ids.index(plain[0]["id"])]
    h, w = mask.shape
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([square], h, w)))
    np.testing.assert_array_equal(mask, expected)
    assert not mask[:5, :5].any()
    _, target = evaluation[evaluation.image_ids.index(plain[0]["image_id"])]
    assert len(target["labels"]) >= len(training.kept[plain[0]["image_id"]])


def test_bad_annotations_are_one_line_errors(coco_copy):
    first = sorted((coco_copy / "val2017").iterdir())[0]
    first.unlink()
    with pytest.raises(DatasetError, match=rf"instances_val2017.json: lists 1 images that are not in .*val2017 "
                                           rf"\(first: {first.name}\)"):
        COCODetection(coco_copy, "val")
    _edit(coco_copy, "train", lambda d: d["annotations"][0].update(segmentation=[[1.0, 2.0, 3.0, 4.0, 5.0]]))
    with pytest.raises(DatasetError, match=r"instances_train2017.json: annotation \d+ has a polygon with an odd"):
        load_coco_json(coco_copy / "annotations" / "instances_train2017.json")
