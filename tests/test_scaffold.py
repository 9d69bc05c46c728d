"""The run scaffold: skip when the record exists, --force, rank-0 record, process group destroyed.

(That a runner hashes its checkpoint once is checked in its end-to-end test, tests/test_voc07_svm_e2e.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from byol_bench import dist, scaffold
from byol_bench.config import config_hash, load_config, opt
from byol_bench.records import load_records

HERE = Path(__file__).parent


@dataclass(frozen=True)
class TinyConfig:
    preset: str = opt("unit", "preset name")
    out_dir: str = opt("out", "output folder", identity=False)
    device: Literal["auto", "cpu", "cuda"] = opt("cpu", "device", identity=False)
    tiny: bool = opt(True, "tiny sizes")
    rehearsal: bool = opt(False, "a rehearsal", identity="when_set")
    force: bool = opt(False, "redo", identity=False)
    lr: float = opt(0.1, "a setting that changes results")


CHECKPOINT = {"format": "torchvision", "arch": "resnet18", "encoder": "online"}


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "byol_r18.pth"
    path.write_bytes(b"hashed, never parsed")
    return path


def _run_once(cfg: TinyConfig, ckpt: Path, value: float) -> tuple[dict[str, float], bool]:
    """One scaffolded run that scores ``value``; returns the metrics and whether the body ran."""
    with scaffold.open_run("voc07_svm", "voc07", cfg, ckpt=ckpt) as run:
        if run.done is not None:
            return run.done, False
        run.start()
        return run.finish({"svm": value}, checkpoint=CHECKPOINT, seeds={}, batch_size_per_device=1), True


def test_skip_when_recorded_force_redoes_and_other_configs_are_new_runs(tmp_path: Path, ckpt: Path, capsys) -> None:
    cfg = load_config(TinyConfig, overrides=[f"out_dir={tmp_path}"])
    assert _run_once(cfg, ckpt, 1.0) == ({"svm": 1.0}, True)
    run_dir = tmp_path / "runs" / "voc07_svm" / f"byol_r18-{scaffold.sha256_file(ckpt)[:8]}-{config_hash(cfg)}"
    assert {p.name for p in run_dir.iterdir()} == {"config.yaml", "resolved.json", "provenance.json"}
    # The same checkpoint and config: skipped, nothing written, the recorded metrics returned.
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert _run_once(cfg, ckpt, 2.0) == ({"svm": 1.0}, False)
    assert "skip voc07_svm" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before
    # force: runs again and replaces the record; a non-identity field does not make a new run.
    forced = load_config(TinyConfig, overrides=[f"out_dir={tmp_path}", "force=true"])
    assert _run_once(forced, ckpt, 3.0) == ({"svm": 3.0}, True)
    (record,) = load_records(tmp_path / "records")
    assert record["metrics"] == {"svm": 3.0} and record["preset"] == "unit" and record["tiny"]
    assert record["checkpoint"]["path"] == str(ckpt) and record["checkpoint"]["sha256"] == scaffold.sha256_file(ckpt)
    # Another identity value is another run, with its own record.
    other = load_config(TinyConfig, overrides=[f"out_dir={tmp_path}", "lr=0.2"])
    assert _run_once(other, ckpt, 4.0) == ({"svm": 4.0}, True)
    assert len(load_records(tmp_path / "records")) == 2


def test_a_missing_checkpoint_fails_before_anything_is_written(tmp_path: Path) -> None:
    cfg = load_config(TinyConfig, overrides=[f"out_dir={tmp_path / 'out'}"])
    with pytest.raises(ValueError, match=r"missing\.pth: checkpoint file not found"):
        _run_once(cfg, tmp_path / "missing.pth", 1.0)
    assert not (tmp_path / "out").exists()


def test_finish_needs_start(tmp_path: Path, ckpt: Path) -> None:
    cfg = load_config(TinyConfig, overrides=[f"out_dir={tmp_path}"])
    with scaffold.open_run("voc07_svm", "voc07", cfg, ckpt=ckpt) as run, pytest.raises(RuntimeError, match="start"):
        run.finish({"svm": 1.0}, checkpoint=CHECKPOINT, seeds={}, batch_size_per_device=1)


def test_process_group_is_destroyed_after_an_error(tmp_path: Path, ckpt: Path, monkeypatch) -> None:
    """Inside one process: a gloo group of world size 1 from torchrun-style variables, then an error in the body."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29500 + os.getpid() % 1000))
    cfg = load_config(TinyConfig, overrides=[f"out_dir={tmp_path}"])
    with pytest.raises(KeyError), scaffold.open_run("voc07_svm", "voc07", cfg, ckpt=ckpt):
        assert dist.is_initialized()
        raise KeyError("a bug in the protocol")
    assert not dist.is_initialized()


def test_torchrun_two_processes_write_one_record_and_clean_up(tmp_path: Path, ckpt: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(HERE / "scaffold_worker.py"), str(tmp_path), str(ckpt)],
                   check=True, env=env, capture_output=True, timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert (tmp_path / "writes.txt").read_text() == "0\n"  # rank 1 built and validated the record, never wrote it
    assert all(r["world"] == 2 and not r["initialized_after"] for r in ranks)
    (record,) = load_records(tmp_path / "records")
    assert record["metrics"] == {"svm": 10.0} and record["world_size"] == 2

