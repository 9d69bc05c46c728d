"""PASCAL VOC detection AP as detectron2's ``PascalVOCDetectionEvaluator`` computes it (PROTOCOLS.md A.6, B §5.1).

Detections are written in VOC's results format, one file per class, ``comp4_det_test_<class>.txt``, a line per
detection: ``<image id> <score %.3f> <xmin> <ymin> <xmax> <ymax>`` (``%.1f``, 1-based VOC pixel coordinates: a
pixel-edge box ``x0, y0, x1, y1`` is written ``x0 + 1, y0 + 1, x1, y1``), and the metric is computed from those
files, so anyone can re-score them (the VOC devkit and detectron2 read the same files).

Per class and IoU threshold (the VOC devkit's ``voc_eval``): detections sorted by descending score
(``np.argsort(-score)``, as the devkit); each is matched to the unmatched ground truth of its image with the highest
IoU (devkit's ``+1`` pixel areas) when that IoU is **greater than** the threshold; a match to a *difficult* box
counts neither as a true nor as a false positive; a second match to a box is a false positive. AP is the **VOC07
11-point** interpolation: the mean over recall thresholds ``np.arange(0, 1.1, 0.1)`` of the highest precision at a
recall of at least that threshold (0 where none). The metrics (x100): ``AP`` = mean over IoU 0.50:0.05:0.95 of the
mean over classes, ``AP50``, ``AP75``.

NOTE: a class without non-difficult ground truth in the evaluated images has no defined AP (detectron2 divides by
zero); it is left out of the class mean and listed in ``classes_without_ground_truth``. VOC2007 test has every
class, so this only concerns small subsets (tests, tiny runs).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from byol_bench.checkpoint import atomic_write_text
from byol_bench.cli import main_guard
from byol_bench.datasets import DatasetError
from byol_bench.datasets.voc import VOC_CLASSES
from byol_bench.datasets.voc_det import VOCAnnotation, VOCDetection

IOU_THRESHOLDS = tuple(range(50, 100, 5))  # percent, as detectron2 iterates them
RESULTS_FILE = "comp4_det_test_{}.txt"


@dataclass(frozen=True)
class VOCDetectionScores:
    """The evaluation of one results folder (AP values x100)."""

    AP: float
    AP50: float
    AP75: float
    map_per_iou: dict[int, float]  # IoU threshold (percent) -> mean AP over the classes with ground truth
    ap50_per_class: dict[str, float]
    classes_without_ground_truth: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {"AP": self.AP, "AP50": self.AP50, "AP75": self.AP75}


def write_results(folder: Path, image_ids: Sequence[str], detections: Sequence[dict[str, torch.Tensor]]) -> list[Path]:
    """Write ``comp4_det_test_<class>.txt`` for all 20 classes (empty when a class has no detection).

    Args:
        image_ids: the VOC image id of each entry of ``detections``.
        detections: per image ``boxes`` (N, 4) pixel-edge ``x0, y0, x1, y1`` in original-image pixels, ``scores``
            (N,), ``labels`` (N,) in 1..20 (index into ``VOC_CLASSES`` + 1; 0 is the background).
    """
    lines: dict[int, list[str]] = {k: [] for k in range(len(VOC_CLASSES))}
    for image_id, det in zip(image_ids, detections, strict=True):
        boxes, scores, labels = det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()
        for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels, strict=True):
            if not 1 <= label <= len(VOC_CLASSES):
                raise ValueError(f"detection label {label} of image {image_id} is not a VOC class (1..20)")
            lines[label - 1].append(f"{image_id} {score:.3f} {x0 + 1:.1f} {y0 + 1:.1f} {x1:.1f} {y1:.1f}\n")
    folder.mkdir(parents=True, exist_ok=True)
    return [atomic_write_text(folder / RESULTS_FILE.format(name), "".join(lines[k]))
            for k, name in enumerate(VOC_CLASSES)]


def read_results(folder: Path, class_name: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One class's results file: image ids, scores (D,), boxes (D, 4) in 1-based VOC coordinates, in file order.

    Raises:
        DatasetError: the file is missing or a line is malformed (the message names the file and line).
    """
    path = folder / RESULTS_FILE.format(class_name)
    if not path.is_file():
        raise DatasetError(f"{path}: results file not found (expected one comp4_det_test_<class>.txt per class)")
    ids, rows = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 6:
                raise ValueError
            rows.append([float(v) for v in fields[1:]])
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: expected '<image id> <score> <xmin> <ymin> <xmax> <ymax>', got "
                               f"{line!r}") from None
        ids.append(fields[0])
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    return ids, table[:, 0], table[:, 1:]


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 11-point AP: mean over t in ``np.arange(0, 1.1, 0.1)`` of max precision at recall >= t (0 if none)."""
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        reached = recall >= t
        ap += (float(np.max(precision[reached])) if reached.any() else 0.0) / 11.0
    return ap


def class_ap(ids: Sequence[str], scores: np.ndarray, boxes: np.ndarray,
             ground_truth: dict[str, tuple[np.ndarray, np.ndarray]], iou_threshold: float) -> float | None:
    """AP of one class at one IoU threshold (VOC07 11-point), or None without non-difficult ground truth.

    Args:
        ids, scores, boxes: the class's detections (1-based VOC boxes), in file order.
        ground_truth: per image id of the evaluated set: the class's boxes (M, 4, 1-based VOC) and difficult flags.
    """
    npos = sum(int((~difficult).sum()) for _, difficult in ground_truth.values())
    if npos == 0:
        return None
    matched = {image: np.zeros(len(gt_boxes), dtype=bool) for image, (gt_boxes, _) in ground_truth.items()}
    order = np.argsort(-scores)  # the devkit's call: same order of ties as detectron2 on the same file
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d, k in enumerate(order):
        if ids[k] not in ground_truth:
            raise DatasetError(f"detection for image {ids[k]!r}, which is not in the evaluated image set")
        gt_boxes, difficult = ground_truth[ids[k]]
        best, j = -np.inf, -1
        if len(gt_boxes):
            box = boxes[k]
            iw = np.maximum(np.minimum(gt_boxes[:, 2], box[2]) - np.maximum(gt_boxes[:, 0], box[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(gt_boxes[:, 3], box[3]) - np.maximum(gt_boxes[:, 1], box[1]) + 1.0, 0.0)
            inter = iw * ih
            union = ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
                     + (gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0) * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0) - inter)
            overlaps = inter / union
            best, j = float(overlaps.max()), int(overlaps.argmax())
        if best > iou_threshold:
            if difficult[j]:
                continue  # neither true nor false positive
            if not matched[ids[k]][j]:
                tp[d], matched[ids[k]][j] = 1.0, True
            else:
                fp[d] = 1.0
        else:
            fp[d] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / float(npos)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc07_ap(recall, precision)


def ground_truth_by_class(annotations: Sequence[VOCAnnotation]) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per class, per image of the evaluated set: its boxes in 1-based VOC coordinates and difficult flags."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for k, name in enumerate(VOC_CLASSES):
        per_image = {}
        for ann in annotations:
            keep = ann.labels == k
            boxes = ann.boxes[keep].astype(np.float64) + np.array([1.0, 1.0, 0.0, 0.0])  # back to VOC's xmin, ymin
            per_image[ann.image_id] = (boxes, ann.difficult[keep])
        out[name] = per_image
    return out


def evaluate(folder: Path, annotations: Sequence[VOCAnnotation]) -> VOCDetectionScores:
    """Score the results files in ``folder`` against the ground truth of ``annotations`` (the evaluated image set)."""
    truth = ground_truth_by_class(annotations)
    aps: dict[int, dict[str, float]] = {t: {} for t in IOU_THRESHOLDS}
    missing = []
    for name in VOC_CLASSES:
        ids, scores, boxes = read_results(folder, name)
        for t in IOU_THRESHOLDS:
            ap = class_ap(ids, scores, boxes, truth[name], t / 100.0)
            if ap is None:
                if t == IOU_THRESHOLDS[0]:
                    missing.append(name)
                continue
            aps[t][name] = 100.0 * ap
    if len(missing) == len(VOC_CLASSES):
        raise DatasetError(f"{folder}: the evaluated images have no non-difficult ground truth box")
    per_iou = {t: float(np.mean(list(v.values()))) for t, v in aps.items()}
    return VOCDetectionScores(AP=float(np.mean(list(per_iou.values()))), AP50=per_iou[50], AP75=per_iou[75],
                              map_per_iou=per_iou, ap50_per_class=dict(aps[50]), classes_without_ground_truth=missing)


def main(argv: Sequence[str] | None = None) -> None:
    """Re-score a results folder: prints AP, AP50, AP75 and the per-class AP50 as JSON."""
    parser = argparse.ArgumentParser(description="Score comp4_det_test_<class>.txt files (VOC07 11-point AP at IoU "
                                                 ".50:.95, as detectron2's PascalVOCDetectionEvaluator).")
    parser.add_argument("results_dir", type=Path, help="folder with the 20 comp4_det_test_<class>.txt files")
    parser.add_argument("--devkit", type=Path, required=True, help="the VOCdevkit folder (or VOC<year> itself)")
    parser.add_argument("--year", default="2007")
    parser.add_argument("--split", default="test")
    parser.add_argument("--first", type=int, default=None, help="only the first N images of the list (tiny runs)")
    args = parser.parse_args(argv)
    images = VOCDetection(args.devkit, args.year, args.split, filter_empty=False, first=args.first)
    scores = evaluate(args.results_dir, images.annotations)
    print(json.dumps({**scores.metrics(), "ap50_per_class": scores.ap50_per_class,
                      "classes_without_ground_truth": scores.classes_without_ground_truth}))


if __name__ == "__main__":
    main_guard(main)
