"""The VOC detection metric (benchmarks.detection.voc_eval) on hand-computed cases: duplicates, difficult matches,
empty classes, the strict IoU threshold, 11-point interpolation, and the results files it is computed from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.detection import voc_eval
from byol_bench.datasets import DatasetError
from byol_bench.datasets.voc import VOC_CLASSES
from byol_bench.datasets.voc_det import VOCAnnotation

# 1-based VOC boxes (inclusive pixels): A, B ordinary, C difficult; B is 10 x 10 = 100 pixels
A, B, C = [1, 1, 20, 20], [31, 1, 40, 10], [51, 51, 70, 70]
B60 = [31, 1, 40, 6]  # 10 x 6 pixels inside B: IoU 0.6 exactly
FAR = [80, 80, 90, 90]


def _gt(boxes, difficult):
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(difficult, dtype=bool)


def _dets(rows):
    ids = [r[0] for r in rows]
    return ids, np.array([r[1] for r in rows]), np.array([r[2] for r in rows], dtype=np.float64)


# sorted by score: A (tp), far (fp), C (difficult: ignored), A again (duplicate: fp), B at IoU 0.6
CASE = [("im1", 0.9, A), ("im1", 0.8, FAR), ("im1", 0.7, C), ("im1", 0.6, A), ("im1", 0.5, B60)]
TRUTH = {"im1": _gt([A, B, C], [False, False, True]), "im2": _gt([], [])}


def test_hand_case_at_iou_050():
    # tp=[1,0,-,0,1] fp=[0,1,-,1,0]: recall [.5 .5 .5 .5 1], precision [1 .5 .5 1/3 .5]
    # 11-point: t = 0 .. 0.5 (6 points) reach precision 1; t = 0.6 .. 1 (5 points) only the last: 0.5
    assert voc_eval.class_ap(*_dets(CASE), TRUTH, 0.5) == pytest.approx(8.5 / 11)


def test_iou_must_exceed_the_threshold():
    # B60 overlaps B at exactly 0.6: a match at 0.55, a false positive at 0.6 (strict ">", as the devkit)
    assert voc_eval.class_ap(*_dets(CASE), TRUTH, 0.55) == pytest.approx(8.5 / 11)
    assert voc_eval.class_ap(*_dets(CASE), TRUTH, 0.6) == pytest.approx(6 / 11)


def test_difficult_ground_truth_is_neither_found_nor_missed():
    only_difficult = {"im1": _gt([C], [True])}
    assert voc_eval.class_ap(*_dets([("im1", 0.9, C)]), only_difficult, 0.5) is None  # no positives: undefined
    truth = {"im1": _gt([A, C], [False, True])}
    # two detections on the difficult box (both ignored, duplicates included), then A: precision stays 1
    dets = [("im1", 0.9, C), ("im1", 0.8, C), ("im1", 0.7, A)]
    assert voc_eval.class_ap(*_dets(dets), truth, 0.5) == pytest.approx(1.0)


def test_no_detections_and_unknown_images():
    assert voc_eval.class_ap([], np.zeros(0), np.zeros((0, 4)), TRUTH, 0.5) == 0.0
    with pytest.raises(DatasetError, match="im9"):
        voc_eval.class_ap(*_dets([("im9", 0.9, A)]), TRUTH, 0.5)


def test_eleven_point_interpolation():
    # recall 0.25 / 0.5 / 0.75 at precision 1 / 2/3 / 0.6: points t=0..0.2 -> 1, 0.3..0.5 -> 2/3, 0.6..0.7 -> 0.6
    recall, precision = np.array([0.25, 0.5, 0.75]), np.array([1.0, 2 / 3, 0.6])
    assert voc_eval.voc07_ap(recall, precision) == pytest.approx((3 * 1 + 3 * 2 / 3 + 2 * 0.6) / 11)
    # the interpolation takes the maximum precision at any higher recall
    assert voc_eval.voc07_ap(np.array([0.5, 1.0]), np.array([0.5, 1.0])) == pytest.approx(1.0)


def _annotation(image_id, boxes_voc, labels, difficult, size=(100, 100)):
    boxes = np.asarray(boxes_voc, dtype=np.float32).reshape(-1, 4) - np.array([1, 1, 0, 0], dtype=np.float32)
    return VOCAnnotation(image_id, size[0], size[1], boxes, np.asarray(labels, dtype=np.int64),
                         np.asarray(difficult, dtype=bool), np.zeros(len(labels), dtype=bool))


def test_results_files_round_trip_and_the_three_metrics(tmp_path):
    cat, dog = VOC_CLASSES.index("cat"), VOC_CLASSES.index("dog")
    anns = [_annotation("im1", [A, B, C], [cat, cat, cat], [False, False, True]),
            _annotation("im2", [A], [dog], [False])]
    edge = lambda b: [b[0] - 1, b[1] - 1, b[2], b[3]]  # noqa: E731 - pixel-edge boxes, as the model predicts
    im1 = {"boxes": torch.tensor([edge(b) for _, _, b in CASE], dtype=torch.float32),
           "scores": torch.tensor([s for _, s, _ in CASE]), "labels": torch.full((5,), cat + 1)}
    im2 = {"boxes": torch.tensor([edge(A)], dtype=torch.float32), "scores": torch.tensor([0.25]),
           "labels": torch.tensor([dog + 1])}
    files = voc_eval.write_results(tmp_path, ["im1", "im2"], [im1, im2])
    assert len(files) == 20 and (tmp_path / "comp4_det_test_cat.txt").read_text().splitlines()[0] == \
        "im1 0.900 1.0 1.0 20.0 20.0"  # 1-based VOC coordinates, score %.3f, boxes %.1f
    assert (tmp_path / "comp4_det_test_bird.txt").read_text() == ""
    scores = voc_eval.evaluate(tmp_path, anns)
    # cat: 8.5/11 at IoU .50 and .55, 6/11 from .60 on; dog: a perfect match (AP 1 at every threshold < 1)
    cat_aps = [8.5 / 11] * 2 + [6 / 11] * 8
    expected = [100 * (c + 1.0) / 2 for c in cat_aps]
    assert scores.metrics() == pytest.approx({"AP": np.mean(expected), "AP50": expected[0], "AP75": expected[5]})
    assert scores.ap50_per_class == pytest.approx({"cat": 100 * 8.5 / 11, "dog": 100.0})
    assert set(scores.classes_without_ground_truth) == set(VOC_CLASSES) - {"cat", "dog"}


def test_bad_results_files(tmp_path):
    with pytest.raises(DatasetError, match=r"comp4_det_test_aeroplane\.txt: results file not found"):
        voc_eval.read_results(tmp_path, "aeroplane")
    (tmp_path / "comp4_det_test_aeroplane.txt").write_text("im1 0.5 1 2 3\n")
    with pytest.raises(DatasetError, match=r"comp4_det_test_aeroplane.txt:1: expected"):
        voc_eval.read_results(tmp_path, "aeroplane")
    with pytest.raises(ValueError, match="label 21"):
        voc_eval.write_results(tmp_path, ["im1"], [{"boxes": torch.zeros(1, 4), "scores": torch.ones(1),
                                                    "labels": torch.tensor([21])}])


def test_rescoring_command(tmp_path, capsys):
    root = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("im1\n")
    (root / "JPEGImages" / "im1.jpg").write_bytes(b"")  # only listed: scoring reads the XML
    (root / "Annotations" / "im1.xml").write_text(
        "<annotation><size><width>100</width><height>100</height></size><object><name>cat</name><difficult>0"
        "</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>"
        "</annotation>")
    cat = VOC_CLASSES.index("cat") + 1
    voc_eval.write_results(tmp_path / "res", ["im1"], [{"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]]),
                                                        "scores": torch.tensor([0.9]), "labels": torch.tensor([cat])}])
    voc_eval.main([str(tmp_path / "res"), "--devkit", str(tmp_path / "VOCdevkit")])
    out = __import__("json").loads(capsys.readouterr().out)
    assert {k: out[k] for k in ("AP", "AP50", "AP75")} == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})
    assert out["ap50_per_class"] == pytest.approx({"cat": 100.0})
