"""The training loop end to end on CPU: exact resume, checkpoint format, non-finite stop, config checks, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from kill_support import kill_mid_run, seconds_per_step, temp_files, unequal_tensors  # tests/ is on sys.path
from PIL import Image

from byol_bench.backbone import build_resnet
from byol_bench.checkpoint import CheckpointError, safe_load
from byol_bench.config import ConfigError, load_config
from byol_bench.records import load_records
from byol_bench.training import DivergenceError
from pretrain import model as model_module
from pretrain import train as train_module
from pretrain.config import PretrainConfig
from pretrain.train import run

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("n0001", "n0002", "n0003", "n0004")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-class ImageNet-layout folder: 12 train and 3 val JPEGs per class, 40x36 pixels."""
    root = tmp_path_factory.mktemp("pretrain_data")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 3)):
        for label, wnid in enumerate(CLASSES):
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                colours = rng.integers(0, 256, size=(3, 3, 3)).astype(np.uint8)
                colours[..., label % 3] = 255  # a class-dependent channel, so the kNN has something to find
                Image.fromarray(colours).resize((40, 36)).save(folder / f"{wnid}_{i}.JPEG", quality=90)
    return root


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOL_BENCH_NO_PROGRESS", "1")


def small_config(data_root: Path, out_dir: Path, **overrides: object) -> PretrainConfig:
    """ResNet-18 at 32 px, batch 8 x accum 2: 6 data iterations per epoch, 6 optimizer steps over 2 epochs."""
    values = {"name": "byol_test", "tiny": True, "arch": "resnet18", "data_root": str(data_root),
              "train_list": "", "val_list": "", "image_size": 32, "num_workers": 0, "batch_size_per_device": 8,
              "accum_steps": 2, "epochs": 2, "warmup_epochs": 1.0, "projector_hidden_dim": 64,
              "projector_out_dim": 16, "base_lr": 2.0, "weight_decay": 1e-4, "ckpt_every_steps": 100,
              "log_every_steps": 1, "knn": False, "out_dir": str(out_dir), "device": "cpu"}
    values.update(overrides)
    return PretrainConfig(**values)


# channels_last (the default, as in real runs) costs ~40 % of a CPU step at these sizes (weight-gradient layout
# copies). The tests that do not compare with the ``straight`` run turn it off; the straight run and the runs compared
# with it keep it.
NO_CHANNELS_LAST = {"channels_last": False}


def tensors_of(ckpt: dict) -> dict[str, torch.Tensor]:
    """Every tensor of the networks and of the optimizer state, flattened to name -> tensor."""
    out = {}
    for net in ("online", "target"):
        for part, state in ckpt[net].items():
            out.update({f"{net}.{part}.{k}": v for k, v in state.items()})
    for index, state in ckpt["optimizer"]["state"].items():
        out[f"optimizer.{index}"] = state["momentum_buffer"]
    return out


@pytest.fixture(scope="module")
def straight(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """One uninterrupted run (with the kNN monitor), shared by the tests below."""
    out_dir = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BYOL_BENCH_NO_PROGRESS", "1")
        metrics = run(small_config(data_root, out_dir, knn=True, knn_k=3))
    return out_dir, metrics


def test_killed_and_resumed_run_ends_tensor_equal(data_root: Path, straight: tuple, tmp_path: Path) -> None:
    """SIGKILL at a random point of steps 3-6 (a checkpoint every step; epoch 1 starts at step 4), then the same
    config again (resume=auto): the final networks, optimizer state and logged losses are the straight run's."""
    straight_dir, straight_metrics = straight
    cfg = small_config(data_root, tmp_path, ckpt_every_steps=1)
    overrides = [f"{k}={v}" for k, v in vars(cfg).items() if k not in ("train_list", "val_list")]
    step_s = seconds_per_step(straight_dir / "log.jsonl", "loss")  # measured on the straight run (same config)
    kill = kill_mid_run([sys.executable, "-m", "pretrain", "train_list=", "val_list=", *overrides], tmp_path,
                        "latest.pth", writes=2, window=4 * step_s)
    resumed = run(cfg)  # resume=auto
    assert not temp_files(tmp_path), kill  # a write the kill cut short is cleaned up
    assert straight_metrics["step"] == resumed["step"] == 6, kill
    a = tensors_of(safe_load(straight_dir / "final.pth"))
    b = tensors_of(safe_load(tmp_path / "final.pth"))
    assert a.keys() == b.keys() and len(a) > 200
    unequal = unequal_tensors(a, b)
    assert not unequal, (unequal[:5], kill)

    def losses(folder: Path) -> list[tuple[int, float]]:
        rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if "loss" in r]

    assert losses(straight_dir) == losses(tmp_path), kill  # each step logged once, with the same loss


def test_checkpoint_format_and_run_folder(data_root: Path, straight: tuple, trained_steps) -> None:
    out_dir, metrics = straight
    ckpt = safe_load(out_dir / "final.pth")  # weights_only=True
    assert ckpt["format"] == "byol-bench" and ckpt["format_version"] == 1 and ckpt["arch"] == "resnet18"
    assert set(ckpt["online"]) == {"backbone", "projector", "predictor"}
    assert set(ckpt["target"]) == {"backbone", "projector"}
    expected = {k for k in build_resnet("resnet18").state_dict() if not k.startswith("fc.")}
    assert set(ckpt["online"]["backbone"]) == set(ckpt["target"]["backbone"]) == expected
    assert ckpt["step"] == 6 and ckpt["iteration"] == 12 and ckpt["epoch"] == 2
    assert ckpt["config"]["arch"] == "resnet18" and ckpt["resolved"]["total_steps"] == 6
    assert ckpt["schedules"]["lr"].shape == (6,) and ckpt["rng"]["torch"].dtype == torch.uint8
    assert (out_dir / "byol_test.pth").samefile(out_dir / "final.pth")
    for name in ("config.yaml", "resolved.json", "provenance.json", "log.jsonl", "loss_curve.png"):
        assert (out_dir / name).is_file(), name
    (record,) = load_records(out_dir / "records")
    assert record["protocol"] == "pretrain" and record["dataset"] == "imagenet" and record["tiny"]
    assert record["checkpoint"]["encoder"] == "online"
    assert record["metrics"]["knn_top1"] == metrics["knn_top1"] and 0 <= metrics["knn_top1"] <= 100
    # A rerun of the finished run trains nothing and reuses its record.
    again = run(small_config(data_root, out_dir, knn=True, knn_k=3))
    assert again["knn_top1"] == record["metrics"]["knn_top1"] and again["step"] == 6
    # --force redoes the run, as in every runner (training.resume_point): all 6 steps are trained again, from
    # scratch, and the log holds that run's rows only. Same seed, same CPU: the same model, so the same record.
    started = time.time()
    forced = run(small_config(data_root, out_dir, knn=True, knn_k=3, force=True))
    assert trained_steps(out_dir / "log.jsonl", "loss", since=started) == [1, 2, 3, 4, 5, 6]
    assert trained_steps(out_dir / "log.jsonl", "loss") == [1, 2, 3, 4, 5, 6]
    (rewritten,) = load_records(out_dir / "records")
    assert record["details"]["steps_this_invocation"] == 6 and rewritten["details"]["steps_this_invocation"] == 6
    assert forced == pytest.approx(metrics) and rewritten["metrics"] == pytest.approx(record["metrics"])


def test_resume_after_a_crash_logs_each_step_once_and_keeps_the_history(
        data_root: Path, straight: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    forward = model_module.BYOL.forward

    def crashing(self: model_module.BYOL, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 7:  # the first pass of optimizer step 4 (accum 2); the last checkpoint is step 2
            raise RuntimeError("node lost")
        return forward(self, view1, view2)

    with monkeypatch.context() as patch:
        patch.setattr(model_module.BYOL, "forward", crashing)
        with pytest.raises(RuntimeError, match="node lost"):
            run(small_config(data_root, tmp_path, ckpt_every_steps=2))
    crashed_at = safe_load(tmp_path / "latest.pth")
    assert crashed_at["step"] == 2 and crashed_at["wall_time_s"] > 0
    run(small_config(data_root, tmp_path, ckpt_every_steps=2))

    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # step 3 was logged before the crash and again after the resume
    straight_rows = [json.loads(line) for line in (straight[0] / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == [r["loss"] for r in straight_rows if "loss" in r]
    # The wall time adds up over both invocations; the first invocation's provenance is kept.
    assert safe_load(tmp_path / "final.pth")["wall_time_s"] > crashed_at["wall_time_s"]
    (record,) = load_records(tmp_path / "records")
    assert record["wall_time_s"] > record["details"]["wall_time_s_this_invocation"]
    assert len((tmp_path / "provenance.previous.jsonl").read_text().splitlines()) == 1


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_root: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    forward = model_module.BYOL.forward

    def poisoned(self: model_module.BYOL, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = forward(self, view1, view2)
        return loss * float("nan") if calls["n"] > 4 else loss  # the 3rd optimizer step (accum 2) is NaN

    monkeypatch.setattr(model_module.BYOL, "forward", poisoned)
    with pytest.raises(DivergenceError, match=r"^pretrain: training diverged at step 3: loss nan is not finite .*"
                                              r"latest\.pth is kept; rerun with a lower lr$"):
        run(small_config(data_root, tmp_path, ckpt_every_steps=1, **NO_CHANNELS_LAST))
    last = safe_load(tmp_path / "latest.pth")
    assert last["step"] == 2
    assert all(torch.isfinite(t).all() for t in tensors_of(last).values())
    assert not (tmp_path / "final.pth").exists()


def test_eta_leaves_out_the_slow_first_window(data_root: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake clock: the first optimizer step takes 100 s (torch.compile, worker start-up), every later call 1 s.
    ticks = iter([0.0, *range(100, 10_000)])
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: float(next(ticks)))
    run(small_config(data_root, tmp_path, **NO_CHANNELS_LAST))
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    eta = {r["step"]: r["eta_s"] for r in rows if "eta_s" in r}
    assert eta[1] == pytest.approx(5 * 100.0)  # only the slow window is known yet
    # From step 2 on, the ETA is the remaining steps at the steady ~1 s per step (not 100 s / step - start).
    assert all(eta[step] <= 2.0 * (6 - step) for step in range(2, 7)), eta


def test_zero_log_or_checkpoint_interval_is_refused_when_parsed() -> None:
    for key, value in (("log_every_steps", "0"), ("ckpt_every_steps", "0"), ("base_lr", "0.0")):
        with pytest.raises(ConfigError, match=f"{key}={value} must be positive"):
            load_config(PretrainConfig, overrides=[f"{key}={value}"])


def test_resume_checks_config_and_refuses_to_overwrite(data_root: Path, tmp_path: Path) -> None:
    run(small_config(data_root, tmp_path, stop_after_steps=1, **NO_CHANNELS_LAST))
    with pytest.raises(CheckpointError, match="written with config"):
        run(small_config(data_root, tmp_path, base_lr=1.0, **NO_CHANNELS_LAST))
    with pytest.raises(ValueError, match="exists; continue with resume=auto"):
        run(small_config(data_root, tmp_path, resume="none", **NO_CHANNELS_LAST))


def test_cli_reports_bad_keys_in_one_line() -> None:
    result = subprocess.run([sys.executable, "-m", "pretrain", "--preset", "tiny", "no_such_key=1"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "no_such_key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
