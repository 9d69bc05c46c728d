"""DRAFT"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import benchmarks.detection.coco as det_coco
import benchmarks.detection.voc as det_voc
import benchmarks.linear.avgpool as avgpool
import benchmarks.linear.mhead as mhead
import benchmarks.segmentation.runner as seg
import benchmarks.semi_sup.runner as semi
from byol_bench import classification, training
from byol_bench.checkpoint import safe_load
from byol_bench.config import parse_args
from byol_bench.records import load_records
from pretrain.config import PRESET_DIR as PRETRAIN_PRESETS
from pretrain.config import PretrainConfig
from pretrain.train import run as pretrain_run

REPO = Path(__file__).resolve().parents[1]
WORLD = 2


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOL_BENCH_NO_PROGRESS", "1")


def torchrun(module: str, argv: list[str], timeout: float = 300) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(WORLD), "-m", module, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**env, "OMP_NUM_THREADS": "1", "BYOL_BENCH_NO_PROGRESS": "1"})
    print(f"torchrun {module}: {time.time() - started:.1f}s")
    assert done.returncode == 0, done.stderr[-3000:]


def rows(log_file: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(log_file).read_text().splitlines() if line.strip()]


def record_of(out: Path) -> dict[str, Any]:
    (record,) = load_records(out / "records")
    return record


class RankStreams:
    """Replays in one process the torch RNG streams that the processes of a ``WORLD``-process run draw from.

    The runners reseed the global torch RNG per epoch (or iteration) from ``epoch_seed(seed, epoch, rank)``, so the
    processes of a job draw different crops (or scales, RPN samples). One process is rank 0 of its world only; this
    gives draw ``n`` to stream ``n % WORLD``, each stream seeded as that rank's: the draws the job made.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any, first_draw: bool) -> None:
        self.first_draw, self.streams, self.count, self.key = first_draw, None, 0, None
        self.seed = training.epoch_seed
        monkeypatch.setattr(module, "epoch_seed", self.epoch_seed)

    def epoch_seed(self, seed: int, epoch: int, rank: int) -> int:
        self.key, self.streams = (seed, epoch), None
        return self.seed(seed, epoch, rank)

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def replayed(*args: Any, **kwargs: Any) -> Any:
            if self.streams is None:
                self.streams, self.count = [torch.get_rng_state()], 0
                for rank in range(1, WORLD):
                    generator = torch.Generator().manual_seed(self.seed(*self.key, rank))
                    if self.first_draw:  # the DataLoader's base seed, drawn when the epoch's iterator starts
                        torch.empty((), dtype=torch.int64).random_(generator=generator)
                    self.streams.append(generator.get_state())
            rank, self.count = self.count % WORLD, self.count + 1
            torch.set_rng_state(self.streams[rank])
            out = fn(*args, **kwargs)
            self.streams[rank] = torch.get_rng_state()
            return out

        return replayed


# ---------------------------------------------------------------- pretrain


def test_pretrain(tiny_data: Path, tmp_path: Path) -> None:
    lines = (tiny_data / "imagenet" / "meta" / "train.txt").read_text().splitlines()
    train_list = tmp_path / "train16.txt"
    train_list.write_text("\n".join(lines[::68][:16]) + "\n")
    vals = (tiny_data / "imagenet" / "meta" / "val.txt").read_text().splitlines()
    val_list = tmp_path / "val20.txt"
    val_list.write_text("\n".join(vals[::12][:20]) + "\n")
    common = ["--preset", "tiny", f"data_root={tiny_data}", f"train_list={train_list}", f"val_list={val_list}",
              "knn_k=5",
              "image_size=32", "num_workers=0", "batch_size_per_device=8", "epochs=3", "warmup_epochs=0",
              "projector_hidden_dim=64", "projector_out_dim=16", "knn_random_init_baseline=false",
              "log_every_steps=1", "device=cpu"]
    torchrun("pretrain", [*common, "accum_steps=1", f"out_dir={tmp_path / 'two'}"])
    t = time.time()
    pretrain_run(parse_args(PretrainConfig, [*common, "accum_steps=2", f"out_dir={tmp_path / 'one'}"],
                            preset_dir=PRETRAIN_PRESETS))
    print(f"one: {time.time() - t:.1f}s")
    one, two = record_of(tmp_path / "one"), record_of(tmp_path / "two")
    print(one["details"]["resolved"], two["details"]["resolved"])
    r1, r2 = rows(tmp_path / "one" / "log.jsonl"), rows(tmp_path / "two" / "log.jsonl")
    l1 = [r for r in r1 if "loss" in r]
    l2 = [r for r in r2 if "loss" in r]
    for a, b in zip(l1, l2, strict=True):
        print(a["step"], a["loss"], b["loss"], (a["loss"] - b["loss"]) / a["loss"], a["lr"], b["lr"])
    c1, c2 = safe_load(tmp_path / "one" / "final.pth"), safe_load(tmp_path / "two" / "final.pth")
    worst = 0.0
    for net in ("online", "target"):
        for part in c1[net]:
            for k, v in c1[net][part].items():
                w = c2[net][part][k]
                if v.is_floating_point():
                    d = ((v - w).abs().max() / v.abs().max().clamp_min(1e-12)).item()
                    if "running" not in k:
                        worst = max(worst, d)
                else:
                    print(net, part, k, v.item(), w.item()) if "num_batches" in k and "layer4.1.bn2" in k else None
    print("worst param rel diff", worst)


# ---------------------------------------------------------------- linear_avgpool


def test_linear_avgpool(ckpt: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["--preset", "tiny-places205", "--ckpt", str(ckpt), "--data-root", str(tiny_data), "image_size=16",
              "test_resize=18", "epochs=2", "milestones=[1]", "global_batch_size=300", "eval_every_epochs=1",
              "device=cpu"]
    torchrun("benchmarks.linear_avgpool", [*common, "--out-dir", str(tmp_path / "two")])
    streams = RankStreams(monkeypatch, avgpool, first_draw=True)
    crop_flip = classification.crop_flip_transform
    monkeypatch.setattr(classification, "crop_flip_transform", lambda size: streams(crop_flip(size)))
    t = time.time()
    avgpool.run(parse_args(avgpool.LinearAvgpoolConfig, [*common, "--out-dir", str(tmp_path / "one")],
                           preset_dir=avgpool.PRESET_DIR))
    print(f"one: {time.time() - t:.1f}s")
    one, two = record_of(tmp_path / "one"), record_of(tmp_path / "two")
    for r in (rows(one["details"]["val_curve_plot"].replace("val_curve.png", "log.jsonl")),
              rows(two["details"]["val_curve_plot"].replace("val_curve.png", "log.jsonl"))):
        print([x for x in r if "train_loss" in x])


def test_linear_mhead(ckpt: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["--preset", "tiny-places205", "--ckpt", str(ckpt), "--data-root", str(tiny_data), "image_size=16",
              "test_resize=18", "epochs=1", "milestones=[1]", "global_batch_size=300", "eval_every_epochs=1",
              "device=cpu"]
    torchrun("benchmarks.linear_mhead", [*common, "--out-dir", str(tmp_path / "two")])
    streams = RankStreams(monkeypatch, mhead.training, first_draw=True)
    transform = mhead.train_transform
    monkeypatch.setattr(mhead, "train_transform", lambda name, size: streams(transform(name, size)))
    t = time.time()
    mhead.run(parse_args(mhead.LinearMheadConfig, [*common, "--out-dir", str(tmp_path / "one")],
                         preset_dir=mhead.PRESET_DIR))
    print(f"one: {time.time() - t:.1f}s")
    one, two = record_of(tmp_path / "one"), record_of(tmp_path / "two")
    for rec in (one, two):
        print(rec["metrics"], rec["details"]["top5"])
        print([x for x in rows(Path(rec["details"]["val_curve_plot"]).with_name("log.jsonl")) if "loss" in x])


def test_semi_sup(ckpt: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["--preset", "tiny", "--ckpt", str(ckpt), "--data-root", str(tiny_data), "image_size=16",
              "test_resize=18", "epochs=2", "milestones=[1]", "base_lrs=[0.1,0.01]", "head_lr_mults=[1,10]",
              "device=cpu"]
    torchrun("benchmarks.semi_sup", [*common, "--out-dir", str(tmp_path / "two")])
    streams = RankStreams(monkeypatch, semi.training, first_draw=True)
    transform = semi.crop_flip_transform
    monkeypatch.setattr(semi, "crop_flip_transform", lambda size: streams(transform(size)))
    t = time.time()
    semi.run(parse_args(semi.SemiSupConfig, [*common, "--out-dir", str(tmp_path / "one")],
                        preset_dir=semi.PRESET_DIR))
    print(f"one: {time.time() - t:.1f}s")
    one, two = record_of(tmp_path / "one"), record_of(tmp_path / "two")
    for rec in (one, two):
        print(rec["metrics"], {k: (c["train_loss"], c["top1"]) for k, c in rec["details"]["cells"].items()})


def test_segmentation(ckpt: Path, tiny_data: Path, tmp_path: Path) -> None:
    common = ["--preset", "tiny", "--ckpt", str(ckpt), "--data-root", str(tiny_data), "max_iters=3",
              "crop_size=32", "scale=[128,32]", "test_scale=[128,32]", "device=cpu"]
    torchrun("benchmarks.segmentation", [*common, "batch_size_per_device=2", "--out-dir", str(tmp_path / "two")])
    t = time.time()
    seg.run(parse_args(seg.SegmentationConfig, [*common, "batch_size_per_device=4", "--out-dir",
                                                str(tmp_path / "one")], preset_dir=seg.PRESET_DIR))
    print(f"one: {time.time() - t:.1f}s")
    one, two = record_of(tmp_path / "one"), record_of(tmp_path / "two")
    for rec in (one, two):
        print(rec["metrics"])
        print([x for x in rows(Path(rec["details"]["loss_curve_plot"]).with_name("log.jsonl")) if "loss" in x])


def test_det_voc(ckpt: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["--preset", "tiny", "--ckpt", str(ckpt), "--data-root", str(tiny_data), "max_iters=2",
              "global_batch_size=4", "batch_size_per_device=1", "test_images=4", "precise_bn_iters=0",
              "roi_batch_size_per_image=4", "device=cpu"]
    torchrun("benchmarks.det_voc", [*common, "--out-dir", str(tmp_path / "two")])
    streams = RankStreams(monkeypatch, training, first_draw=False)
    monkeypatch.setattr(training, "wrap_ddp", lambda model, device: streams(model))
    t = time.time()
    det_voc.run(parse_args(det_voc.DetVocConfig, [*common, "--out-dir", str(tmp_path / "one")],
                           preset_dir=det_voc.PRESET_DIR))
    print(f"one: {time.time() - t:.1f}s")
    one, two = record_of(tmp_path / "one"), record_of(tmp_path / "two")
    for rec in (one, two):
        print(rec["metrics"])
        print(rows(Path(rec["details"]["trials"][0]["loss_plot"]).with_name("log.jsonl")))


def test_det_coco(ckpt: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["--preset", "tiny", "--ckpt", str(ckpt), "--data-root", str(tiny_data), "epochs=1",
              "step_epochs=[1]", "global_batch_size=60", "batch_size_per_device=1", "device=cpu"]
    torchrun("benchmarks.det_coco", [*common, "--out-dir", str(tmp_path / "two")])
    streams = RankStreams(monkeypatch, training, first_draw=False)
    monkeypatch.setattr(training, "wrap_ddp", lambda model, device: streams(model))
    t = time.time()
    det_coco.run(parse_args(det_coco.DetCocoConfig, [*common, "--out-dir", str(tmp_path / "one")],
                            preset_dir=det_coco.PRESET_DIR))
    print(f"one: {time.time() - t:.1f}s")
    one, two = record_of(tmp_path / "one"), record_of(tmp_path / "two")
    for rec in (one, two):
        print(rec["metrics"], rec["details"]["train_images"])
        print(rows(Path(rec["details"]["loss_plot"]).with_name("log.jsonl")))
