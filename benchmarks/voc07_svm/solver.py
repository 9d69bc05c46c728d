"""Batched exact solver for many L2-regularised squared-hinge linear SVMs that share one kernel matrix.

The classifier is the one scikit-learn's ``LinearSVC(C, class_weight={1: 2, -1: 1}, loss="squared_hinge",
penalty="l2", intercept_scaling=1)`` fits (liblinear, dual coordinate descent):

    min_{w, b}  1/2 (||w||^2 + b^2) + C * sum_i c_i * max(0, 1 - y_i (w . x_i + b))^2,   c_i = 2 if y_i = +1 else 1

The bias is regularised because liblinear treats it as one more feature of constant value ``intercept_scaling``.
The objective is strictly convex, so the optimum is unique and any exact method reaches the same classifier;
``tests/test_svm_solver.py`` checks that against scikit-learn. The VOC07 protocol that uses it (cost grids, CV,
low-shot sampling) is ``benchmarks/voc07_svm/protocol.py``.

How this solver gets its speed (the VOC07 reference fits 20 classes x 19 costs x 4 folds = 1,520 separate SVMs):

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

import warnings
from dataclasses import dataclass

import torch


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


