"""Shared fixtures: the embedded mini-datasets and the real-size data (each generated once per session); the SVM
tests' problem; one thread.

One CPU thread per test process, and per process the tests start (``OMP_NUM_THREADS=1`` in the environment they
inherit). The tests' tensors are small: with two OpenMP threads on a 2-core machine that also runs a DataLoader
worker, a subprocess or the other pytest-xdist worker, every small op waits for a descheduled thread (measured: a
6-step ResNet-18 pretraining took 44 s with two threads under load, 11 s with one). The suite runs in one
pytest-xdist worker per core instead (Makefile), which is where the other cores go.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from pathlib import Path

import pytest
import torch

from benchmarks.voc07_svm.protocol import l2_normalize
from byol_bench.backbone import build_resnet
from byol_bench.checkpoint import atomic_save
from byol_bench.tinydata import ensure_tiny_data
from byol_bench.tinydata.svm_features import make_voc_like_problem

os.environ["OMP_NUM_THREADS"] = "1"  # inherited by every subprocess a test starts
torch.set_num_threads(1)

# The longest test files, longest first (measured on 2 cores: ~90 s down to ~25 s each). pytest-xdist hands the
# workers one file at a time in collection order (``--dist loadfile --no-loadscope-reorder``, Makefile), so with
# these first the many short files fill in at the end and the workers finish together. Its default order, most
# tests first, put these few-test files last: one worker ran the last long file while the others were idle.
LONGEST_FIRST = ("test_slurm.py", "test_det_voc.py", "test_real_size.py", "test_segmentation.py", "test_det_coco.py",
                 "test_gpu_check.py", "test_semi_sup.py", "test_torchrun_equivalence.py", "test_linear_mhead.py",
                 "test_pretrain_train.py", "test_run_all.py", "test_fault_injection.py", "test_pretrain_tiny.py",
                 "test_run_safety.py", "test_linear_avgpool.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Runs the files of :data:`LONGEST_FIRST` first, in that order; the others after, as collected."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of the generated mini-datasets (seed 0), shared by every test module in the session: with pytest-xdist,
    by every worker too (the first one generates it, under a lock, while the other waits; tests never write in it)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above the workers' own
    with open(root / "tiny-data-seed0.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_tiny_data(root / "tiny-data-seed0")


# The real-size families the fast guards read (tests/test_real_size.py); the rest is scripts/rehearse.sh's.
REAL_SIZE_FAMILIES = ["voc2007", "imagenet", "coco", "cityscapes"]


@pytest.fixture(scope="session")
def real_size_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of the real-size data (``sizes="real"``: the real class lists and image sizes, a few images), generated
    once per session for :data:`REAL_SIZE_FAMILIES`, shared by the xdist workers as :func:`tiny_data` is."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    with open(root / "real-size-data-seed0.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_tiny_data(root / "real-size-data-seed0", only=REAL_SIZE_FAMILIES, sizes="real")


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random-init ResNet-18 trunk (torchvision keys, no fc), saved once: the runners' e2e checkpoint."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = {k: v for k, v in build_resnet("resnet18").state_dict().items() if not k.startswith("fc.")}
    return atomic_save(state, tmp_path_factory.mktemp("ckpt") / "random-init_resnet18.pth")


@pytest.fixture(scope="module")
def problem():
    """Structured features (600 x 2048, class signal, VOC07 positive rates), normalised as the protocol does."""
    x_tr, y_tr, x_te, y_te = make_voc_like_problem(600, 400, 2048, seed=1)
    return l2_normalize(x_tr), y_tr, l2_normalize(x_te), y_te


@pytest.fixture(scope="session")
def trained_steps():
    """``trained_steps(log_file, key, since=0.0)``: the ``step`` of each row of a run's ``log.jsonl`` that holds
    ``key`` (a training loss) and was logged at or after ``since`` (a ``time.time()``), in order.

    A ``--force`` rerun of a finished run must train every step again (docs/RUNNERS.md): its rows are all logged
    after it started, one per step, and the stale rows of the earlier run are gone.
    """
    def steps(log_file: Path, key: str, since: float = 0.0) -> list[int]:
        floor = math.floor(since * 1000) / 1000  # rows carry time.time() rounded to the millisecond
        rows = [json.loads(line) for line in Path(log_file).read_text().splitlines() if line.strip()]
        return [row["step"] for row in rows if key in row and row["time"] >= floor]

    return steps
