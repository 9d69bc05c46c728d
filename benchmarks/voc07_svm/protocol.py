"""The VOC07 SVM protocol around the solver: cost grids, 3-fold CV and cost choice, low-shot sampling and summary.

Read this file against PROTOCOLS.md A.3 and B §2.3-2.4; the solver (``benchmarks/voc07_svm/solver.py``) only has to
reach
scikit-learn's optimum. Labels are VOC's {1 present, 0 absent, -1 difficult only}:

* full SVM (B §2.3): per class and cost, ``StratifiedKFold(3)`` without shuffle on trainval, the cost with the best
  mean CV average precision (scikit-learn's, ties to the first cost in grid order), refit on all of trainval;
  difficult-only images are negatives in training and ignored on the test set (VOC "area" AP);
* low-shot (B §2.4): per sample and k, independently per class, k positives + 19k negatives drawn without
  replacement (difficult never drawn), no CV, every cost tested; per k the cost with the best mean test mAP over
  the samples, reported as mean/min/max/std (``np.std``, ddof 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from benchmarks.voc07_svm.solver import SolverOptions, linear_kernel, solve_kernel_svms, top_eigenpairs
from byol_bench.metrics import average_precision, voc_area_ap
from byol_bench.seeding import rng_for

# Cost grids (order matters: ties in the CV score go to the first cost in grid order).
COST_GRIDS: dict[str, tuple[float, ...]] = {
    # mmselfsup v0.5.0: tools/benchmarks/classification/svm_voc07/eval_svm_full.sh passes "1.0,10.0,100.0" and
    # svm_helper.parse_cost_list appends 0.5**n for n in range(4, 20): 19 costs.
    "mmselfsup": (1.0, 10.0, 100.0, *(0.5**n for n in range(4, 20))),
    # VISSL: configs/config/benchmark/linear_image_classification/voc07/eval_resnet_8gpu_transfer_voc07_svm.yaml,
    # SVM.costs.costs_list.
    "vissl": (0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 50.0, 100.0, 1000.0),
    # Goyal et al. 2019, facebookresearch/fair_self_supervision_benchmark GETTING_STARTED.md (train_svm_kfold.py
    # --costs_list "0.0000001,0.000001,0.00001,0.0001,0.001,0.01,0.1,1.0,10.0,100.0").
    "goyal": (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0),
}
# LinearSVC(class_weight={1: 2, -1: 1}) in every reference script.
POSITIVE_WEIGHT = 2.0
NEGATIVE_WEIGHT = 1.0
LOWSHOT_KS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 96)
LOWSHOT_NEGATIVES_PER_POSITIVE = 19



def parse_costs(spec: str) -> tuple[float, ...]:
    """Turn ``"mmselfsup"``, ``"vissl"``, ``"goyal"`` or ``"0.1,1,10"`` into a tuple of costs (grid order kept)."""
    if spec in COST_GRIDS:
        return COST_GRIDS[spec]
    try:
        costs = tuple(float(c) for c in spec.split(",") if c.strip())
    except ValueError:
        raise ValueError(f"cost grid {spec!r} is neither a grid name ({', '.join(COST_GRIDS)}) nor a comma-"
                         "separated list of numbers; fix --costs / costs=") from None
    if not costs or any(not (c > 0 and math.isfinite(c)) for c in costs):
        raise ValueError(f"cost grid {spec!r} must hold positive finite numbers; fix --costs / costs=")
    if len(set(costs)) != len(costs):
        raise ValueError(f"cost grid {spec!r} repeats a value; fix --costs / costs=")
    return costs


def l2_normalize(features: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """Cast to float64 and L2-normalise each row as the reference does: x / (||x|| + 1e-5)."""
    x = torch.as_tensor(features).to(device=device, dtype=torch.float64)
    return x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + 1e-5)


def training_targets(labels: np.ndarray) -> np.ndarray:
    """VOC labels {1, 0, -1} -> SVM targets {+1, -1, -1}: difficult-only images are negatives in training."""
    return np.where(np.asarray(labels) == 1, 1.0, -1.0)


def stratified_folds(targets: np.ndarray, n_folds: int = 3) -> list[np.ndarray]:
    """Training-row indices of each fold: scikit-learn's StratifiedKFold(n_folds, shuffle=False), as
    ``cross_val_score(cv=3)`` uses for a classifier."""
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=False)
    return [train for train, _ in splitter.split(np.zeros((len(targets), 1)), targets)]


def select_costs(scores: np.ndarray) -> np.ndarray:
    """Index of the best cost per row of ``scores`` (rows x costs in grid order); ties go to the first cost."""
    return np.argmax(scores, axis=1)  # argmax returns the first maximum


@dataclass
class FullSvmResult:
    """Full-data SVM on one layer. APs are fractions; ``map`` is x100 (the table's unit)."""

    costs: tuple[float, ...]  # grid order
    cv_fold_ap: np.ndarray  # (classes, costs, folds) average precision on each held-out fold
    test_ap: np.ndarray  # (classes, costs) VOC area AP on the test set of the model refit on trainval
    chosen: np.ndarray  # (classes,) index into costs
    newton_iters: int
    max_rel_grad: float

    @property
    def class_ap(self) -> np.ndarray:
        """Test AP per class at its chosen cost."""
        return self.test_ap[np.arange(len(self.chosen)), self.chosen]

    @property
    def map(self) -> float:
        """mAP x 100 over classes at the chosen costs."""
        return float(100 * self.class_ap.mean())


def train_full_svm(train_features: torch.Tensor, train_labels: np.ndarray, test_features: torch.Tensor,
                   test_labels: np.ndarray, costs: Sequence[float], n_folds: int = 3,
                   options: SolverOptions = SolverOptions(),
                   kernels: tuple[torch.Tensor, torch.Tensor] | None = None) -> FullSvmResult:
    """Per class: n-fold CV on trainval picks the cost by mean AP, the model refit on trainval is tested.

    Args:
        train_features: (n, d) L2-normalised float64 features (:func:`l2_normalize`).
        train_labels: (n, classes) VOC labels in {1, 0, -1}; -1 is trained as a negative.
        test_features: (q, d) L2-normalised features.
        test_labels: (q, classes) VOC labels; -1 is excluded from the AP.
        costs: the cost grid, in grid order (ties in CV AP go to the first).
        n_folds: CV folds (3 in the reference).
        options: solver options.
        kernels: precomputed (K_train, K_test) from :func:`linear_kernel`, to share with the low-shot pass.

    Returns:
        CV and test APs for every (class, cost), the chosen costs and solver statistics.
    """
    k_train, k_test = kernels or (linear_kernel(train_features, train_features),
                                  linear_kernel(test_features, train_features))
    targets = training_targets(train_labels)
    n, n_classes = targets.shape
    device = k_train.device
    # Columns: for every class, the n_folds CV problems then the refit on all of trainval.
    per_class = n_folds + 1
    masks = np.zeros((n, n_classes * per_class))
    folds = []
    for c in range(n_classes):
        folds.append(stratified_folds(targets[:, c], n_folds))
        for f, rows in enumerate(folds[-1]):
            masks[rows, c * per_class + f] = 1.0
        masks[:, c * per_class + n_folds] = 1.0
    y = torch.as_tensor(np.repeat(targets, per_class, axis=1), dtype=torch.float64, device=device)
    base = torch.as_tensor(masks, device=device) * torch.where(y > 0, POSITIVE_WEIGHT, NEGATIVE_WEIGHT)

    cv_fold_ap = np.zeros((n_classes, len(costs), n_folds))
    test_ap = np.zeros((n_classes, len(costs)))
    beta = None
    eigenpairs = top_eigenpairs(k_train[None], options.nystrom_rank)
    newton_iters, max_rel = 0, 0.0
    # Ascending costs so that each solution warm-starts the next (the optimum moves smoothly with C).
    for j in sorted(range(len(costs)), key=lambda i: costs[i]):
        sol = solve_kernel_svms(k_train[None], y[None], costs[j] * base[None], beta, options, eigenpairs)
        beta = sol.beta
        newton_iters, max_rel = max(newton_iters, sol.newton_iters), max(max_rel, sol.max_rel_grad)
        scores = sol.scores[0].cpu().numpy()
        for c in range(n_classes):
            held_out = masks[:, c * per_class:c * per_class + n_folds] == 0
            cols = scores[:, c * per_class:c * per_class + n_folds]
            cv_fold_ap[c, j] = average_precision(cols, np.repeat(targets[:, c:c + 1] > 0, n_folds, axis=1),
                                                 held_out)
        refit = sol.beta[0][:, n_folds::per_class]
        test_ap[:, j] = voc_area_ap((k_test @ refit).cpu().numpy(), test_labels)
    return FullSvmResult(costs=tuple(costs), cv_fold_ap=cv_fold_ap, test_ap=test_ap,
                         chosen=select_costs(cv_fold_ap.mean(axis=2)),
                         newton_iters=newton_iters, max_rel_grad=max_rel)


def sample_lowshot(train_labels: np.ndarray, ks: Sequence[int] = LOWSHOT_KS, n_samples: int = 5, seed: int = 0
                   ) -> dict[tuple[int, int], np.ndarray]:
    """Seeded low-shot training subsets (B §2.4, with a seed where the reference has none).

    For every sample s and k, independently for every class: k images labelled 1 and 19k labelled 0, drawn
    without replacement; difficult (-1) images are never drawn. Each (sample, k) uses its own generator,
    ``rng_for(seed, s, k)``, so a draw does not depend on which other k are run.

    Returns:
        ``{(s, k): indices}`` with indices of shape (classes, 20k): the k positives first, then the negatives.
    """
    labels = np.asarray(train_labels)
    subsets = {}
    for s in range(n_samples):
        for k in ks:
            rng = rng_for(seed, s, k)
            rows = []
            for c in range(labels.shape[1]):
                pos = np.flatnonzero(labels[:, c] == 1)
                neg = np.flatnonzero(labels[:, c] == 0)
                n_neg = LOWSHOT_NEGATIVES_PER_POSITIVE * k
                if len(pos) < k or len(neg) < n_neg:
                    raise ValueError(f"low-shot k={k} needs {k} positives and {n_neg} negatives of class {c}, the "
                                     f"training set has {len(pos)} and {len(neg)}; drop k={k} from lowshot_ks")
                rows.append(np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, n_neg, replace=False)]))
            subsets[(s, k)] = np.stack(rows)
    return subsets


def lowshot_ks_held(train_labels: np.ndarray, ks: Sequence[int]) -> tuple[int, ...]:
    """The ``ks`` whose samples the training set can draw: k positives and 19k negatives in every class."""
    labels = np.asarray(train_labels)
    positives, negatives = (labels == 1).sum(0).min(), (labels == 0).sum(0).min()
    return tuple(k for k in ks if k <= positives and LOWSHOT_NEGATIVES_PER_POSITIVE * k <= negatives)


@dataclass
class LowShotResult:
    """Low-shot SVM on one layer: test mAP (x100) for every sample, k and cost, and the published summary."""

    costs: tuple[float, ...]
    ks: tuple[int, ...]
    class_ap: np.ndarray  # (samples, ks, classes, costs) test AP, x100
    newton_iters: int
    max_rel_grad: float
    summary: dict[int, dict[str, float]] = field(default_factory=dict)  # k -> mean/min/max/std/cost

    @property
    def map(self) -> np.ndarray:
        """(samples, ks, costs) mean test AP over classes, x100."""
        return self.class_ap.mean(axis=2)

    def summarize(self) -> None:
        """Per k: statistics over samples per cost; the cost with the best mean wins (ties: grid order)."""
        for i, k in enumerate(self.ks):
            per_cost = self.map[:, i, :]
            best = int(select_costs(per_cost.mean(0)[None])[0])
            vals = per_cost[:, best]
            self.summary[k] = {"mean": float(vals.mean()), "min": float(vals.min()), "max": float(vals.max()),
                               "std": float(vals.std()), "cost": float(self.costs[best])}


def train_lowshot_svm(k_train: torch.Tensor, k_test: torch.Tensor, train_labels: np.ndarray,
                      test_labels: np.ndarray, subsets: dict[tuple[int, int], np.ndarray],
                      costs: Sequence[float], options: SolverOptions = SolverOptions()) -> LowShotResult:
    """Train every low-shot SVM (sample x k x class x cost) and test it on the full test set.

    Args:
        k_train: (n, n) trainval kernel from :func:`linear_kernel` (sub-blocks are the low-shot problems).
        k_test: (q, n) test-vs-trainval kernel.
        train_labels: (n, classes) VOC labels; the sampled rows are 1 or 0.
        test_labels: (q, classes) VOC labels; -1 excluded from the AP.
        subsets: from :func:`sample_lowshot`.
        costs: cost grid in grid order.
        options: solver options.

    Returns:
        The mAP array and its per-k summary (cost chosen on the test set, as published).
    """
    samples = sorted({s for s, _ in subsets})
    ks = tuple(sorted({k for _, k in subsets}))
    n_classes = train_labels.shape[1]
    device = k_train.device
    cost_t = torch.as_tensor(costs, dtype=torch.float64, device=device)
    targets = torch.as_tensor(training_targets(train_labels), device=device)
    # The trainval kernel's top eigenvectors, restricted to a subset's rows, are a low-rank approximation of the
    # subset's kernel: a preconditioner as good as the subset's own eigenpairs, at no cost per subset.
    eigvecs, eigvals = top_eigenpairs(k_train[None], options.nystrom_rank)
    k_test_t = k_test.T.contiguous()
    result = np.zeros((len(samples), len(ks), n_classes, len(costs)))
    newton_iters, max_rel = 0, 0.0
    for ki, k in enumerate(ks):
        # One batch item per (sample, class): its sub-kernel, targets and weights for all costs at once.
        rows = torch.as_tensor(np.concatenate([subsets[(s, k)] for s in samples]), device=device)  # (S*C, m)
        cls = torch.arange(n_classes, device=device).repeat(len(samples))
        m = rows.shape[1]
        chunk = max(1, min(len(rows), (1 << 25) // (m * m)))  # sub-kernels of at most 256 MiB per chunk
        aps = np.zeros((len(rows), len(costs)))
        for start in range(0, len(rows), chunk):
            r, c = rows[start:start + chunk], cls[start:start + chunk]
            sub = k_train[r[:, :, None], r[:, None, :]]
            y = targets[r, c[:, None]]
            w = torch.where(y > 0, POSITIVE_WEIGHT, NEGATIVE_WEIGHT)[:, :, None] * cost_t
            eig = (eigvecs[0][r], eigvals.expand(len(r), -1))
            sol = solve_kernel_svms(sub, y[:, :, None].expand(-1, -1, len(costs)).contiguous(), w, None, options,
                                    eig)
            newton_iters, max_rel = max(newton_iters, sol.newton_iters), max(max_rel, sol.max_rel_grad)
            scores = _test_scores(k_test_t, r, sol.beta).cpu().numpy()
            col_labels = np.repeat(test_labels[:, c.cpu().numpy()], len(costs), axis=1)
            aps[start:start + len(r)] = voc_area_ap(scores, col_labels).reshape(len(r), len(costs))
        result[:, ki] = 100 * aps.reshape(len(samples), n_classes, len(costs))
    out = LowShotResult(costs=tuple(costs), ks=ks, class_ap=result, newton_iters=newton_iters,
                        max_rel_grad=max_rel)
    out.summarize()
    return out


def _test_scores(k_test_t: torch.Tensor, rows: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Decision values on the test set, K_test[:, rows_b] @ beta_b for every batch item: (q, B * P).

    ``k_test_t`` is the transposed (n, q) test kernel, contiguous, so that gathering training rows copies
    contiguous memory.
    """
    batch, m, n_costs = beta.shape
    if batch * m <= k_test_t.shape[0]:
        # Few rows in all: gather the test-kernel rows (B*m x q) and multiply per item.
        picked = k_test_t.index_select(0, rows.flatten()).view(batch, m, -1)  # (B, m, q)
        return (beta.mT @ picked).permute(2, 0, 1).reshape(k_test_t.shape[1], batch * n_costs)
    # Many rows: scatter beta into trainval-sized columns and do one GEMM (a subset's rows are distinct).
    full = torch.zeros(k_test_t.shape[0], batch * n_costs, dtype=beta.dtype, device=beta.device)
    col = torch.arange(batch * n_costs, device=beta.device).view(batch, 1, n_costs)
    full[rows[:, :, None].expand_as(beta), col.expand_as(beta)] = beta
    return k_test_t.T @ full


