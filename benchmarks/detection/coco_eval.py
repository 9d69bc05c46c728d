"""COCO box and mask AP from COCO results files, scored by pycocotools' ``COCOeval`` (what mmdet's ``CocoMetric``
and detectron2's ``COCOEvaluator`` call).

The runner turns every image's detections into COCO results (:func:`to_coco_results`), writes them as the field's
standard files, plain JSON lists next to the record (``<record stem>.bbox.json`` and ``<record stem>.segm.json``,
:func:`write_results`), and scores those files (:func:`evaluate_files`), so anyone can re-score them with pycocotools
alone (``COCO.loadRes(path)`` opens them as they are):

* ``bbox``: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` in original-image pixels;
* ``segm``: the same with ``"segmentation"``: the mask (probabilities thresholded at ``mask_threshold``, 0.5 in
  mmdet and detectron2) as a compressed RLE (``pycocotools.mask.encode``, counts as text).

Crowd annotations are handled as COCO does: ``COCOeval`` reads ``iscrowd`` from the ground-truth file, a detection
matched to a crowd region is ignored (neither true nor false positive), and crowd regions are never missed.
The ground truth is the annotation file itself (not the training targets, which drop crowds and degenerate
boxes), so the numbers are those of the official evaluation.

A results file that pycocotools would reject, or that would silently score wrong (an image or category the ground
truth does not have, a malformed box, an RLE of another size), is a :class:`ResultsError` naming the file.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from byol_bench.fileio import atomic_write_text

IOU_TYPES = ("bbox", "segm")
# COCOeval.stats order (summarize()); the record keeps the first six per IoU type
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class ResultsError(ValueError):
    """A COCO results file that cannot be scored; the message names the file and the problem."""


def to_coco_results(image_id: int, prediction: Mapping[str, torch.Tensor], category_ids: Sequence[int],
                    mask_threshold: float = 0.5) -> tuple[list[dict], list[dict]]:
    """One image's detections as COCO ``bbox`` and ``segm`` results.

    Args:
        image_id: the COCO image id.
        prediction: torchvision's detection output for the image in original-image pixels: ``boxes`` (N, 4) xyxy,
            ``scores`` (N,), ``labels`` (N,) in ``1..K`` (0 is the background), and optionally ``masks``
            (N, 1, H, W) probabilities.
        category_ids: the COCO category id of each contiguous label: label ``k`` is ``category_ids[k - 1]``.
        mask_threshold: a pixel belongs to the instance when its probability is >= this.

    Returns:
        The ``bbox`` results and the ``segm`` results (empty without ``masks``).
    """
    boxes = prediction["boxes"].detach().cpu().double().numpy()
    scores = prediction["scores"].detach().cpu().double().tolist()
    categories = [int(category_ids[k - 1]) for k in prediction["labels"].detach().cpu().tolist()]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
    bbox = [{"image_id": int(image_id), "category_id": c, "bbox": b, "score": s}
            for c, b, s in zip(categories, xywh, scores, strict=True)]
    segm = []
    if "masks" in prediction:
        masks = (prediction["masks"].detach()[:, 0] >= mask_threshold).cpu().numpy().astype(np.uint8)
        for c, s, rle in zip(categories, scores, mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))),
                             strict=True):
            segm.append({"image_id": int(image_id), "category_id": c, "score": s,
                         "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}})
    return bbox, segm


def write_results(path: str | Path, results: list[dict]) -> Path:
    """Write a COCO results file (a plain JSON list, as ``COCO.loadRes`` reads it), atomically."""
    return atomic_write_text(path, json.dumps(results))


def load_results(gt: COCO, path: str | Path, iou_type: str) -> COCO:
    """Read and check a COCO results file against the ground truth; return pycocotools' results object.

    An empty list (a model that detects nothing) is valid and scores 0; pycocotools' ``loadRes`` cannot take one,
    so its result is built here. A gzip-compressed file (``.json.gz``, what runs before the plain files wrote) is
    read too.

    Raises:
        ResultsError: missing file, invalid JSON, not a list, an entry lacking a key, an image or category the
            ground truth does not have, a non-finite score, a malformed box or RLE, or anything ``loadRes``
            rejects.
    """
    path = Path(path)
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type {iou_type!r} is not one of {', '.join(IOU_TYPES)}")
    if not path.is_file():
        raise ResultsError(f"{path}: results file not found")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        results = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(results, list):
        raise ResultsError(f"{path}: a COCO results file is a JSON list of detections")
    key = "bbox" if iou_type == "bbox" else "segmentation"
    for i, det in enumerate(results):
        _check_result(gt, det, i, key, path)
    if not results:
        res = COCO()
        res.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                       "annotations": []}
        with contextlib.redirect_stdout(io.StringIO()):
            res.createIndex()
        return res
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            return gt.loadRes(results)
    except (AssertionError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise ResultsError(f"{path}: pycocotools rejects the results ({type(exc).__name__}: {exc})") from exc


def _check_result(gt: COCO, det: Any, i: int, key: str, path: Path) -> None:
    where = f"{path}: detection {i}"
    if not isinstance(det, dict):
        raise ResultsError(f"{where} is not an object")
    missing = [k for k in ("image_id", "category_id", "score", key) if k not in det]
    if missing:
        raise ResultsError(f"{where} lacks {missing}")
    if det["image_id"] not in gt.imgs:
        raise ResultsError(f"{where} names image_id {det['image_id']}, which the ground truth does not have")
    if det["category_id"] not in gt.cats:
        raise ResultsError(f"{where} names category_id {det['category_id']}, which the ground truth does not have")
    if not isinstance(det["score"], int | float) or not math.isfinite(det["score"]):
        raise ResultsError(f"{where} has score {det['score']!r} (want a finite number)")
    if key == "bbox":
        box = det["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)
                and box[2] >= 0 and box[3] >= 0):
            raise ResultsError(f"{where} has bbox {box!r} (want [x, y, w, h] with w, h >= 0)")
    else:
        rle = det["segmentation"]
        info = gt.imgs[det["image_id"]]
        if not (isinstance(rle, dict) and "counts" in rle and isinstance(rle.get("size"), list)):
            raise ResultsError(f"{where} has a segmentation that is not an RLE {{'size', 'counts'}}")
        if list(rle["size"]) != [info["height"], info["width"]]:
            raise ResultsError(f"{where} has an RLE of size {rle['size']}, but image {det['image_id']} is "
                               f"{info['height']}x{info['width']} (h x w)")


def evaluate_files(gt: COCO, files: Mapping[str, str | Path], image_ids: Sequence[int] | None = None,
                   ) -> tuple[dict[str, float], dict[str, Any]]:
    """Score results files with ``COCOeval``: AP over IoU .50:.95, AP50, AP75 and APs/APm/APl, in percent.

    Args:
        gt: the ground truth (the annotation file, crowds included).
        files: ``{"bbox": path, "segm": path}`` (either may be left out).
        image_ids: score these images only (``COCOeval.params.imgIds``); default: every image of ``gt``.

    Returns:
        ``metrics`` (``<iou_type>_AP``, ``_AP50``, ``_AP75``: the table's numbers) and ``details`` (the same plus
        ``APs/APm/APl`` per IoU type, and pycocotools' printed summary).
    """
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    for iou_type, path in files.items():
        results = load_results(gt, path, iou_type)
        evaluator = COCOeval(gt, results, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        # COCOeval reports -1 where no ground truth exists in an area range; kept as-is (the field's convention)
        stats = {name: 100.0 * float(v) if v >= 0 else -1.0
                 for name, v in zip(STAT_NAMES, evaluator.stats[:6], strict=True)}
        metrics.update({f"{iou_type}_{k}": stats[k] for k in ("AP", "AP50", "AP75")})
        details[iou_type] = {**stats, "results_file": str(path),
                             "num_detections": len(results.anns),
                             "summary": summary.getvalue().strip().splitlines()}
    return metrics, details
