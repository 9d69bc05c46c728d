"""scripts/run_all_benchmarks.sh (python -m benchmarks.suite), local launcher: idempotent reruns, --force, failure
reporting, bad arguments; with stand-in runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.suite.__main__ import main as suite_main
from byol_bench.cli import main_guard

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_all_benchmarks.sh"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "BYOL_BENCH_SUITE_PROTOCOLS": "fakebench:PROTOCOLS",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "fake_runners"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp_path)


def _ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "random-init_r18.pth"
    path.write_bytes(b"weights are hashed, never parsed by the stand-in runner")
    return path


def test_rerun_is_idempotent_only_filters_and_force_redoes(tmp_path):
    ckpt, out = _ckpt(tmp_path), tmp_path / "out"
    first = _run(tmp_path, str(ckpt), "--out", str(out), "--only", "ok")
    assert first.returncode == 0, first.stderr
    assert "| random-init_r18 † | tiny |  | 42.00 |" in first.stdout
    assert "(published) |" in first.stdout  # the published rows beside the measured one
    summary = first.stdout.split("== summary")[1].splitlines()
    assert any(line.split()[:2] == ["ok", "tiny"] and line.split()[-1] == "ok" for line in summary), summary
    # --only filters out the failing stand-in listed first: the exit code is 0 and only ok runs (and skips: its
    # record exists).
    second = _run(tmp_path, str(ckpt), "--out", str(out), "--only", "ok")
    assert second.returncode == 0 and "skip voc07_svm:" in second.stdout and "protocols run: ok" in second.stdout
    assert (out / "runs.txt").read_text() == "ran\n"
    assert _run(tmp_path, str(ckpt), "--out", str(out), "--only", "ok", "--force").returncode == 0
    assert (out / "runs.txt").read_text() == "ran\nran\n"
    assert (out / "model_zoo.md").is_file() and (out / "all_records.csv").is_file()


def test_failure_is_reported_and_others_still_run(tmp_path):
    ckpt, out = _ckpt(tmp_path), tmp_path / "out"
    result = _run(tmp_path, str(ckpt), "--out", str(out))
    assert result.returncode == 1
    assert "FAILED protocols: broken" in result.stderr
    assert "missing: not available yet, skipped" in result.stdout
    assert (out / "runs.txt").read_text() == "ran\n"


def _suite(capsys, *args: str) -> tuple[int, str, str]:
    """The suite in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main_guard(lambda: sys.exit(suite_main(list(args))))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_bad_arguments_exit_2_in_one_line_and_write_nothing(tmp_path, capsys, monkeypatch):
    ckpt, out = str(_ckpt(tmp_path)), tmp_path / "out"
    (tmp_path / "not_gpu_check.json").write_text('{"rows": []}')
    cases = {
        (str(tmp_path / "nope.pth"),): "checkpoint " + str(tmp_path / "nope.pth") + " not found",
        ("--preset", "huge"): "argument --preset: invalid choice: 'huge'",
        ("--launcher", "mpirun"): "argument --launcher: invalid choice: 'mpirun' (choose from 'local', 'torchrun', "
                                  "'slurm')",
        ("--launcher", "torchrun", "--nproc-per-node", "0"): "argument --nproc-per-node: must be at least 1, got 0",
        ("--only", "voc07_svm,nope"): "--only nope: unknown protocol; valid: voc07_svm, linear_mhead, linear_avgpool, "
                                      "semi_sup, det_voc, det_coco, segmentation",
        ("--plan", "--rates", str(tmp_path / "not_gpu_check.json")): "not a gpu_check JSON",
        ("--sbatch", "exclusive"): "--sbatch exclusive: write it KEY=VALUE",
        ("--bogus",): "unrecognized arguments: --bogus",
    }
    for args, message in cases.items():
        code, stdout, stderr = _suite(capsys, *((ckpt,) if "nope" not in args[0] else ()), "--out", str(out), *args)
        assert code == 2 and message in stderr, (args, stderr)
        assert len(stderr.strip().splitlines()) == 1 and stdout == "", (args, stdout)
    # no sbatch on PATH: the message names what to install
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _, stderr = _suite(capsys, ckpt, "--out", str(out), "--launcher", "slurm")
    assert code == 2 and "needs SLURM's sbatch on PATH" in stderr and "slurm-client" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()
