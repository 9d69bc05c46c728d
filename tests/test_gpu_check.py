"""scripts/gpu_check.py: the prepared GPU check runs end to end on CPU (--dry-run), so a lent GPU is never wasted."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


def test_dry_run_writes_every_step(tmp_path, tiny_data):
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--data-root", str(tiny_data)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["machine"]["cpu_model"]
    steps = report["steps"]
    assert {"pretrain", "linear_probe", "svm", "learning"} <= set(steps)
    assert steps["rehearsal"]["status"] == "not available"  # GPU only
    for name, result in steps.items():
        assert result["status"] in ("ok", "not available"), (name, result)
    assert steps["pretrain"]["figures"]["ours_img_per_s"] > 0
    assert steps["linear_probe"]["figures"]["ours_img_per_s"] > 0
    assert steps["svm"]["figures"]["ours_s"] > 0
    learning = steps["learning"]
    assert learning["passed"] is None  # one CPU epoch judges nothing; the margin is still measured
    assert learning["margin_points"] == round(learning["knn_top1"] - learning["knn_top1_random_init"], 2)
    rerun = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True,
                           text=True)
    assert rerun.returncode == 1 and "exists; pass another --out" in rerun.stderr  # never overwrites a result


def test_without_a_gpu_it_says_so_in_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        return
    # In this process, as `python scripts/gpu_check.py` runs it (runpy; the real interpreter runs it in the test
    # above): a new interpreter would pay ~3 s of start-up before the check.
    saved_argv, sys.argv = sys.argv, [str(SCRIPT), "--out", str(tmp_path / "x.json")]
    try:
        with pytest.raises(SystemExit) as stopped:
            runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        sys.argv = saved_argv
    # sys.exit(message): the interpreter writes the message and a newline to stderr and exits with status 1
    message = stopped.value.code
    assert isinstance(message, str) and "\n" not in message and "no CUDA device visible" in message
    assert capsys.readouterr().err == ""  # nothing else on stderr: one line in all
    assert not (tmp_path / "x.json").exists()
