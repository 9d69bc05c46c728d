#!/usr/bin/env python
"""Speed and agreement benchmark: the batched VOC07 SVM solver against per-problem scikit-learn LinearSVC.

The problem is VOC07-sized and synthetic (byol_bench.tinydata.svm_features.make_voc_like_problem): 5,011 x 8,192
trainval features, 4,952 test images, 20 classes at VOC07's positive rates, the 19 mmselfsup costs, 3-fold CV +
refit, then the low-shot pass (k = 1 ... 96, 5 samples). Both sides start from the same float32 features and do the
same work, L2 normalisation included:

* ours: ``train_full_svm`` + ``train_lowshot_svm`` (one kernel per layer, batched Newton);
* reference, the mmselfsup way: one ``LinearSVC(C, class_weight={1: 2, -1: 1})`` fit per (class, cost, fold)
  and per (sample, k, class, cost), on a ``multiprocessing`` pool of 2 workers.

When the reference is too slow to run whole, ``--sklearn-fraction F`` runs a seeded random slice of its tasks
and extrapolates the wall time as slice_time / F (the output says so). max |dAP| compares, task by task, the AP
that each side gets for the same (class, cost, fold) or (sample, k, class, cost), in AP points (x100).

    python scripts/bench_svm.py --json                        # full size; sklearn slice of 5 %
    python scripts/bench_svm.py --quick                       # small sanity run, everything measured
"""

from __future__ import annotations

import os

# Why: with GNU OpenMP's default active wait, small BLAS calls (triangular solves) slow down ~100x when the cores
# are shared with other processes. Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import multiprocessing
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.voc07_svm.protocol import (
    COST_GRIDS,
    LOWSHOT_KS,
    NEGATIVE_WEIGHT,
    POSITIVE_WEIGHT,
    l2_normalize,
    sample_lowshot,
    stratified_folds,
    train_full_svm,
    train_lowshot_svm,
    training_targets,
)
from benchmarks.voc07_svm.solver import linear_kernel
from byol_bench.metrics import voc_area_ap
from byol_bench.runlog import cpu_model
from byol_bench.tinydata.svm_features import make_voc_like_problem

# Filled in the parent before the pool forks, so the workers share the arrays instead of pickling them.
_SHARED: dict[str, object] = {}


def _sklearn_task(task: tuple, tight: bool = False) -> tuple[tuple, float, float]:
    """Fit one LinearSVC as mmselfsup does (or to tol 1e-10 when ``tight``); return (task, AP x100, seconds)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import average_precision_score
    from sklearn.svm import LinearSVC

    x, xt = _SHARED["x"], _SHARED["x_test"]
    targets, test_labels, costs = _SHARED["targets"], _SHARED["test_labels"], _SHARED["costs"]
    start = time.perf_counter()
    clf = LinearSVC(C=costs[task[2]], class_weight={1: POSITIVE_WEIGHT, -1: NEGATIVE_WEIGHT}, intercept_scaling=1.0,
                    penalty="l2", loss="squared_hinge", dual=True,
                    **({"tol": 1e-10, "max_iter": 100_000} if tight else {"tol": 1e-4, "max_iter": 2000}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # liblinear often stops at max_iter, as in mmselfsup
        if task[0] == "full":
            _, c, _, fold = task
            if fold < len(_SHARED["folds"][c]):
                train = _SHARED["folds"][c][fold]
                held_out = np.setdiff1d(np.arange(len(x)), train)
                clf.fit(x[train], targets[train, c])
                ap = average_precision_score(targets[held_out, c] > 0, clf.decision_function(x[held_out]))
            else:
                clf.fit(x, targets[:, c])
                ap = voc_area_ap(clf.decision_function(xt), test_labels[:, c])
        else:
            _, s, _, k, c = task
            rows = _SHARED["subsets"][(s, k)][c]
            clf.fit(x[rows], targets[rows, c])
            ap = voc_area_ap(clf.decision_function(xt), test_labels[:, c])
    return task, 100 * float(ap), time.perf_counter() - start


def run_sklearn(tasks: list[tuple], workers: int) -> tuple[dict[tuple, float], float, float]:
    """Run the tasks on a fork pool; return {task: AP}, wall seconds and summed task seconds."""
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        out = pool.map(_sklearn_task, tasks, chunksize=1)
    return {t: ap for t, ap, _ in out}, time.perf_counter() - start, sum(s for _, _, s in out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=5011)
    parser.add_argument("--n-test", type=int, default=4952)
    parser.add_argument("--dim", type=int, default=8192, help="feature dimension (8,192 = feat5 of ResNet-50)")
    parser.add_argument("--costs", default="mmselfsup", choices=sorted(COST_GRIDS))
    parser.add_argument("--ks", default=",".join(map(str, LOWSHOT_KS)), help="low-shot k values ('' = skip)")
    parser.add_argument("--samples", type=int, default=5, help="low-shot samples per k")
    parser.add_argument("--sklearn-fraction", type=float, default=0.05,
                        help="share of the sklearn tasks to run (seeded random slice); the wall time is "
                             "extrapolated as slice_time / fraction. 1 runs everything (hours at full size).")
    parser.add_argument("--workers", type=int, default=2, help="sklearn worker processes (mmselfsup: cpu count)")
    parser.add_argument("--device", default="cpu", help="device of our solver (cpu or cuda)")
    parser.add_argument("--tight-check", type=int, default=5,
                        help="refit the N worst-agreeing sklearn fits to tol 1e-10 (0 = skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small sanity run: 1,000 x 1,024, k <= 8, all sklearn")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the figures as the last line")
    args = parser.parse_args()
    if args.quick:
        args.n_train, args.n_test, args.dim, args.ks, args.samples, args.sklearn_fraction = 1000, 1000, 1024, \
            "1,2,4,8", 2, 1.0
    if not 0 < args.sklearn_fraction <= 1:
        parser.error("--sklearn-fraction must be in (0, 1]")
    costs = COST_GRIDS[args.costs]
    ks = tuple(int(k) for k in args.ks.split(",") if k)

    t0 = time.perf_counter()
    x_tr, y_tr, x_te, y_te = make_voc_like_problem(args.n_train, args.n_test, args.dim, seed=args.seed)
    print(f"data: {args.n_train} x {args.dim} train, {args.n_test} test, 20 classes, {len(costs)} costs, "
          f"low-shot k={list(ks)} x {args.samples} samples ({time.perf_counter() - t0:.1f} s to generate)", flush=True)
    targets = training_targets(y_tr)
    folds = [stratified_folds(targets[:, c]) for c in range(targets.shape[1])]
    subsets = sample_lowshot(y_tr, ks, args.samples, seed=args.seed) if ks else {}

    # ---------------------------------------------------------------- reference (first: the pool forks cleanly)
    tasks = [("full", c, j, f) for c in range(20) for j in range(len(costs)) for f in range(4)]
    tasks += [("low", s, j, k, c) for (s, k) in subsets for j in range(len(costs)) for c in range(20)]
    rng = np.random.default_rng(args.seed)
    n_slice = max(1, round(args.sklearn_fraction * len(tasks)))
    slice_tasks = [tasks[i] for i in sorted(rng.permutation(len(tasks))[:n_slice])]
    _SHARED.update(x=l2_normalize(x_tr).numpy(), x_test=l2_normalize(x_te).numpy(), targets=targets,
                   test_labels=y_te, costs=costs, folds=folds, subsets=subsets)
    print(f"sklearn: {len(slice_tasks)} of {len(tasks)} LinearSVC fits on {args.workers} workers ...", flush=True)
    sk_ap, sk_wall, sk_cpu = run_sklearn(slice_tasks, args.workers)
    sk_total = sk_wall / (len(slice_tasks) / len(tasks))

    # ---------------------------------------------------------------- ours
    start = time.perf_counter()
    xt, xe = l2_normalize(x_tr, args.device), l2_normalize(x_te, args.device)
    kernels = (linear_kernel(xt, xt), linear_kernel(xe, xt))
    full = train_full_svm(xt, y_tr, xe, y_te, costs, kernels=kernels)
    t_full = time.perf_counter() - start
    low = train_lowshot_svm(*kernels, y_tr, y_te, subsets, costs) if subsets else None
    ours = time.perf_counter() - start

    # ---------------------------------------------------------------- agreement, task by task
    sample_index = {s: i for i, s in enumerate(sorted({s for s, _ in subsets}))}

    def our_ap(task: tuple) -> float:
        if task[0] == "full":
            _, c, j, f = task
            return 100 * float(full.cv_fold_ap[c, j, f] if f < 3 else full.test_ap[c, j])
        _, s, j, k, c = task
        return float(low.class_ap[sample_index[s], ks.index(k), c, j])

    deltas = {task: abs(our_ap(task) - ap) for task, ap in sk_ap.items()}
    max_delta = max(deltas.values())
    p99_delta = float(np.percentile(list(deltas.values()), 99))
    # The reference stops at tol=1e-4: refit its worst disagreements to tol=1e-10 to see whose AP moves.
    worst = sorted(deltas, key=deltas.get, reverse=True)[:args.tight_check]
    tight_delta = max((abs(our_ap(t) - _sklearn_task(t, tight=True)[1]) for t in worst), default=float("nan"))
    _SHARED.clear()
    speedup = sk_total / ours
    extrapolated = len(slice_tasks) < len(tasks)

    print(f"\nfull SVM mAP (ours): {full.map:.2f}   chosen costs: "
          f"{sorted({costs[i] for i in full.chosen})}   newton iters <= {full.newton_iters}, "
          f"max rel grad {full.max_rel_grad:.1e}")
    if low is not None:
        print("low-shot mAP (ours): " + "  ".join(f"k={k}: {v['mean']:.2f}" for k, v in low.summary.items()))
    print("\n| solver | wall time (s) | note |\n|---|---|---|")
    print(f"| batched Newton (this suite), {args.device} | {ours:.1f} | full SVM {t_full:.1f} s, "
          f"low-shot {ours - t_full:.1f} s |")
    note = (f"extrapolated from a {len(slice_tasks)}-task slice ({100 * len(slice_tasks) / len(tasks):.1f} %) "
            f"that took {sk_wall:.1f} s" if extrapolated else "measured, all tasks")
    print(f"| sklearn LinearSVC per (class, cost, fold), {args.workers} workers | {sk_total:.1f} | {note} |")
    print(f"\nspeed-up: {speedup:.1f}x on {cpu_model()} ({os.cpu_count()} cores)")
    print(f"|dAP| over {len(deltas)} compared fits: max {max_delta:.4f}, "
          f"99th percentile {p99_delta:.4f} points (vs the reference's settings, tol 1e-4)")
    print(f"the {len(worst)} worst fits refit by sklearn to tol 1e-10: max |dAP| {tight_delta:.4f} points")
    if args.json:
        print(json.dumps({
            "speedup_vs_sklearn": round(speedup, 2), "max_abs_delta_ap": max_delta, "p99_abs_delta_ap": p99_delta,
            "max_abs_delta_ap_worst_refit_tight": tight_delta, "tight_refits": len(worst),
            "ours_s": round(ours, 2), "ours_full_s": round(t_full, 2), "sklearn_s": round(sk_total, 2),
            "sklearn_extrapolated": extrapolated, "sklearn_slice_tasks": len(slice_tasks),
            "sklearn_total_tasks": len(tasks), "sklearn_slice_wall_s": round(sk_wall, 2),
            "sklearn_slice_cpu_s": round(sk_cpu, 2), "workers": args.workers, "device": args.device,
            "cpu_model": cpu_model(),
            "n_train": args.n_train, "n_test": args.n_test, "dim": args.dim, "costs": len(costs),
            "lowshot_ks": list(ks), "samples": args.samples, "map_full": round(full.map, 3),
        }))


if __name__ == "__main__":
    main()
