"""Shared fixtures: the embedded mini-datasets (generated once per session); the SVM tests' problem and threads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.voc07_svm.protocol import l2_normalize
from byol_bench.backbone import build_resnet
from byol_bench.checkpoint import atomic_save
from byol_bench.tinydata import ensure_tiny_data
from byol_bench.tinydata.svm_features import make_voc_like_problem


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of the generated mini-datasets (seed 0), shared by every test module in the session."""
    return ensure_tiny_data(tmp_path_factory.getbasetemp() / "tiny-data-seed0")


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random-init ResNet-18 trunk (torchvision keys, no fc), saved once: the runners' e2e checkpoint."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = {k: v for k, v in build_resnet("resnet18").state_dict().items() if not k.startswith("fc.")}
    return atomic_save(state, tmp_path_factory.mktemp("ckpt") / "random-init_resnet18.pth")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``); yields
    the thread count from before, for a test that wants it back for a while.

    Why: the SVM solver makes many small LAPACK calls; two OpenMP threads busy-waiting on a shared 2-core CI
    machine slow them down ~10x. One thread is fast everywhere at these sizes.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield before
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def problem(one_torch_thread):
    """Structured features (600 x 2048, class signal, VOC07 positive rates), normalised as the protocol does."""
    x_tr, y_tr, x_te, y_te = make_voc_like_problem(600, 400, 2048, seed=1)
    return l2_normalize(x_tr), y_tr, l2_normalize(x_te), y_te
