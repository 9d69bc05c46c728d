"""The VOC07 SVM protocol around the solver (PROTOCOLS.md B §2.3, §2.4): cost grids, labels, the 3-fold CV folds and
the cost choice, low-shot sampling and summary; the full and low-shot SVMs equal scikit-learn's pipeline."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import check_cv, cross_val_score
from sklearn.svm import LinearSVC

from benchmarks.voc07_svm.protocol import (
    COST_GRIDS,
    FullSvmResult,
    LowShotResult,
    l2_normalize,
    parse_costs,
    sample_lowshot,
    select_costs,
    stratified_folds,
    train_full_svm,
    train_lowshot_svm,
    training_targets,
)
from benchmarks.voc07_svm.solver import linear_kernel
from byol_bench.metrics import voc_area_ap
from byol_bench.tinydata.svm_features import make_voc_like_problem

# One torch thread, and the shared 600 x 2048 problem: fixtures in tests/conftest.py.


def _reference_svc(cost: float) -> LinearSVC:
    """The reference's classifier (B §2.3), run to (near) the exact optimum that our solver reaches."""
    return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, intercept_scaling=1.0, tol=1e-10, max_iter=100_000)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn(*args, **kwargs)


def test_cost_grids_and_parsing():
    grid = COST_GRIDS["mmselfsup"]
    assert len(grid) == 19 and grid[:4] == (1.0, 10.0, 100.0, 0.0625) and grid[-1] == 0.5**19
    assert len(COST_GRIDS["vissl"]) == 11 and len(COST_GRIDS["goyal"]) == 10
    assert parse_costs("goyal") == COST_GRIDS["goyal"]
    assert parse_costs("1,0.5, 2") == (1.0, 0.5, 2.0)  # grid order is kept: it breaks ties
    for bad in ("cheap", "1,-1", "1,1", ""):
        with pytest.raises(ValueError, match="cost grid"):
            parse_costs(bad)


def test_normalisation_is_the_references():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    out = l2_normalize(x)
    assert out.dtype == torch.float64
    assert torch.allclose(out[0], torch.tensor([3.0, 4.0], dtype=torch.float64) / (5 + 1e-5))
    assert torch.equal(out[1], torch.zeros(2, dtype=torch.float64))


def test_label_handling():
    labels = np.array([[1, 0, -1], [0, -1, 1]])
    assert training_targets(labels).tolist() == [[1, -1, -1], [-1, -1, 1]]  # difficult = negative in training
    # ... and ignored in testing: a difficult image with the top score changes nothing.
    scores = np.array([5.0, 1.0, 0.5, 0.2])
    assert voc_area_ap(scores, np.array([-1, 1, 0, 1])) == voc_area_ap(scores[1:], np.array([1, 0, 1]))


def test_stratified_folds_are_the_folds_cross_val_score_uses():
    # By hand: unshuffled stratification takes each class in index order, a third of it per fold.
    targets = np.array([1.0] * 6 + [-1.0] * 6)
    held_out = [np.setdiff1d(np.arange(12), f).tolist() for f in stratified_folds(targets)]
    assert held_out == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]]
    # The reference's cross_val_score(clf, X, y, cv=3) splits with check_cv(3, y, classifier=True): the same
    # training rows, fold by fold, at VOC07's positive rates (person 40 %, car 14 %, sheep 2 %).
    rng = np.random.default_rng(0)
    for rate in (0.4, 0.14, 0.02):
        targets = np.where(rng.permutation(600) < rate * 600, 1.0, -1.0)
        ref = [train for train, _ in check_cv(3, targets, classifier=True).split(np.zeros((600, 1)), targets)]
        folds = stratified_folds(targets)
        assert len(folds) == 3 and all(np.array_equal(a, b) for a, b in zip(folds, ref, strict=True)), rate
        held_out = np.sort(np.concatenate([np.setdiff1d(np.arange(600), f) for f in folds]))
        assert held_out.tolist() == list(range(600))  # each image held out exactly once


def test_cost_selection_ties_go_to_the_first_in_grid_order():
    assert select_costs(np.array([[0.5, 0.7, 0.7], [0.9, 0.9, 0.1]])).tolist() == [1, 0]


def test_full_svm_cv_and_refit_match_sklearn(problem):
    """CV fold APs, the chosen cost and the refit's test AP of two classes at full feature width (2048)."""
    x, y_tr, x_te, y_te = problem
    costs = (1e-3, 1.0)
    full = train_full_svm(x, y_tr, x_te, y_te, costs)
    assert full.cv_fold_ap.shape == (20, 2, 3) and full.test_ap.shape == (20, 2)
    for c in (6, 16):
        ref_cv = np.zeros((2, 3))
        for j, cost in enumerate(costs):
            targets = training_targets(y_tr)[:, c]
            ref_cv[j] = _quiet(cross_val_score, _reference_svc(cost), x.numpy(), targets, cv=3,
                               scoring="average_precision")
            assert np.abs(full.cv_fold_ap[c, j] - ref_cv[j]).max() * 100 <= 0.05
            refit = _quiet(_reference_svc(cost).fit, x.numpy(), targets)
            ref_test = voc_area_ap(refit.decision_function(x_te.numpy()), y_te[:, c])
            assert abs(full.test_ap[c, j] - ref_test) * 100 <= 0.05
        assert abs(ref_cv[0].mean() - ref_cv[1].mean()) > 1e-3  # an unambiguous choice
        assert full.chosen[c] == np.argmax(ref_cv.mean(axis=1))


def test_full_svm_is_the_sklearn_pipeline_on_every_class():
    """B §2.3 end to end on a small problem: every class, every cost, CV -> choice -> refit -> test mAP."""
    x_tr, y_tr, x_te, y_te = make_voc_like_problem(240, 160, 32, seed=2)
    x, x_te = l2_normalize(x_tr), l2_normalize(x_te)
    costs = (1e-2, 1.0, 100.0)
    full = train_full_svm(x, y_tr, x_te, y_te, costs)
    targets = training_targets(y_tr)
    ref_cv, ref_test = np.zeros((20, 3, 3)), np.zeros((20, 3))
    for c in range(20):
        for j, cost in enumerate(costs):
            ref_cv[c, j] = _quiet(cross_val_score, _reference_svc(cost), x.numpy(), targets[:, c], cv=3,
                                  scoring="average_precision")
            refit = _quiet(_reference_svc(cost).fit, x.numpy(), targets[:, c])
            ref_test[c, j] = voc_area_ap(refit.decision_function(x_te.numpy()), y_te[:, c])
    np.testing.assert_allclose(full.cv_fold_ap, ref_cv, rtol=0, atol=5e-4)
    np.testing.assert_allclose(full.test_ap, ref_test, rtol=0, atol=5e-4)
    mean_cv = ref_cv.mean(axis=2)
    assert np.diff(np.sort(mean_cv, axis=1), axis=1).min() > 1e-4  # no near-ties: an unambiguous choice
    chosen = mean_cv.argmax(axis=1)
    assert len(set(chosen.tolist())) == 3  # every cost wins somewhere: a fixed choice would show
    assert full.chosen.tolist() == chosen.tolist()
    assert full.map == pytest.approx(100 * ref_test[np.arange(20), chosen].mean(), abs=0.05)


def test_full_svm_result_reports_the_chosen_costs_test_ap():
    test_ap = np.array([[0.5, 0.7], [0.9, 0.1], [0.2, 0.4]])
    res = FullSvmResult(costs=(0.1, 1.0), cv_fold_ap=np.zeros((3, 2, 3)), test_ap=test_ap,
                        chosen=np.array([1, 0, 1]), newton_iters=1, max_rel_grad=0.0)
    assert res.class_ap.tolist() == [0.7, 0.9, 0.4]
    assert res.map == pytest.approx(200 / 3)


def test_lowshot_sampling_is_seeded_and_follows_the_protocol():
    _, labels, _, _ = make_voc_like_problem(1000, 10, 8, seed=3)
    subsets = sample_lowshot(labels, ks=(1, 4), n_samples=2, seed=7)
    assert set(subsets) == {(0, 1), (0, 4), (1, 1), (1, 4)}
    rows = subsets[(1, 4)]
    assert rows.shape == (20, 80)
    for c in range(20):
        assert (labels[rows[c, :4], c] == 1).all() and (labels[rows[c, 4:], c] == 0).all()  # never -1
        assert len(np.unique(rows[c])) == 80
    again = sample_lowshot(labels, ks=(4,), n_samples=2, seed=7)  # a draw does not depend on the other k
    assert all(np.array_equal(subsets[key], again[key]) for key in again)
    assert not np.array_equal(sample_lowshot(labels, (4,), 1, seed=8)[(0, 4)], subsets[(0, 4)])
    with pytest.raises(ValueError, match="drop k=96"):
        sample_lowshot(labels, ks=(96,), n_samples=1)


def test_lowshot_summary_picks_the_best_mean_cost():
    class_ap = np.zeros((3, 1, 20, 2))
    class_ap[:, 0, :, 0] = np.array([10.0, 20.0, 30.0])[:, None]  # cost 0: mean 20
    class_ap[:, 0, :, 1] = np.array([20.0, 20.0, 20.0])[:, None]  # cost 1: mean 20 too -> tie -> cost 0
    res = LowShotResult(costs=(0.1, 1.0), ks=(1,), class_ap=class_ap, newton_iters=1, max_rel_grad=0.0)
    res.summarize()
    assert res.summary[1] == pytest.approx({"mean": 20.0, "min": 10.0, "max": 30.0, "std": np.std([10, 20, 30]),
                                            "cost": 0.1})


def test_lowshot_svm_matches_sklearn_per_subset(problem):
    x, y_tr, x_te, y_te = problem
    subsets = sample_lowshot(y_tr, ks=(1, 2), n_samples=2, seed=0)
    costs = (1e-3, 1.0)
    res = train_lowshot_svm(linear_kernel(x, x), linear_kernel(x_te, x), y_tr, y_te, subsets, costs)
    assert res.class_ap.shape == (2, 2, 20, 2) and set(res.summary) == {1, 2}
    targets = training_targets(y_tr)
    for s, ki, k, c, j in ((0, 0, 1, 3, 0), (1, 1, 2, 14, 1), (1, 0, 1, 16, 1)):
        rows = subsets[(s, k)][c]
        ref = _quiet(_reference_svc(costs[j]).fit, x[rows].numpy(), targets[rows, c])
        ref_ap = 100 * voc_area_ap(ref.decision_function(x_te.numpy()), y_te[:, c])
        assert res.class_ap[s, ki, c, j] == pytest.approx(ref_ap, abs=0.05)
