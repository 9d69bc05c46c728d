"""Average precision: VOC "area" AP (test metric) and scikit-learn's step-wise AP (CV metric), B §2.3."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from byol_bench.metrics import average_precision, voc_area_ap


def _reference_area_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """A literal, loop-based reading of mmselfsup's svm_helper.get_precision_recall + calculate_ap."""
    keep = labels != -1
    targets, preds = (labels[keep] > 0).astype(float), scores[keep]
    order = np.argsort(preds, kind="stable")[::-1]
    tp = targets[order]
    fp = 1 - tp
    precision = np.cumsum(tp) / (np.cumsum(tp) + np.cumsum(fp))
    recall = np.cumsum(tp) / targets.sum()
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return float(sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in np.where(mrec[1:] != mrec[:-1])[0] + 1))


@pytest.mark.parametrize(("labels", "expected"), [
    ([1, 0, 1, 0], (1 + 2 / 3) / 2),  # precision 1 at rank 1, 2/3 at rank 3
    ([1, 0, 0, 1, 1], (1 + 0.6 + 0.6) / 3),  # rank 4 has precision 1/2, interpolated up to rank 5's 3/5
    ([0, 0, 0, 1], 0.25),
    ([1, 1, 0, 0], 1.0),
])
def test_area_ap_hand_computed(labels, expected):
    scores = np.linspace(1.0, 0.1, len(labels))  # already in ranking order
    assert voc_area_ap(scores, np.array(labels)) == pytest.approx(expected, abs=1e-12)


def test_area_ap_ignores_difficult_and_differs_from_sklearn_by_interpolation():
    scores = np.array([2.0, 1.0, 0.9, 0.8, 0.7, 0.6])
    labels = np.array([-1, 1, 0, 0, 1, 1])  # the top-scored "difficult" image must not count as a false positive
    assert voc_area_ap(scores, labels) == pytest.approx((1 + 0.6 + 0.6) / 3)
    # scikit-learn does not interpolate: rank 4's precision 1/2 stays (the CV metric of the reference).
    assert average_precision(scores[1:], labels[1:] == 1) == pytest.approx((1 + 0.5 + 0.6) / 3)


def test_area_ap_matches_reference_loop_and_vectorises_over_columns():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((300, 7))
    labels = rng.choice([-1, 0, 1], size=(300, 7), p=[0.05, 0.7, 0.25])
    got = voc_area_ap(scores, labels)
    assert got.shape == (7,)
    for c in range(7):
        assert got[c] == pytest.approx(_reference_area_ap(scores[:, c], labels[:, c]), abs=1e-12)
        assert voc_area_ap(scores[:, c], labels[:, c]) == pytest.approx(got[c], abs=1e-15)


def test_area_ap_without_positives_is_nan_and_bad_input_raises():
    assert np.isnan(voc_area_ap(np.array([0.3, 0.2]), np.array([0, -1])))
    with pytest.raises(ValueError, match="-1 \\(ignore\\), 0 \\(negative\\) or 1"):
        voc_area_ap(np.array([0.3, 0.2]), np.array([2, 0]))
    with pytest.raises(ValueError, match="NaN or inf"):
        voc_area_ap(np.array([np.nan, 0.2]), np.array([1, 0]))
    with pytest.raises(ValueError, match="same shape"):
        voc_area_ap(np.zeros(3), np.zeros(4))


def test_average_precision_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    for trial in range(50):
        n = int(rng.integers(2, 80))
        scores = rng.standard_normal(n)
        if trial % 2:
            scores = np.round(scores, 1)  # many tied scores: a tie group is one threshold
        positive = rng.random(n) < 0.3
        positive[0] = True
        assert average_precision(scores, positive) == pytest.approx(average_precision_score(positive, scores),
                                                                    abs=1e-12)


def test_average_precision_mask_equals_subsetting():
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((200, 3))
    positive = rng.random((200, 3)) < 0.2
    valid = rng.random((200, 3)) < 0.4
    got = average_precision(scores, positive, valid)
    for c in range(3):
        rows = valid[:, c]
        assert got[c] == pytest.approx(average_precision_score(positive[rows, c], scores[rows, c]), abs=1e-12)
