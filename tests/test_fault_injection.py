"""Fault injection, trainer by trainer, on the tiny data: a diverging run stops in one line, exit 2, no record.

``lr=1e12`` makes every trainer's loss explode within two steps: to NaN (segmentation, semi_sup, pretrain) or to a
finite 1e11..1e26 that the guard's bound catches (the probes, the detectors), the case that used to train to the end
and write a record at chance. Each run goes through ``python -m`` (``main_guard`` included) in this process
(``tests/cli_support.py``). The kill-and-resume, lock and full-disk faults are tested next to each runner's runs and
in ``tests/test_run_safety.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cli_support import run_module  # tests/ is on sys.path

# protocol -> the override that sets its learning rate absurdly high (semi_sup: a one-cell grid)
DIVERGING = {
    "linear_mhead": ["lr=1e12"],
    "linear_avgpool": ["lr=1e12"],
    "semi_sup": ["base_lrs=1e12", "head_lr_mults=1"],
    "det_voc": ["lr=1e12"],
    "det_coco": ["lr=1e12"],
    "segmentation": ["lr=1e12"],
}


@pytest.mark.parametrize("protocol", DIVERGING)
def test_a_diverging_runner_stops_in_one_line_with_exit_2_and_no_record(protocol: str, ckpt: Path, tiny_data: Path,
                                                                       tmp_path: Path) -> None:
    result = run_module([sys.executable, "-m", f"benchmarks.{protocol}", "--preset", "tiny", "--ckpt", ckpt,
                         "--data-root", tiny_data, "--out-dir", tmp_path, "num_workers=0", *DIVERGING[protocol]])
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {protocol}") and "training diverged" in error, result.stderr[-2000:]
    assert "stopped without a record" in error and "rerun with a lower lr" in error
    assert not list(tmp_path.glob("records/*.json"))


def test_a_diverging_pretraining_stops_in_one_line_with_exit_2_and_no_record(tiny_data: Path, tmp_path: Path) -> None:
    result = run_module([sys.executable, "-m", "pretrain", "--preset", "tiny", "--data-root", tiny_data, "--out-dir",
                         tmp_path, "num_workers=0", "epochs=1", "log_every_steps=1", "knn=false", "base_lr=1e12"])
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: pretrain: training diverged at step ") and "loss nan is not finite" in error
    assert not list(tmp_path.glob("records/*.json"))


@pytest.mark.parametrize("override", ["lr=nan", "lr=-1", "lr=0", "epochs=0"])
def test_a_number_that_cannot_train_is_refused_when_parsed(override: str, ckpt: Path, tiny_data: Path,
                                                         tmp_path: Path) -> None:
    result = run_module([sys.executable, "-m", "benchmarks.linear_avgpool", "--preset", "tiny", "--ckpt", ckpt,
                         "--data-root", tiny_data, "--out-dir", tmp_path, override])
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: tiny: {override}"), result.stderr  # the preset, then the override
    assert not any(tmp_path.iterdir())  # refused before anything was written
