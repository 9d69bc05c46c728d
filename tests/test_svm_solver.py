"""The batched SVM solver reaches scikit-learn's LinearSVC optimum (the protocol around it: test_svm_protocol.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from benchmarks.voc07_svm.protocol import l2_normalize, training_targets
from benchmarks.voc07_svm.solver import SolverOptions, linear_kernel, solve_kernel_svms
from byol_bench.metrics import voc_area_ap

COSTS = (0.5**19, 1e-3, 0.0625, 1.0, 100.0)  # both ends of the mmselfsup grid and the middle
CLASSES = (0, 6, 14, 16)  # aeroplane, car, person (40 % positives), sheep (2 %)


# One torch thread, and the shared 600 x 2048 problem: fixtures in tests/conftest.py.


def _sklearn(x: torch.Tensor, targets: np.ndarray, cost: float, tight: bool) -> LinearSVC:
    # tight: run liblinear to (near) the exact optimum; otherwise the reference's settings (tol 1e-4, 2000 iters).
    params = {"tol": 1e-10, "max_iter": 100_000} if tight else {"tol": 1e-4, "max_iter": 2000}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, intercept_scaling=1.0, **params).fit(x.numpy(), targets)


def _solve(x: torch.Tensor, targets: np.ndarray, costs, options=SolverOptions()) -> torch.Tensor:
    """Our solution for every (cost, class) column, as sample-space coefficients (n, costs x classes)."""
    y = torch.as_tensor(np.tile(targets, (1, len(costs))))
    w = torch.where(y > 0, 2.0, 1.0) * torch.as_tensor(costs, dtype=torch.float64).repeat_interleave(targets.shape[1])
    sol = solve_kernel_svms(linear_kernel(x, x)[None], y[None], w[None], options=options)
    assert sol.max_rel_grad <= options.tol
    return sol.beta[0]


def test_same_optimum_as_sklearn(problem):
    """Decision values within 1e-3 relative (we get ~1e-8) and AP within 0.05 points of tight LinearSVC."""
    x, y_tr, x_te, y_te = problem
    targets = training_targets(y_tr)[:, CLASSES]
    beta = _solve(x, targets, COSTS)
    scores = (linear_kernel(x_te, x) @ beta).numpy()
    # The primal classifier, as LinearSVC stores it: w = X^T beta, b = sum(beta) (intercept_scaling = 1).
    coef, intercept = (x.T @ beta).numpy(), beta.sum(0).numpy()
    for j, cost in enumerate(COSTS):
        for i, c in enumerate(CLASSES):
            col = j * len(CLASSES) + i
            ref = _sklearn(x, targets[:, i], cost, tight=True)
            ref_scores = ref.decision_function(x_te.numpy())
            assert np.abs(scores[:, col] - ref_scores).max() <= 1e-3 * np.abs(ref_scores).max()
            assert np.allclose(coef[:, col], ref.coef_[0], rtol=0, atol=1e-4 * np.abs(ref.coef_).max())
            assert intercept[col] == pytest.approx(ref.intercept_[0], abs=1e-4 * max(1.0, abs(ref.intercept_[0])))
            ap, ref_ap = voc_area_ap(scores[:, col], y_te[:, c]), voc_area_ap(ref_scores, y_te[:, c])
            assert abs(ap - ref_ap) * 100 <= 0.05


def test_same_optimum_on_embedded_voc07_features(tiny_data):
    """The same check on real protocol features: random-init ResNet-18 feat5 of the embedded VOC07 images."""
    from byol_bench.backbone import build_resnet
    from byol_bench.datasets.voc_cls import VOCClassification
    from byol_bench.features import extract_features, squash_transform

    torch.manual_seed(0)
    model = build_resnet("resnet18").eval()
    transform, _ = squash_transform()
    feats, labels = {}, {}
    for split in ("trainval", "test"):
        data = VOCClassification(tiny_data / "VOCdevkit", split, transform)
        keep = list(range(min(len(data), 96)))  # a few positives of most classes; forward passes are slow
        feats[split] = l2_normalize(extract_features(model, torch.utils.data.Subset(data, keep), ["feat5"],
                                                     batch_size=32, num_workers=0, device=torch.device("cpu"),
                                                     cache_dir=None, key="", desc=split)["feat5"])
        labels[split] = data.labels[keep]
    x, x_te = feats["trainval"], feats["test"]
    classes = [c for c in range(20) if (labels["test"][:, c] == 1).any() and (labels["trainval"][:, c] == 1).any()]
    assert len(classes) >= 5
    classes = classes[:5]
    targets = training_targets(labels["trainval"])[:, classes]
    costs = (1e-4, 0.0625, 10.0)
    scores = (linear_kernel(x_te, x) @ _solve(x, targets, costs)).numpy()
    for j, cost in enumerate(costs):
        for i, c in enumerate(classes):
            ref = _sklearn(x, targets[:, i], cost, tight=True).decision_function(x_te.numpy())
            ours = scores[:, j * len(classes) + i]
            assert np.abs(ours - ref).max() <= 1e-3 * np.abs(ref).max()
            assert abs(voc_area_ap(ours, labels["test"][:, c]) - voc_area_ap(ref, labels["test"][:, c])) * 100 <= 0.05


def test_direct_and_iterative_newton_systems_agree(problem):
    x, y_tr, _, _ = problem
    targets = training_targets(y_tr)[:, CLASSES]
    costs = (1e-3, 0.0625, 10.0)
    direct = _solve(x, targets, costs, SolverOptions(direct_cost_in_matvecs=1e9))  # every system by Cholesky
    iterative = _solve(x, targets, costs, SolverOptions(direct_cost_in_matvecs=0.0))  # every system by PCG
    # float32 CG only in the loose early steps (the default) or never: the same float64 optimum either way.
    float64_only = _solve(x, targets, costs, SolverOptions(direct_cost_in_matvecs=0.0, float32_cg_rtol=0.0))
    k = linear_kernel(x, x)
    for other in (iterative, float64_only):
        assert torch.allclose(k @ direct, k @ other, rtol=0, atol=1e-6 * float((k @ direct).abs().max()))


def test_zero_weight_rows_are_outside_the_problem(problem):
    """A CV fold is a row mask: same solution as solving on the sub-kernel of the kept rows."""
    x, y_tr, _, _ = problem
    y = torch.as_tensor(training_targets(y_tr)[:, [14]])
    keep = torch.arange(len(x)) % 3 != 0
    w = torch.where(y > 0, 2.0, 1.0) * keep[:, None]
    k = linear_kernel(x, x)
    masked = solve_kernel_svms(k[None], y[None], w[None])
    sub = solve_kernel_svms(k[keep][:, keep][None], y[keep][None], w[keep][None])
    assert torch.all(masked.beta[0][~keep] == 0)
    assert torch.allclose(masked.beta[0][keep], sub.beta[0], atol=1e-9)
    # Held-out rows still get decision values: the CV scores.
    assert torch.allclose(masked.scores[0], k[:, keep] @ sub.beta[0], atol=1e-9)
