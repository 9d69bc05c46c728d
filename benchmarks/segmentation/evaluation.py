"""Semantic-segmentation scoring and sliding-window inference, as mmsegmentation defines them (PROTOCOLS.md A.7).

* :func:`intersect_and_union` and :func:`segmentation_scores`: mmseg's ``IoUMetric`` (1.x;
  ``mean_iou``/``pre_eval`` in 0.x). Per class, the pixel counts of intersection, union, prediction and label are
  **summed over the whole val set** (pixels labelled ``ignore_index`` dropped first), then
  IoU = intersection / union and Acc = intersection / label area. A class with zero union (absent from every label
  and every prediction) has IoU NaN and is left out of the mean (``np.nanmean``); a class that is predicted but
  never labelled has IoU 0 and counts. aAcc = total intersection / total labelled pixels.
* :func:`slide_logits`: mmseg's ``EncoderDecoder.slide_inference``: crops of ``crop`` on a ``stride`` grid whose last
  row/column is shifted back to end at the image border, logits summed where crops overlap and divided by the
  number of crops covering each pixel.
* the prediction files both engines write and score (:func:`save_prediction`, :func:`prediction_name`,
  :func:`score_files`): VOC palette PNGs of class indices, Cityscapes labelId PNGs, as the official tools read them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from byol_bench.datasets.cityscapes import LABELS, TRAIN_CLASSES, label_ids_to_train_ids
from byol_bench.datasets.images import load_label_map
from byol_bench.datasets.voc import VOC_CLASSES
from byol_bench.tinydata.voc import voc_palette


def intersect_and_union(pred: np.ndarray, label: np.ndarray, num_classes: int,
                        ignore_index: int = 255) -> np.ndarray:
    """Per-class pixel areas of one image: ``(4, num_classes)`` int64 rows intersection, union, pred, label.

    Args:
        pred: predicted class per pixel (H, W).
        label: ground truth (H, W); ``ignore_index`` pixels are left out of every count.

    Raises:
        ValueError: shapes differ, or a prediction outside ``0..num_classes-1`` on a scored pixel.
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
    keep = label != ignore_index
    pred, label = pred[keep].astype(np.int64), label[keep].astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"prediction values must be 0..{num_classes - 1}, found {pred.min()}..{pred.max()}")
    area_pred = np.bincount(pred, minlength=num_classes)
    area_label = np.bincount(label, minlength=num_classes)[:num_classes]
    area_inter = np.bincount(pred[pred == label], minlength=num_classes)
    return np.stack([area_inter, area_pred + area_label - area_inter, area_pred, area_label])


def segmentation_scores(areas: np.ndarray, class_names: Sequence[str]) -> dict:
    """mIoU / mAcc / aAcc (%) and per-class IoU / Acc (%, None for NaN) from dataset-level summed areas.

    Args:
        areas: the sum over all images of :func:`intersect_and_union`.
        class_names: one name per class, in class-index order.
    """
    inter, union, _, label = (a.astype(np.float64) for a in areas)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, acc = inter / union, inter / label
    return {
        "mIoU": 100.0 * float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mAcc": 100.0 * float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
        "aAcc": 100.0 * float(inter.sum() / label.sum()) if label.sum() else float("nan"),
        "IoU": {n: None if np.isnan(v) else 100.0 * float(v) for n, v in zip(class_names, iou, strict=True)},
        "Acc": {n: None if np.isnan(v) else 100.0 * float(v) for n, v in zip(class_names, acc, strict=True)},
    }


def slide_logits(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                 crop: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Sliding-window logits of ``images`` (N, C, H, W): mmseg ``slide_inference``.

    Args:
        forward: crop (N, C, h, w) -> logits (N, K, h, w) at the crop's own size.
        crop: (h_crop, w_crop); stride: (h_stride, w_stride).

    Returns:
        (N, K, H, W) logits: per pixel, the mean over the crops that cover it.
    """
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    n, _, h_img, w_img = images.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    total, count = None, images.new_zeros((n, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2, x2 = min(h_idx * h_stride + h_crop, h_img), min(w_idx * w_stride + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            logits = forward(images[:, :, y1:y2, x1:x2]).float()
            if total is None:
                total = images.new_zeros((n, logits.shape[1], h_img, w_img), dtype=torch.float32)
            total += F.pad(logits, (x1, w_img - x2, y1, h_img - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


# ---------------------------------------------------------------- prediction files (both engines write these)


IGNORE_INDEX = 255
CLASS_NAMES = {"voc12aug": ("background", *VOC_CLASSES), "cityscapes": TRAIN_CLASSES}
# trainId -> official labelId (the Cityscapes prediction files hold labelIds)
TRAIN_ID_TO_ID = np.array([next(lb.id for lb in LABELS if lb.train_id == t) for t in range(len(TRAIN_CLASSES))],
                          dtype=np.uint8)


def prediction_name(dataset: Dataset, index: int) -> str:
    """The PNG name of one val prediction: VOC ``<id>.png``; Cityscapes the image's ``..._leftImg8bit.png``."""
    return dataset.samples[index][0].with_suffix(".png").name


def save_prediction(pred: np.ndarray, dataset: str, path: Path) -> None:
    """One prediction PNG: Cityscapes official labelIds (grey), VOC a palette PNG of the class indices."""
    if dataset == "cityscapes":
        png = Image.fromarray(TRAIN_ID_TO_ID[pred], mode="L")
    else:
        png = Image.fromarray(pred, mode="P")
        png.putpalette(voc_palette())
    png.save(path)


def score_files(val_set: Dataset, indices: list[int], dataset: str, pred_dir: Path) -> np.ndarray:
    """Summed :func:`intersect_and_union` areas of the prediction PNGs (read back from disk) against the labels."""
    num_classes = len(CLASS_NAMES[dataset])
    areas = np.zeros((4, num_classes), dtype=np.int64)
    for index in indices:
        _, label = val_set[index]
        path = pred_dir / prediction_name(val_set, index)
        pred = load_label_map(path)
        if dataset == "cityscapes":
            pred = label_ids_to_train_ids(pred, path)
        areas += intersect_and_union(pred, label, num_classes, IGNORE_INDEX)
    return areas
