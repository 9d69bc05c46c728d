"""End to end: the VOC07 SVM runner on the embedded VOC07 data writes a valid record that fills the table row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_support import run_module  # tests/ is on sys.path

import adapters.loading
from benchmarks.voc07_svm.runner import PRESET_DIR, Voc07SvmConfig, run
from byol_bench import scaffold
from byol_bench.checkpoint import sha256_file
from byol_bench.config import load_config
from byol_bench.records import load_records
from byol_bench.tables import render_markdown

REPO = Path(__file__).resolve().parents[1]


def _cfg(ckpt: Path, data: Path, out: Path, *extra: str) -> Voc07SvmConfig:
    # The tiny preset, fewer layers, k and costs and smaller images to keep the test short: the code path is the full
    # one. feat1,feat2 stop the forward after layer1 and 64 px is the smallest squash their fixed AvgPools take
    # (feat2: kernel 16 on the stride-4 map): the ~500 forward passes cost ~2 % of feat4,feat5 at 224 px (~35 s of
    # the test). Three costs of the mmselfsup grid instead of its 19 cut each run's SVMs ~4x (the grids and the
    # solver at both ends of the grid: tests/test_svm_protocol.py, tests/test_svm_solver.py).
    return load_config(Voc07SvmConfig, "tiny", [f"ckpt={ckpt}", f"data_root={data}", f"out_dir={out}",
                                                "layers=feat1,feat2", "resize_short=73", "image_size=64",
                                                "costs=1,10,0.0625", "lowshot_ks=1,2", "low_shot=true", *extra],
                       preset_dir=PRESET_DIR)


def test_end_to_end_record_table_and_rerun(ckpt, tiny_data, tmp_path, capsys, monkeypatch):
    hashed = []

    def counting_sha256(path, *args, **kwargs):
        hashed.append(Path(path).name)
        return sha256_file(path, *args, **kwargs)

    for module in (scaffold, adapters.loading):
        monkeypatch.setattr(module, "sha256_file", counting_sha256)
    cfg = _cfg(ckpt, tiny_data, tmp_path)
    metrics = run(cfg)
    assert hashed == [ckpt.name]  # once per run: the scaffold's hash is handed to load_backbone
    assert set(metrics) == {"svm", "svm_feat1", "svm_feat2", "k1", "k2"}
    assert metrics["svm"] == max(metrics["svm_feat1"], metrics["svm_feat2"])
    assert all(0 < v <= 100 for v in metrics.values())
    (record,) = load_records(tmp_path / "records")
    assert record["tiny"] and record["preset"] == "tiny" and record["details"]["cost_selection"] == "test"
    assert record["checkpoint"]["format"] == "torchvision" and record["checkpoint"]["arch"] == "resnet18"
    assert record["details"]["preprocess"]["path"] == "pil"  # the reference's decode/resize path ran
    assert len(record["details"]["full_svm"]["feat2"]["chosen_cost"]) == 20
    # Seeded low-shot samples are saved next to the record: k positives then 19k negatives per class.
    samples = np.load(tmp_path / "records" / record["details"]["lowshot_samples_file"])
    assert samples["sample0_k2"].shape == (20, 40) and len(samples.files) == 10
    assert Path(record["details"]["lowshot_plot"]).is_file()
    row = next(line for line in render_markdown([record]).splitlines() if line.startswith("| random-init_resnet18"))
    best = record["details"]["best_layer"].replace("feat", "feature")
    assert f"| tiny | {best} | {metrics['svm']:.2f} | {metrics['k1']:.2f} | {metrics['k2']:.2f} |" in row

    # A rerun with the same checkpoint and config is skipped; --force reuses the feature cache and agrees.
    capsys.readouterr()
    assert run(cfg) == pytest.approx(metrics)
    assert "skip voc07_svm" in capsys.readouterr().out
    assert run(_cfg(ckpt, tiny_data, tmp_path, "force=true")) == pytest.approx(metrics)
    assert "features" not in capsys.readouterr().err  # no progress bar: nothing was extracted again


def test_cli_errors_are_one_line(ckpt, tiny_data, tmp_path):
    base = [sys.executable, "-m", "benchmarks.voc07_svm", "--preset", "tiny", "--data-root", str(tiny_data),
            "--out-dir", str(tmp_path)]
    cases = ((["--ckpt", str(tmp_path / "missing.pth")], "checkpoint file not found"),
             (["--ckpt", str(ckpt), "costs=cheap"], "neither a grid name"),
             (["--ckpt", str(ckpt), "layers=feat9"], "unknown feature layers"))
    for i, (extra, needle) in enumerate(cases):  # the first case in a real interpreter, the others in-process
        result = run_module(base + extra) if i else subprocess.run(base + extra, capture_output=True, text=True,
                                                                   cwd=REPO)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and needle in result.stderr
        assert result.stderr.strip().count("\n") == 0
