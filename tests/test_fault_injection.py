"""Fault injection, trainer by trainer, on the tiny data: each fault stops the run in one line, exit 2, no record.

* Divergence: ``lr=1e12`` makes every trainer's loss explode within two steps, to NaN (segmentation, semi_sup,
  pretrain) or to a finite 1e11..1e26 that the guard's bound catches (the probes, the detectors): the case that used
  to train to the end and write a record at chance.
* A busy run folder: every trainer goes through the scaffold's lock before it reads or writes its folder (the lock
  itself, stale locks and ``wait_for_lock`` are tested in ``tests/test_run_safety.py``).
* A full disk at the first checkpoint: nothing half-written is left (byte-for-byte checks of an earlier checkpoint
  and record: ``tests/test_run_safety.py``).

Each run goes through ``python -m`` (``main_guard`` included) in this process (``tests/cli_support.py``), stopped at
its first fault, so each costs seconds. Kill-and-resume is tested next to each runner's uninterrupted run.
"""

from __future__ import annotations

import errno
import io
import os
import sys
from pathlib import Path

import pytest
from cli_support import run_module  # tests/ is on sys.path

from byol_bench import scaffold

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


# protocol -> the override that checkpoints after the first epoch / iteration
CHECKPOINT_EARLY = {
    "linear_mhead": "ckpt_every_epochs=1",
    "linear_avgpool": "ckpt_every_epochs=1",
    "semi_sup": "ckpt_every_epochs=1",
    "det_voc": "ckpt_every_iters=1",
    "det_coco": "ckpt_every_iters=1",
    "segmentation": "ckpt_every_iters=1",
}


def _runner(protocol: str, ckpt: Path, tiny_data: Path, out: Path, *overrides: str) -> list:
    if protocol == "pretrain":  # 8 images, batch 4, no kNN monitor: the first step checkpoints
        train_list = out.parent / "train8.txt"
        train_list.write_text("".join((tiny_data / "imagenet/meta/train.txt").read_text().splitlines(True)[:8]))
        return [sys.executable, "-m", "pretrain", "--preset", "tiny", "--data-root", tiny_data, "--out-dir", out,
                f"train_list={train_list}", "batch_size_per_device=4", "image_size=32", "num_workers=0",
                "knn=false", "knn_random_init_baseline=false", "ckpt_every_steps=1", *overrides]
    return [sys.executable, "-m", f"benchmarks.{protocol}", "--preset", "tiny", "--ckpt", ckpt, "--data-root",
            tiny_data, "--out-dir", out, "num_workers=0", CHECKPOINT_EARLY[protocol], *overrides]


@pytest.mark.parametrize("protocol", ["pretrain", *DIVERGING])
def test_a_busy_run_folder_is_refused_in_one_line_by_every_trainer(protocol: str, ckpt: Path, tiny_data: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    holder = {"pid": 4242, "host": "node17", "started": "2026-12-04T05:00:00+0000"}
    monkeypatch.setattr(scaffold.RunLock, "acquire", lambda self: holder)  # another process holds every folder
    result = run_module(_runner(protocol, ckpt, tiny_data, tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert ("another run holds this run folder: pid 4242 on node17 (started 2026-12-04T05:00:00+0000); let it "
            "finish, wait for it (wait_for_lock=true)") in result.stderr
    assert not list((tmp_path / "out").rglob("*.pth")) and not list((tmp_path / "out").rglob("records/*.json"))


@pytest.mark.parametrize("protocol", ["pretrain", *DIVERGING])
def test_a_full_disk_at_the_first_checkpoint_is_one_line_and_leaves_nothing_half_written(
        protocol: str, ckpt: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fdopen = os.fdopen

    class Full(io.BufferedWriter):
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(fd: int, *args: object, **kwargs: object) -> io.IOBase:  # the temp file of a checkpoint: no space
        if "/.latest.pth." in os.readlink(f"/proc/self/fd/{fd}"):
            return Full(io.FileIO(fd, "w"))
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)
    result = run_module(_runner(protocol, ckpt, tiny_data, tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and line.endswith(
        "/latest.pth: No space left on device; free space or choose another --out-dir"), line
    out = tmp_path / "out"
    assert not list(out.rglob("*.pth")) and not list(out.rglob("*.tmp")) and not list(out.rglob("records/*.json"))
