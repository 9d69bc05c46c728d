"""Top-k accuracy (byol_bench.metrics) against scikit-learn's top_k_accuracy_score on identical scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import top_k_accuracy_score

from byol_bench.metrics import TopkCounter, topk_accuracy, topk_correct


# sklearn warns that k >= classes is a perfect score; that case is checked on purpose.
@pytest.mark.filterwarnings("ignore:'k' .* greater than or equal to:sklearn.exceptions.UndefinedMetricWarning")
@pytest.mark.parametrize("classes", [3, 10])
def test_topk_equals_sklearn(classes: int) -> None:
    gen = torch.Generator().manual_seed(classes)
    scores = torch.randn(500, classes, generator=gen)
    targets = torch.randint(0, classes, (500,), generator=gen)
    ours = topk_accuracy(scores, targets, ks=(1, 2, 5))
    for k in (1, 2, 5):
        expected = 100 * top_k_accuracy_score(targets.numpy(), scores.numpy(), k=k, labels=np.arange(classes))
        assert ours[f"top{k}"] == pytest.approx(expected)
    assert ours["top5"] == (100.0 if classes <= 5 else ours["top5"])  # k >= classes counts every row


def test_counts_and_shape_errors() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5]])
    assert topk_correct(scores, torch.tensor([1, 1, 0]), ks=(1, 2)) == {1: 1, 2: 2}
    with pytest.raises(ValueError, match="scores must be"):
        topk_correct(scores[0], torch.tensor([1]))


def test_topk_counter_sums_batches_per_scorer_like_one_big_batch():
    gen = torch.Generator().manual_seed(0)
    scores = {name: torch.randn(50, 7, generator=gen) for name in ("a", "b")}
    targets = torch.randint(0, 7, (50,), generator=gen)
    counter = TopkCounter(["a", "b"], (1, 5))
    for lo, hi in ((0, 13), (13, 40), (40, 50)):  # uneven batches
        for name in ("a", "b"):
            counter.add(name, scores[name][lo:hi], targets[lo:hi])
    result = counter.percent(torch.device("cpu"))
    for name in ("a", "b"):
        expected = topk_accuracy(scores[name], targets, (1, 5))
        assert result[name] == pytest.approx(expected)
    assert result["a"] != result["b"]
