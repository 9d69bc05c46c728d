"""Batched exact solver for the VOC07 linear SVMs, and the protocol math around it (PROTOCOLS.md A.3, B §2).

The classifier is the one scikit-learn's ``LinearSVC(C, class_weight={1: 2, -1: 1}, loss="squared_hinge",
penalty="l2", intercept_scaling=1)`` fits (liblinear, dual coordinate descent):

    min_{w, b}  1/2 (||w||^2 + b^2) + C * sum_i c_i * max(0, 1 - y_i (w . x_i + b))^2,   c_i = 2 if y_i = +1 else 1

The bias is regularised because liblinear treats it as one more feature of constant value ``intercept_scaling``.
The objective is strictly convex, so the optimum is unique and any exact method reaches the same classifier;
``tests/test_svm_solver.py`` checks that against scikit-learn.

How this solver gets its speed (the reference fits 20 classes x 19 costs x 4 folds = 1,520 separate SVMs):

* **Sample space.** Every weight vector is w = sum_i beta_i x_i (representer theorem), so the problem only needs
  the kernel K = X X^T + 1 (the +1 is the regularised bias). K is computed once per layer and shared by every
  class, cost, CV fold (a fold is a row mask) and low-shot subset (a sub-block).
* **Newton on the active set** (Chapelle 2007, "Training a support vector machine in the primal"; Keerthi &
  DeCoste 2005, "A modified finite Newton method"): with A = {i : y_i f_i < 1} fixed the loss is quadratic and
  its minimiser solves (K_AA + diag(1 / (2 C c_i))) beta_A = y_A. Iterate with an exact line search along the
  piecewise-quadratic objective; this terminates after a handful of steps.
* **Batched linear algebra.** The Newton systems of all problems are solved together: small active sets by
  batched Cholesky, large ones by preconditioned CG whose matrix products are one GEMM over all columns. The CG
  preconditioner is a Nystrom approximation (top eigenpairs of K, shared) plus the exact diagonal, applied with
  the Woodbury identity per column.
* **Warm starts** along the cost path (ascending costs) for the full-data SVM.

Everything runs in float64 (as the reference casts the features to float64), on CPU or GPU.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from byol_bench.metrics import average_precision, voc_area_ap

# --------------------------------------------------------------------------------------------------------------
# Cost grids (order matters: ties in the CV score go to the first cost in grid order).
# --------------------------------------------------------------------------------------------------------------
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


def linear_kernel(a: torch.Tensor, b: torch.Tensor, bias: float = 1.0) -> torch.Tensor:
    """``a @ b.T + bias**2``: the kernel of the features augmented by the constant bias feature."""
    return torch.addmm(torch.full((a.shape[0], b.shape[0]), bias * bias, dtype=a.dtype, device=a.device), a, b.T)


# --------------------------------------------------------------------------------------------------------------
# The batched solver.
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SolverOptions:
    """Knobs of :func:`solve_kernel_svms`; the defaults reach scikit-learn's optimum to ~1e-9 relative."""

    # Stop when (a bound on) ||grad|| <= tol * ||grad at w=0|| for every problem. 1e-7 puts the decision values
    # within ~1e-8 relative of scikit-learn run to tol=1e-10 (tests/test_svm_solver.py asks for 1e-3).
    tol: float = 1e-7
    max_newton_iters: int = 60  # Newton steps per problem (typically 3-8 with warm starts)
    # An active set of size s is solved by Cholesky (s^3/3 flops) when that costs at most this many kernel
    # products (m^2 flops each, what one PCG iteration costs; Cholesky runs at a fraction of GEMM speed).
    direct_cost_in_matvecs: float = 10.0
    nystrom_rank: int = 64  # eigenpairs of K in the CG preconditioner
    max_cg_iters: int = 2000  # per Newton step; a safety net, CG stops on its residual first
    direct_batch_elements: int = 1 << 24  # float64 entries per batched Cholesky chunk (128 MiB)
    # Newton steps whose CG tolerance is at least this loose run CG in float32 (a float32 copy of the kernel;
    # ~1.3x faster GEMMs). The gradient, line search and the final, tight steps stay float64, so the optimum
    # does not change (inexact Newton); 0 disables it.
    float32_cg_rtol: float = 1e-5


@dataclass
class KernelSvmSolution:
    """Result of :func:`solve_kernel_svms` for a batch of problems."""

    beta: torch.Tensor  # (B, m, P) sample-space coefficients: w = sum_i beta_i x_i, b = bias * sum_i beta_i
    scores: torch.Tensor  # (B, m, P) decision values on the m rows (held-out rows included)
    newton_iters: int  # Newton steps taken by the slowest problem
    max_rel_grad: float  # max over problems of a bound on ||grad|| / ||grad(0)|| at the returned point


def solve_kernel_svms(kernel: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                      beta0: torch.Tensor | None = None, options: SolverOptions = SolverOptions(),
                      eigenpairs: tuple[torch.Tensor, torch.Tensor] | None = None) -> KernelSvmSolution:
    """Solve B x P squared-hinge SVMs that share, per batch item, one kernel matrix.

    Problem (b, p) is ``min_w 1/2 ||w||^2 + sum_i weights[b,i,p] * max(0, 1 - labels[b,i,p] * f_i)^2`` with
    f = K beta. ``weights`` carry C times the class weight; a zero weight removes the row from the problem
    (held-out fold rows), its score is still returned.

    Args:
        kernel: (B, m, m) symmetric PSD kernel(s), float64.
        labels: (B, m, P) targets in {-1, +1}.
        weights: (B, m, P) non-negative per-row loss weights.
        beta0: optional (B, m, P) warm start (e.g. the solution at the previous cost).
        options: tolerances and batching limits.
        eigenpairs: optional ``top_eigenpairs(kernel, options.nystrom_rank)``, to share between calls.

    Returns:
        The coefficients, the decision values on all m rows, and convergence figures.
    """
    if kernel.ndim != 3 or kernel.shape[1] != kernel.shape[2]:
        raise ValueError(f"kernel must be (B, m, m), got {tuple(kernel.shape)}")
    if labels.shape != weights.shape or labels.shape[:2] != kernel.shape[:2]:
        raise ValueError(f"labels {tuple(labels.shape)} / weights {tuple(weights.shape)} must be (B, m, P) for a "
                         f"kernel of shape {tuple(kernel.shape)}")
    if bool((weights < 0).any()):
        raise ValueError("weights must be non-negative (C times the class weight, 0 for unused rows)")
    kernel = kernel.contiguous()
    labels, weights = labels.to(kernel.dtype), weights.to(kernel.dtype)
    in_problem = weights > 0
    beta = torch.zeros_like(weights) if beta0 is None else beta0 * in_problem
    scores = kernel @ beta
    weighted_targets = weights * labels
    grad0 = 2 * _k_norm(kernel, weighted_targets)
    # ||X~^T v|| <= sqrt(trace K) ||v||: a cheap, safe bound on the gradient norm (no kernel product needed).
    sqrt_trace = kernel.diagonal(dim1=1, dim2=2).sum(1).sqrt()[:, None]
    eigvecs, eigvals = eigenpairs or top_eigenpairs(kernel, options.nystrom_rank)
    residual_diag = (kernel.diagonal(dim1=1, dim2=2) - (eigvecs**2 * eigvals[:, None, :]).sum(2)).clamp_min(0)
    exact = _CgOperands(kernel, eigvecs, eigvals, residual_diag)
    low_precision: _CgOperands | None = None  # float32 copies, made on first use

    rel = torch.ones_like(grad0)
    iters = 0
    for iters in range(options.max_newton_iters + 1):
        # Only problems that have not converged are worked on; the others keep their beta and scores.
        cols = torch.nonzero((rel > options.tol).any(0)).flatten()
        if cols.numel() == 0:
            break
        y, w, b, f = (t.index_select(2, cols) for t in (labels, weights, beta, scores))
        active = (y * f < 1) & (w > 0)
        loss_weights = w * active
        grad_preimage = b + 2 * loss_weights * (f - y)  # grad_w = X~^T grad_preimage
        norm0 = grad0.index_select(1, cols)
        grad_bound = sqrt_trace * torch.linalg.vector_norm(grad_preimage, dim=1)
        rel_cols = torch.where(norm0 > 0, grad_bound / norm0.clamp_min(1e-300), 0.0)
        rel[:, cols] = rel_cols
        live = rel_cols > options.tol
        if iters == options.max_newton_iters or not bool(live.any()):
            break
        # _newton_points asks CG for rtol = 1e-2 x rel: make the float32 copies once some problem will use them.
        if (low_precision is None and options.float32_cg_rtol > 0
                and bool((rel_cols[live] >= 100 * options.float32_cg_rtol).any())):
            low_precision = _CgOperands(kernel.float(), eigvecs.float(), eigvals.float(), residual_diag.float())
        newton_point = _newton_points(exact, low_precision, y, loss_weights, active, b, live, rel_cols, options)
        step = (newton_point - b) * live[:, None, :]
        k_step = kernel @ step
        t = _exact_line_search(b, step, k_step, f, y, w)
        b = b + t[:, None, :] * step
        f = f + t[:, None, :] * k_step
        beta[:, :, cols] = b
        scores[:, :, cols] = f
    max_rel = float(rel.max())
    if max_rel > options.tol:
        warnings.warn(f"SVM solver stopped after {iters} Newton steps with relative gradient {max_rel:.1e} > tol "
                      f"{options.tol:.0e}; raise SolverOptions.max_newton_iters", RuntimeWarning, stacklevel=2)
    return KernelSvmSolution(beta=beta, scores=scores, newton_iters=iters, max_rel_grad=max_rel)


def _k_norm(kernel: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sqrt(v^T K v) per (batch, column): the norm of the feature-space vector X~^T v."""
    return (v * (kernel @ v)).sum(1).clamp_min(0).sqrt()


def top_eigenpairs(kernel: torch.Tensor, rank: int, power_iters: int = 3, oversample: int = 10
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate top eigenpairs of each (B, m, m) kernel: randomised subspace iteration, seeded (reproducible).

    Only the CG preconditioner uses them, so their accuracy affects the speed, never the solution.
    """
    batch, m, _ = kernel.shape
    rank = min(rank, m)
    if m <= 2 * (rank + oversample):
        vals, vecs = torch.linalg.eigh(kernel)
        return vecs[:, :, -rank:], vals[:, -rank:].clamp_min(1e-12)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, m, rank + oversample, generator=gen, dtype=kernel.dtype).to(kernel.device)
    for _ in range(power_iters):
        q = _orthonormalize(kernel @ q)
    vals, vecs = torch.linalg.eigh(q.mT @ kernel @ q)
    return (q @ vecs)[:, :, -rank:], vals[:, -rank:].clamp_min(1e-12)


def _orthonormalize(g: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the columns of each (m, r) matrix via the eigenvectors of the small Gram matrix.

    Directions the columns do not span become zero columns. (Batched ``torch.linalg.qr`` is far slower on CPU.)
    """
    vals, vecs = torch.linalg.eigh(g.mT @ g)
    inv_sqrt = torch.where(vals > 1e-12 * vals[:, -1:], vals.clamp_min(1e-300).rsqrt(), 0.0)
    return g @ (vecs * inv_sqrt[:, None, :])


@dataclass(frozen=True)
class _CgOperands:
    """The kernel and its preconditioner pieces, in one precision."""

    kernel: torch.Tensor
    eigvecs: torch.Tensor
    eigvals: torch.Tensor
    residual_diag: torch.Tensor


def _newton_points(exact: _CgOperands, low_precision: _CgOperands | None, y: torch.Tensor,
                   loss_weights: torch.Tensor, active: torch.Tensor, beta: torch.Tensor, live: torch.Tensor,
                   rel: torch.Tensor, options: SolverOptions) -> torch.Tensor:
    """Minimiser of each problem's quadratic model on its active set: (K_AA + E_A) beta_A = y_A, 0 elsewhere."""
    kernel = exact.kernel
    ridge = torch.where(active, 0.5 / loss_weights.clamp_min(1e-300), 1.0)  # E = 1 / (2 C c_i) on A
    out = torch.zeros_like(beta)
    n_active = active.sum(1)
    m = kernel.shape[1]
    direct = live & (n_active.to(torch.float64) ** 3 / 3 <= options.direct_cost_in_matvecs * m * m)
    if bool(direct.any()):
        _solve_direct(kernel, y, ridge, active, direct, out, options.direct_batch_elements)
    iterative = live & ~direct
    if bool(iterative.any()):
        # CG must be accurate enough that the step is a true Newton step near the end (finite termination).
        rtol = (1e-2 * rel).clamp(1e-13, 1e-4)
        ops = exact
        if low_precision is not None and bool((rtol[iterative] >= options.float32_cg_rtol).all()):
            ops = low_precision
        dtype = ops.kernel.dtype
        _solve_pcg(ops, y.to(dtype), ridge.to(dtype), active, beta.to(dtype), rtol.to(dtype), iterative, out,
                   options.max_cg_iters)
    return out


def _solve_direct(kernel: torch.Tensor, y: torch.Tensor, ridge: torch.Tensor, active: torch.Tensor,
                  which: torch.Tensor, out: torch.Tensor, chunk_elements: int) -> None:
    """Batched Cholesky solves of the active-set systems of the problems flagged in ``which`` (B, P)."""
    m = kernel.shape[1]
    b_idx, p_idx = torch.nonzero(which, as_tuple=True)
    sizes = active[b_idx, :, p_idx].sum(1)
    order = torch.argsort(sizes)
    b_idx, p_idx, sizes = b_idx[order], p_idx[order], sizes[order].tolist()
    start = 0
    while start < len(sizes):
        # Problems sorted by active-set size; grow the chunk while its padded systems stay under budget.
        stop = start + 1
        while stop < len(sizes) and (stop + 1 - start) * sizes[stop] ** 2 <= chunk_elements:
            stop += 1
        bb, pp, size = b_idx[start:stop], p_idx[start:stop], sizes[stop - 1]
        n_active = torch.as_tensor(sizes[start:stop], device=kernel.device)
        start = stop
        if size == 0:
            continue
        act = active[bb, :, pp]  # (chunk, m)
        rows = torch.argsort((~act).to(torch.int8), dim=1, stable=True)[:, :size]  # active rows first
        valid = torch.arange(size, device=act.device)[None, :] < n_active[:, None]
        flat_rows = (bb[:, None] * m + rows) * m  # offsets of the gathered rows in the flattened kernel
        sub = kernel.reshape(-1).take(flat_rows[:, :, None] + rows[:, None, :])
        sub.masked_fill_(~valid[:, :, None], 0.0).masked_fill_(~valid[:, None, :], 0.0)
        sub.diagonal(dim1=1, dim2=2).add_(torch.where(valid, ridge[bb[:, None], rows, pp[:, None]], 1.0))
        rhs = torch.where(valid, y[bb[:, None], rows, pp[:, None]], 0.0)
        sol = torch.cholesky_solve(rhs.unsqueeze(-1), torch.linalg.cholesky(sub)).squeeze(-1)
        keep = torch.nonzero(valid, as_tuple=True)
        out[bb[keep[0]], rows[keep], pp[keep[0]]] = sol[keep]


def _solve_pcg(ops: _CgOperands, y: torch.Tensor, ridge: torch.Tensor, active: torch.Tensor, beta: torch.Tensor,
               rtol: torch.Tensor, which: torch.Tensor, out: torch.Tensor, max_iters: int) -> None:
    """Preconditioned CG on (K_AA + E_A) x = y_A for the problems flagged in ``which``, all columns at once.

    Rows outside a problem's active set get the identity and a zero right-hand side, so every column can share
    one batched GEMM per iteration; columns whose problems have all converged are dropped from the GEMM. The
    preconditioner is M = D + V_A diag(lam) V_A^T with D = E_A + diag(K - V diag(lam) V^T): a Nystrom
    approximation plus the exact diagonal of the remainder, inverted per problem with the Woodbury identity.
    Runs in the precision of ``ops``; the solutions are written to ``out`` in its own precision.
    """
    kernel, eigvecs, eigvals, residual_diag = ops.kernel, ops.eigvecs, ops.eigvals, ops.residual_diag
    tiny = torch.finfo(kernel.dtype).tiny  # keeps 0 / 0 out of finished columns (1e-300 is 0 in float32)
    cols = torch.nonzero(which.any(0)).flatten()
    act_mask = active.index_select(2, cols) & which.index_select(1, cols)[:, None, :]
    act = act_mask.to(kernel.dtype)
    ridge = torch.where(act_mask, ridge.index_select(2, cols), 1.0)
    diag = torch.where(act_mask, ridge + residual_diag[:, :, None], 1.0)
    # Woodbury core per problem: diag(1/lam) + V_A^T D^-1 V_A, (B, P, k, k); once per Newton step.
    scaled = eigvecs[:, :, None, :] * (act / diag)[:, :, :, None]  # (B, m, P, k)
    core = torch.einsum("bmpk,bml->bpkl", scaled, eigvecs) + torch.diag_embed(1.0 / eigvals)[:, None]
    del scaled
    core_chol = torch.linalg.cholesky(core)
    vecs_t = eigvecs.mT.contiguous()

    def precondition(r: torch.Tensor) -> torch.Tensor:
        u = r / diag
        proj = (vecs_t @ (u * act)).mT.unsqueeze(-1)  # (B, P, k, 1)
        corr = torch.cholesky_solve(proj, core_chol).squeeze(-1).mT  # (B, k, P)
        return u - act * (eigvecs @ corr) / diag

    def apply(v: torch.Tensor) -> torch.Tensor:
        return act * (kernel @ (act * v)) + ridge * v

    rhs = act * y.index_select(2, cols)
    x = act * beta.index_select(2, cols)  # warm start: the previous iterate restricted to the new active set
    r = rhs - apply(x)
    z = precondition(r)
    p = z
    rz = (r * z).sum(1)
    target = rtol.index_select(1, cols) * torch.linalg.vector_norm(rhs, dim=1)
    live = torch.linalg.vector_norm(r, dim=1) > target
    for _ in range(max_iters):
        live_cols = live.any(0)
        if not bool(live_cols.any()):
            break
        if 4 * int(live_cols.sum()) <= 3 * len(cols):
            # Drop finished columns from the working set (write their solutions out first).
            out[:, :, cols] = torch.where(which.index_select(1, cols)[:, None, :], x.to(out.dtype), out[:, :, cols])
            keep = torch.nonzero(live_cols).flatten()
            cols = cols.index_select(0, keep)
            act, ridge, diag, x, r, p = (t.index_select(2, keep) for t in (act, ridge, diag, x, r, p))
            rz, target, live = (t.index_select(1, keep) for t in (rz, target, live))
            core_chol = core_chol.index_select(1, keep)
        ap = apply(p)
        alpha = torch.where(live, rz / (p * ap).sum(1).clamp_min(tiny), 0.0)[:, None, :]
        x = x + alpha * p
        r = r - alpha * ap
        live = live & (torch.linalg.vector_norm(r, dim=1) > target)
        z = precondition(r)
        rz_new = (r * z).sum(1)
        p = z + (rz_new / rz.clamp_min(tiny))[:, None, :] * p
        rz = rz_new
    out[:, :, cols] = torch.where(which.index_select(1, cols)[:, None, :], x.to(out.dtype), out[:, :, cols])


def _exact_line_search(beta: torch.Tensor, step: torch.Tensor, k_step: torch.Tensor, scores: torch.Tensor,
                       y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Exact minimiser t of the objective along beta + t * step (a convex piecewise quadratic in t).

    phi'(t) = beta^T K s + t s^T K s + sum_{active at t} 2 w_i v_i (t v_i - u_i), with u = 1 - y f, v = y K s.
    Row i switches at t_i = u_i / v_i; sorting those breakpoints gives phi' as a piecewise-linear function
    whose root is found segment by segment (Keerthi & DeCoste 2005).
    """
    u = 1 - y * scores
    v = y * k_step
    w = weights
    on_at_zero = (w > 0) & ((u > 0) | ((u == 0) & (v < 0)))
    intercept = (beta * k_step).sum(1) + (on_at_zero * (-2 * w * v * u)).sum(1)
    slope = (step * k_step).sum(1) + (on_at_zero * (2 * w * v * v)).sum(1)
    leaves = (w > 0) & (v > 0) & (u > 0)
    enters = (w > 0) & (v < 0) & (u < 0)
    breaks = torch.where(leaves | enters, u / torch.where(v == 0, 1.0, v), torch.inf)
    d_intercept = torch.where(leaves, 2 * w * v * u, torch.where(enters, -2 * w * v * u, 0.0))
    d_slope = torch.where(leaves, -2 * w * v * v, torch.where(enters, 2 * w * v * v, 0.0))
    breaks, order = breaks.sort(1)
    intercepts = torch.cat([intercept[:, None], intercept[:, None] + d_intercept.gather(1, order).cumsum(1)], 1)
    slopes = torch.cat([slope[:, None], slope[:, None] + d_slope.gather(1, order).cumsum(1)], 1)
    ends = torch.cat([breaks, torch.full_like(breaks[:, :1], torch.inf)], 1)
    at_end = intercepts + slopes * torch.where(torch.isinf(ends), 0.0, ends)
    # First segment whose right end has phi' >= 0 (the last segment is unbounded).
    segment = ((at_end >= 0) | torch.isinf(ends)).to(torch.int8).argmax(1, keepdim=True)
    a = intercepts.gather(1, segment).squeeze(1)
    s = slopes.gather(1, segment).squeeze(1)
    # A step in the null space of K (s^T K s = 0) changes nothing; take it whole.
    return torch.where(s > 0, -a / s.clamp_min(1e-300), 1.0)


# --------------------------------------------------------------------------------------------------------------
# Protocol math: full-data SVM with 3-fold CV (B §2.3) and low-shot SVM (B §2.4).
# --------------------------------------------------------------------------------------------------------------
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
    def cv_ap(self) -> np.ndarray:
        """(classes, costs) mean CV average precision: what picks the cost."""
        return self.cv_fold_ap.mean(axis=2)

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
    ``numpy.random.default_rng([seed, s, k])``, so a draw does not depend on which other k are run.

    Returns:
        ``{(s, k): indices}`` with indices of shape (classes, 20k): the k positives first, then the negatives.
    """
    labels = np.asarray(train_labels)
    subsets = {}
    for s in range(n_samples):
        for k in ks:
            rng = np.random.default_rng([seed, s, k])
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
                      costs: Sequence[float], options: SolverOptions = SolverOptions(),
                      log: Callable[[str], None] | None = None) -> LowShotResult:
    """Train every low-shot SVM (sample x k x class x cost) and test it on the full test set.

    Args:
        k_train: (n, n) trainval kernel from :func:`linear_kernel` (sub-blocks are the low-shot problems).
        k_test: (q, n) test-vs-trainval kernel.
        train_labels: (n, classes) VOC labels; the sampled rows are 1 or 0.
        test_labels: (q, classes) VOC labels; -1 excluded from the AP.
        subsets: from :func:`sample_lowshot`.
        costs: cost grid in grid order.
        options: solver options.
        log: optional progress callback.

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
        if log is not None:
            log(f"low-shot k={k}: {len(rows)} subsets x {len(costs)} costs, newton iters <= {newton_iters}")
    out = LowShotResult(costs=tuple(costs), ks=ks, class_ap=result, newton_iters=newton_iters,
                        max_rel_grad=max_rel)
    out.summarize()
    return out


# --------------------------------------------------------------------------------------------------------------
# A synthetic VOC-shaped problem for the equivalence tests and the speed benchmark.
# --------------------------------------------------------------------------------------------------------------
# Images per class in VOC07 trainval (5,011 images), aeroplane ... tvmonitor: the benchmark's positive rates.
VOC07_TRAINVAL_POSITIVES = (238, 243, 330, 181, 244, 186, 713, 337, 445, 141, 200, 421, 287, 245, 2008, 245, 96,
                            229, 261, 256)


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


def make_voc_like_problem(n_train: int, n_test: int, dim: int, seed: int = 0, latent: int = 256,
                          signal: float = 0.3, missed: float = 0.1, difficult: float = 0.02
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Post-ReLU-like features with class signal, VOC07 positive rates and difficult (-1) labels.

    Images get classes independently at VOC07's rates; features are ReLU(latent @ A + noise) where the latent
    vector sums class embeddings (missing for a fraction ``missed`` of the positives, so the classes are not
    separable) over a power-law background. ``signal=0.3`` gives test APs of roughly 0.75-0.95 per class, the
    range of real VOC07 SVMs.

    Returns:
        ``train_features (n_train, dim) float32, train_labels (n_train, 20), test_features, test_labels``,
        labels in {1, 0, -1}.
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    rates = np.asarray(VOC07_TRAINVAL_POSITIVES) / 5011.0
    labels = np.zeros((n, len(rates)), dtype=np.int64)
    for lo, size in ((0, n_train), (n_train, n_test)):  # exact VOC07 counts per split (sheep: 96 = max k)
        for c, rate in enumerate(rates):
            labels[lo + rng.choice(size, max(1, round(rate * size)), replace=False), c] = 1
    scale = (1.0 + np.arange(latent)) ** -0.5 * 3
    embeddings = rng.standard_normal((len(rates), latent)) * scale
    evidence = labels * (rng.random(labels.shape) >= missed)
    codes = signal * (evidence @ embeddings) + rng.standard_normal((n, latent)) * scale
    mixing = rng.standard_normal((latent, dim)) / np.sqrt(latent)
    features = (codes @ mixing).astype(np.float32)
    features += 0.3 + 0.3 * rng.standard_normal((n, dim), dtype=np.float32)
    np.maximum(features, 0, out=features)
    labels[(rng.random(labels.shape) < difficult) & (labels == 0)] = -1
    return features[:n_train], labels[:n_train], features[n_train:], labels[n_train:]
