"""scripts/run_all_benchmarks.sh: idempotent reruns, --force, failure reporting, bad arguments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_all_benchmarks.sh"


def _run(tmp_path: Path, *args: str, protocols: str = "ok") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "RUN_ALL_PROTOCOLS": protocols,
           "RUN_ALL_MODULE_PREFIX": "fakebench.",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "fake_runners"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp_path)


def _ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "random-init_r18.pth"
    path.write_bytes(b"weights are hashed, never parsed by the stand-in runner")
    return path


def test_rerun_is_idempotent_only_filters_and_force_redoes(tmp_path):
    ckpt, out = _ckpt(tmp_path), tmp_path / "out"
    first = _run(tmp_path, str(ckpt), "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert "| random-init_r18 † | tiny |  | 42.00 |" in first.stdout
    assert "(published) |" in first.stdout  # the published rows beside the measured one
    summary = first.stdout.split("== summary")[1].splitlines()
    assert any(line.split()[:2] == ["ok", "tiny"] and line.split()[-1] == "ok" for line in summary), summary
    # The rerun also shows --only (one run_all start fewer than a test of its own): the failing stand-in listed
    # first is filtered out, so the exit code is 0 and only ok runs (and skips: its record exists).
    second = _run(tmp_path, str(ckpt), "--out", str(out), "--only", "ok", protocols="broken ok")
    assert second.returncode == 0 and "skip voc07_svm:" in second.stdout and "protocols run: ok" in second.stdout
    assert (out / "runs.txt").read_text() == "ran\n"
    assert _run(tmp_path, str(ckpt), "--out", str(out), "--force").returncode == 0
    assert (out / "runs.txt").read_text() == "ran\nran\n"
    assert (out / "model_zoo.md").is_file() and (out / "all_records.csv").is_file()


def test_failure_is_reported_and_others_still_run(tmp_path):
    ckpt, out = _ckpt(tmp_path), tmp_path / "out"
    result = _run(tmp_path, str(ckpt), "--out", str(out), protocols="broken missing ok")
    assert result.returncode == 1
    assert "FAILED protocols: broken" in result.stderr
    assert "missing: not available yet, skipped" in result.stdout
    assert (out / "runs.txt").read_text() == "ran\n"


def test_bad_arguments_exit_2(tmp_path):
    assert _run(tmp_path, str(tmp_path / "nope.pth")).returncode == 2
    bad = _run(tmp_path, str(_ckpt(tmp_path)), "--preset", "huge")
    assert bad.returncode == 2 and "--preset must be tiny or full" in bad.stderr
    assert _run(tmp_path, "--bogus").returncode == 2
