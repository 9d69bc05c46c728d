"""Evaluation metrics shared by the protocols.

Top-k classification accuracy (:func:`topk_accuracy`; the kNN monitor), and :class:`TopkCounter` for a whole
split scored by several heads or models at once, summed over batches and processes (linear probes, fine-tuning).

Average precision, two flavours (PROTOCOLS.md B §2.3), both vectorised over the columns (classes, costs, folds)
of a score matrix:

* :func:`voc_area_ap` — the VOC "area" AP that mmselfsup's ``svm_helper.calculate_ap`` reports on the test set:
  rank by score, precision made monotone (running max from the right), summed over the recall steps. Not the
  11-point AP.
* :func:`average_precision` — scikit-learn's ``average_precision_score`` (step-wise, no interpolation, tied
  scores form one threshold), which ``cross_val_score(..., scoring="average_precision")`` uses to pick the SVM
  cost in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def topk_correct(scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """How many rows have their target among the ``k`` highest scores, for every ``k`` in ``ks``.

    Counts, not percentages, so that batches and processes can be summed before dividing. ``k`` larger than the
    number of classes counts every row. Ties are broken as ``torch.topk`` breaks them.

    Args:
        scores: ``(N, classes)`` logits, probabilities or votes.
        targets: ``(N,)`` integer class indices.
        ks: the k values.
    """
    if scores.ndim != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(f"scores must be (N, classes) and targets (N,), got {tuple(scores.shape)} and "
                         f"{tuple(targets.shape)}")
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == targets[:, None]
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent, ``{"top1": ..., "top5": ...}``, of one batch of scores (see :func:`topk_correct`)."""
    correct = topk_correct(scores, targets, ks)
    return {f"top{k}": 100.0 * correct[k] / len(targets) for k in ks}


class TopkCounter:
    """Top-k hits of several scorers (heads, grid cells) over a whole split: counts over batches, then processes.

    Exact under DDP as long as each image is scored on one process only (no padded samples).
    """

    def __init__(self, names: Sequence[str], ks: Sequence[int] = (1, 5)) -> None:
        self.names, self.ks = list(names), tuple(ks)
        self.counts = torch.zeros(len(self.names), len(self.ks) + 1, dtype=torch.float64)  # hits per k, images

    def add(self, name: str, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """Count one batch of ``name``'s scores (any device; counted on the CPU)."""
        hits = topk_correct(scores.detach().float().cpu(), targets.cpu(), self.ks)
        self.counts[self.names.index(name)] += torch.tensor([*(hits[k] for k in self.ks), len(targets)],
                                                            dtype=torch.float64)

    def percent(self, device: torch.device) -> dict[str, dict[str, float]]:
        """``{name: {"top1": %, "top5": %}}`` over every process (all-reduced on ``device``)."""
        from byol_bench import dist

        total = dist.all_reduce_sum(self.counts.to(device)).cpu()
        return {name: {f"top{k}": 100.0 * float(total[row, i]) / float(total[row, -1]) for i, k in enumerate(self.ks)}
                for row, name in enumerate(self.names)}


def _as_columns(scores: np.ndarray, labels: np.ndarray, valid: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Check shapes and return float64 scores, labels and a validity mask, all 2-D (rows x columns)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must have the same shape")
    if scores.ndim not in (1, 2):
        raise ValueError(f"scores must be 1-D (samples) or 2-D (samples x columns), got shape {scores.shape}")
    vector = scores.ndim == 1
    mask = np.ones(scores.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if mask.shape != scores.shape:
        raise ValueError(f"valid {mask.shape} must have the shape of scores {scores.shape}")
    if vector:
        scores, labels, mask = scores[:, None], labels[:, None], mask[:, None]
    if not np.isfinite(scores[mask]).all():
        raise ValueError("scores contain NaN or inf; the classifier diverged or the features are broken")
    return scores, labels, mask, vector


def _ranked_counts(scores: np.ndarray, positive: np.ndarray, mask: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort every column by descending score; masked rows go last and count as neither TP nor FP.

    Works on the transposed (columns x rows) layout, where each sort is contiguous. Returns the sorted scores,
    the sorted TP increments, the precision after each row (all columns x rows), and the positives per column.
    Ties are ordered like the reference's ``np.argsort(preds)[::-1]`` with a stable sort (the later row first);
    only the area AP depends on that order.
    """
    keyed = np.ascontiguousarray(np.where(mask, scores, -np.inf).T)
    # torch's stable sort is several times faster than numpy's on (columns x ~5k) arrays.
    order = torch.from_numpy(keyed).sort(dim=1, stable=True).indices.numpy()[:, ::-1]
    tp = np.take_along_axis((positive & mask).T, order, axis=1).astype(np.float64)
    counted = np.take_along_axis(mask.T, order, axis=1).astype(np.float64)
    cum_tp = np.cumsum(tp, axis=1)
    cum_all = np.cumsum(counted, axis=1)
    # Masked rows sit at the end, so cum_all is 0 only before the first row, which cannot happen.
    precision = cum_tp / np.maximum(cum_all, 1.0)
    return np.take_along_axis(keyed, order, axis=1), tp, precision, cum_tp[:, -1]


def voc_area_ap(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """VOC "area" average precision per column (mmselfsup ``svm_helper.get_precision_recall``/``calculate_ap``).

    Rows with label -1 ("difficult only") are ignored, 0 is negative, 1 is positive. The precision-recall curve
    gets sentinels (0, 0) and (1, 0), precision is made monotone by a running maximum from the right, and the
    AP is the sum of recall steps times that precision — i.e. the mean, over positives, of the highest
    precision reached at or after each positive's rank.

    Args:
        scores: ``(N,)`` or ``(N, C)`` classifier scores (higher = more likely positive).
        labels: same shape, values in {-1, 0, 1}.

    Returns:
        AP as a fraction in [0, 1]: a float64 array of shape ``(C,)``, or a 0-d array for 1-D input. A column
        without positives gets NaN (the reference divides by zero there).
    """
    scores, labels, mask, vector = _as_columns(scores, labels, None)
    if not ((labels >= -1) & (labels <= 1) & (labels == np.round(labels))).all():
        raise ValueError("VOC labels must be -1 (ignore), 0 (negative) or 1 (positive)")
    _, tp, precision, npos = _ranked_counts(scores, labels == 1, mask & (labels != -1))
    interpolated = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (tp * interpolated).sum(axis=1) / npos
    return ap[0] if vector else ap


def average_precision(scores: np.ndarray, positive: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """scikit-learn's ``average_precision_score`` per column, with an optional mask of rows to use.

    AP = sum over thresholds of (R_k - R_{k-1}) * P_k, thresholds being the distinct scores in decreasing
    order (tied rows enter together), without interpolation.

    Args:
        scores: ``(N,)`` or ``(N, C)`` scores.
        positive: same shape, truthy where the row is a positive of that column.
        valid: same shape, False for rows that do not take part (e.g. the training rows of a CV fold).

    Returns:
        AP as a fraction, shape ``(C,)`` (0-d for 1-D input); NaN for a column without positives.
    """
    scores, positive, mask, vector = _as_columns(scores, np.asarray(positive, dtype=bool), valid)
    sorted_scores, tp, precision, npos = _ranked_counts(scores, positive, mask)
    n = scores.shape[0]
    last_of_tie = np.ones(sorted_scores.shape, dtype=bool)
    last_of_tie[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    # Index of the last row of each row's tie group: running minimum from the right over the group ends.
    ends = np.where(last_of_tie, np.arange(n)[None, :], n)
    group_end = np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1]
    at_threshold = np.take_along_axis(precision, group_end, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (tp * at_threshold).sum(axis=1) / npos
    return ap[0] if vector else ap
