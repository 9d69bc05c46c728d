"""Two processes against one at the same global batch, for every trainer (and the VOC07 SVM, which trains
nothing): ``torchrun --nproc_per_node 2`` on CPU (gloo) against one process, both at the tiny preset shrunk to a few
optimizer steps.

Each test runs its trainer's command line under torchrun (the module's one 2-process job, :class:`SharedJob`, which
runs the tests' command lines in turn: tests/torchrun_queue.py) and the same command line in this process
(``run(parse_args(...))``), the one-process run keeping the global batch by the runner's own small-world rule
(a per-device batch of global / world, or gradient accumulation). It then compares

* exactly: the global batch, the steps (and their learning rates) run, the images seen, the images evaluated and
  the record's ``world_size`` (1 against 2);
* the numbers: the per-step losses of ``log.jsonl``, the weights or the final metrics, exactly (float tolerance)
  where the maths makes the two runs the same computation, otherwise within the tolerance each test states.

What makes the two runs different computations, and how each test deals with it:

* **random draws per process.** The runners reseed the global torch RNG per epoch (or iteration) from
  ``training.epoch_seed(seed, epoch, rank)``, so the two processes of the job draw their crops (detection: train
  scales, RPN/RoI samples) from two streams where one process draws everything from rank 0's. That is a different
  sample of the same augmentation, not a different computation, so the one-process run here replays the job's
  streams (:class:`RankStreams`): its n-th draw comes from the stream of rank ``n % 2``, seeded as that rank's.
  The torchrun run itself is never patched. (pretrain and segmentation draw per sample from the sample's global
  position, so one process draws what two do by construction.)
* **BatchNorm per process.** On CPU there is no SyncBN: each process normalises with the statistics of its own
  share of the batch. Where every forward pass sees the same images in both runs (pretrain: the accumulation
  micro-batches are the processes' shares; detection: one image per forward pass) this changes nothing; where it
  does not (linear_mhead's head BN, semi_sup's and segmentation's trained BN), the test says what remains
  comparable and with which tolerance.
* **BN running statistics** differ between the processes and from the one-process run (each process updates them
  with its own share; DDP at most copies rank 0's before each forward pass), so metrics computed in eval mode after
  training (pretrain's kNN monitor, detection AP, segmentation mIoU) are not compared; their image counts are.

linear_mhead and segmentation log rank 0's loss of its share of the batch (``loss.item()`` on each process, the
log written by rank 0), not the global batch's, which their tests take into account.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
import benchmarks.voc07_svm.runner as svm
from benchmarks.detection import voc_eval
from byol_bench import classification, training
from byol_bench.checkpoint import safe_load
from byol_bench.config import parse_args
from byol_bench.datasets.voc_det import VOCDetection
from byol_bench.fileio import atomic_write_text
from byol_bench.records import load_records
from pretrain.config import PRESET_DIR as PRETRAIN_PRESET_DIR
from pretrain.config import PretrainConfig
from pretrain.train import run as pretrain_run

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
# Float tolerance of runs that are the same computation: fp32 losses of O(1-10) summed in another order (the DDP
# all-reduce mean of per-process means against one process's mean, accumulated gradients against all-reduced
# ones) differ by a few ulp (~1e-7 relative) per step; 1e-5 leaves room for the few steps of amplification.
EXACT = 1e-5
EPOCH_SEED = training.epoch_seed  # the runners' per-(epoch or iteration, rank) seed, before any test patches it


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOL_BENCH_NO_PROGRESS", "1")


class SharedJob:
    """The module's torchrun job: ``python -m torch.distributed.run --standalone --nproc_per_node 2
    tests/torchrun_queue.py QUEUE`` on CPU, started at the first command line and given every test's in turn (one
    launcher and two interpreters importing torch for all, not three per test); restarted if a run ended it."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.queue, self.next = folder, folder, 0
        self.process: subprocess.Popen | None = None

    @contextlib.contextmanager
    def run(self, module: str, *argv: str, logs: Path) -> Iterator[None]:
        """``torchrun --nproc_per_node 2 -m <module> <argv>``, given to the job before the body (the one-process
        run, which overlaps it) and waited for after it; its output goes to ``logs``."""
        if self.process is None or self.process.poll() is not None:
            self._start()
        k, self.next = self.next, self.next + 1
        logs.write_text("")
        with socket.socket() as probe:  # a free port for this run's store (tests/torchrun_queue.py)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self._put(k, {"module": module, "argv": list(argv), "log": str(logs), "port": port})
        yield
        assert self._wait(k) == 0, logs.read_text()[-3000:] + (self.queue / "launcher.log").read_text()[-2000:]

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self._put(self.next, None)  # the end of the queue: the processes return
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.terminate()  # the launcher ends its workers on SIGTERM
                self.process.wait(timeout=60)

    def _put(self, k: int, command: dict[str, Any] | None) -> None:
        atomic_write_text(self.queue / f"{k}.json", json.dumps(command))  # whole when seen: the processes poll for it

    def _start(self) -> None:
        self.queue = self.folder / f"queue{len(list(self.folder.glob('queue*')))}"
        self.queue.mkdir()
        self.next = 0
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        with open(self.queue / "launcher.log", "w") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
                 str(REPO / "tests" / "torchrun_queue.py"), str(self.queue)], cwd=REPO, stdout=output,
                stderr=subprocess.STDOUT, env={**env, "OMP_NUM_THREADS": "1", "BYOL_BENCH_NO_PROGRESS": "1"})

    def _wait(self, k: int) -> int | None:
        """The exit code of command ``k`` (a failing process's, else rank 0's); None when the job ended first."""
        deadline = time.monotonic() + 600
        while not (self.queue / f"{k}.0.exit").exists() and self.process.poll() is None:
            assert time.monotonic() < deadline, f"command {k} of {self.queue} still running after 600 s"
            time.sleep(0.05)
        codes = [int(p.read_text()) for p in sorted(self.queue.glob(f"{k}.*.exit"))]
        return max(codes, key=abs) if codes else None


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedJob]:
    shared = SharedJob(tmp_path_factory.mktemp("torchrun"))
    yield shared
    shared.close()


@pytest.fixture()
def torchrun(job: SharedJob) -> Callable[..., contextlib.AbstractContextManager[None]]:
    """``with torchrun(module, *argv, logs=...)``: the command line run by the module's :class:`SharedJob`."""
    return job.run


def record_in(out: Path) -> dict[str, Any]:
    (record,) = load_records(out / "records")
    return record


def log_rows(log_file: str | Path, key: str) -> list[dict[str, Any]]:
    """The rows of a run's ``log.jsonl`` that hold ``key``."""
    rows = [json.loads(line) for line in Path(log_file).read_text().splitlines() if line.strip()]
    return [row for row in rows if key in row]


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Equal up to float rounding relative to the tensor's scale: an update is lr x a gradient summed in another
    order, whose rounding is relative to the gradient's size, not to each (possibly near-zero) element's."""
    torch.testing.assert_close(actual, expected, rtol=EXACT, atol=EXACT * float(expected.abs().max()), msg=what)


def column(rows: list[dict[str, Any]], key: str) -> list[Any]:
    return [row[key] for row in rows]


class RankStreams:
    """Replays, in one process, the torch RNG streams that the processes of a ``WORLD``-process job draw from.

    ``epoch_seed`` replaces ``training.epoch_seed`` where the runner calls it (it reseeds the global RNG with rank
    0's seed, as the runner does, and starts a new set of streams); ``wrap(fn)`` makes the n-th call of ``fn`` since
    then draw from the stream of rank ``n % WORLD``: rank 0's is the global RNG as the runner seeded it, rank r's
    a generator seeded ``epoch_seed(seed, epoch, r)``. Wrapped around a train transform (one call per image, in
    the sampler's order) or around the model (one call per micro-batch), the draws are the job's: the sampler and
    the detection stream deal position n to rank ``n % WORLD``.

    Args:
        base_seed_draw: the stream's first number is the DataLoader's base seed, which an epoch's iterator draws
            from the global RNG right after the runner reseeds it (classification loaders); detection draws its
            loader's once, before the first iteration's reseed.
    """

    def __init__(self, base_seed_draw: bool) -> None:
        self.base_seed_draw, self.streams, self.calls, self.key = base_seed_draw, None, 0, (0, 0)

    def epoch_seed(self, seed: int, epoch: int, rank: int) -> int:
        self.key, self.streams = (seed, epoch), None
        return EPOCH_SEED(seed, epoch, rank)

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def replayed(*args: Any, **kwargs: Any) -> Any:
            if self.streams is None:  # the first draw since the reseed: rank 0 is where the global RNG stands
                self.streams, self.calls = [torch.get_rng_state()], 0
                for rank in range(1, WORLD):
                    generator = torch.Generator().manual_seed(EPOCH_SEED(*self.key, rank))
                    if self.base_seed_draw:
                        torch.empty((), dtype=torch.int64).random_(generator=generator)
                    self.streams.append(generator.get_state())
            rank, self.calls = self.calls % WORLD, self.calls + 1
            torch.set_rng_state(self.streams[rank])
            out = fn(*args, **kwargs)
            self.streams[rank] = torch.get_rng_state()
            return out

        return replayed


def runner_args(ckpt: Path, data: Path, out: Path, preset: str, *overrides: str) -> list[str]:
    return ["--preset", preset, "--ckpt", str(ckpt), "--data-root", str(data), "--out-dir", str(out), "device=cpu",
            *overrides]


# ---------------------------------------------------------------- pretrain


def test_pretrain_two_processes_are_one_process_accumulating_their_micro_batches(tiny_data: Path, tmp_path: Path,
                                                                                 torchrun: Callable[..., Any]) -> None:
    """Exact. 32 training images, batch 8 per process: the job's step is the two ranks' contiguous halves of the
    epoch's permutation, each accumulated over 2 micro-batches (``accum_steps=2``: DDP's ``no_sync`` on the first),
    one process's step is the same four micro-batches accumulated (``accum_steps=4``), and every view's augmentation
    is drawn from (seed, epoch, position). So each forward pass sees the same 8 images in both runs (BN statistics
    included), the losses are the same means and the gradients the same averages (DDP's mean over ranks against the
    sum of loss / accum_steps): float tolerance.

    With more images per rank than one batch the ranks' contiguous chunks would make the job's step a different
    set of images than one process's (not a different recipe, a different shuffle), hence one step per epoch here.
    ``warmup_epochs=0``: mmcv's warm-up is per data iteration, and an optimizer step's lr is the one of its window's
    last iteration, ``(s + 1) * accum_steps - 1``, so at this size (W = 1-2 iterations) it would differ by half a
    step's warm-up between the two; at full size (W ~ 50k iterations) that is < 1e-4 relative.
    The kNN monitor is on but not compared: it runs the backbone in eval mode on BN running statistics, which are
    rank 0's own (``broadcast_buffers=False``, no SyncBN on CPU), updated by half the micro-batches. It must stay on:
    with ``knn=false`` the job fails (a race in ``pretrain/train.py``: rank 1's ``run.identify(final)`` can find the
    record that rank 0 has just written and return early, and rank 0's barrier in ``run.finish`` then fails).
    """
    lines = (tiny_data / "imagenet" / "meta" / "train.txt").read_text().splitlines()
    (tmp_path / "train32.txt").write_text("\n".join(lines[::34][:32]) + "\n")  # 32 images, all 10 classes
    vals = (tiny_data / "imagenet" / "meta" / "val.txt").read_text().splitlines()
    (tmp_path / "val20.txt").write_text("\n".join(vals[::12][:20]) + "\n")
    common = ["--preset", "tiny", f"data_root={tiny_data}", f"train_list={tmp_path / 'train32.txt'}",
              f"val_list={tmp_path / 'val20.txt'}", "image_size=32", "num_workers=0", "batch_size_per_device=8",
              "epochs=3", "warmup_epochs=0", "projector_hidden_dim=64", "projector_out_dim=16", "knn_k=5",
              "knn_random_init_baseline=false", "log_every_steps=1", "device=cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    with torchrun("pretrain", *common, "accum_steps=2", f"out_dir={two}", logs=tmp_path / "job.log"):
        pretrain_run(parse_args(PretrainConfig, [*common, "accum_steps=4", f"out_dir={one}"],
                                preset_dir=PRETRAIN_PRESET_DIR))

    res1, res2 = record_in(one)["details"]["resolved"], record_in(two)["details"]["resolved"]
    assert (record_in(one)["world_size"], record_in(two)["world_size"], res1["world_size"]) == (1, 2, 1)
    for key in ("global_batch_size", "total_steps", "train_images", "lr"):
        assert res1[key] == res2[key], key
    assert res1["global_batch_size"] == 32 and res1["total_steps"] == 3
    # every image once per epoch, and the same images in all: data iterations x batch x processes
    assert res1["iters_per_epoch"] * 8 * 1 == res2["iters_per_epoch"] * 8 * 2 == 32
    assert res1["total_iters"] * 8 * 1 == res2["total_iters"] * 8 * 2 == 96
    rows1, rows2 = log_rows(one / "log.jsonl", "loss"), log_rows(two / "log.jsonl", "loss")
    assert column(rows1, "step") == column(rows2, "step") == [1, 2, 3]
    assert column(rows1, "lr") == column(rows2, "lr") and column(rows1, "momentum") == column(rows2, "momentum")
    assert column(rows2, "loss") == pytest.approx(column(rows1, "loss"), rel=EXACT)
    assert 0 <= record_in(two)["metrics"]["knn_top1"] <= 100
    # the command's metrics line (``python -m pretrain`` prints it last), once: rank 0's
    printed = [line for line in (tmp_path / "job.log").read_text().splitlines() if line.startswith('{"')]
    assert len(printed) == 1 and json.loads(printed[0])["step"] == 3

    final1, final2 = safe_load(one / "final.pth"), safe_load(two / "final.pth")
    assert (final2["resolved"]["world_size"], final2["resolved"]["global_batch_size"]) == (2, 32)
    compared = 0
    for net in ("online", "target"):
        for part, state in final1[net].items():
            for name, value in state.items():
                other = final2[net][part][name]
                if name.endswith("num_batches_tracked"):  # each process's BN saw its own micro-batches only
                    assert value == 2 * other, (net, part, name)
                elif "running_" not in name:  # the weights (BN running statistics: rank 0's own, see above)
                    assert_same(other, value, f"{net}.{part}.{name}")
                    compared += 1
    assert compared > 100


# ---------------------------------------------------------------- linear probes


def test_linear_avgpool_two_processes_are_one_process(ckpt: Path, tiny_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      torchrun: Callable[..., Any]) -> None:
    """Exact. Frozen backbone, no BN in the head: with the crops replayed (module docstring) a step of either run is
    the mean cross-entropy of the same 300 crops (the DistributedSampler deals one permutation to the ranks in
    turn, 150 each) and DDP's mean of the two halves' gradients equals the whole batch's: the epoch losses agree to
    float tolerance and the heads, hence every val prediction, too."""
    common = ("tiny-places205", "image_size=16", "test_resize=18", "epochs=1", "global_batch_size=300")
    one, two = tmp_path / "one", tmp_path / "two"
    job = runner_args(ckpt, tiny_data, two, *common)
    with torchrun("benchmarks.linear_avgpool", *job, logs=tmp_path / "job.log"):
        streams = RankStreams(base_seed_draw=True)
        monkeypatch.setattr(avgpool, "epoch_seed", streams.epoch_seed)
        crop_flip = classification.crop_flip_transform
        monkeypatch.setattr(classification, "crop_flip_transform", lambda size: streams.wrap(crop_flip(size)))
        avgpool.run(parse_args(avgpool.LinearAvgpoolConfig, runner_args(ckpt, tiny_data, one, *common),
                               preset_dir=avgpool.PRESET_DIR))

    rec1, rec2 = record_in(one), record_in(two)
    d1, d2 = rec1["details"], rec2["details"]
    assert (rec1["world_size"], rec2["world_size"], d2["world_size"]) == (1, 2, 2)
    assert (d1["global_batch_size"], d1["batch_size_per_device"], d2["batch_size_per_device"]) == (300, 300, 150)
    assert d2["global_batch_size"] == 300 and d1["lr"] == d2["lr"]
    rows1 = log_rows(Path(d1["val_curve_plot"]).with_name("log.jsonl"), "train_loss")
    rows2 = log_rows(Path(d2["val_curve_plot"]).with_name("log.jsonl"), "train_loss")
    # two steps of 300: all 600 train images once; the 150 val images scored by both
    assert column(rows1, "step") == column(rows2, "step") == [2]
    assert d1["train_images"] == d2["train_images"] == 600 and d1["val_images"] == d2["val_images"] == 150
    assert column(rows1, "lr") == column(rows2, "lr")
    assert column(rows2, "train_loss") == pytest.approx(column(rows1, "train_loss"), rel=EXACT)
    assert rec2["metrics"] == pytest.approx(rec1["metrics"], abs=1e-9)  # counts of the same 150 predictions
    head1 = safe_load(Path(d1["val_curve_plot"]).with_name("latest.pth"))["modules"]["head"]
    head2 = safe_load(Path(d2["val_curve_plot"]).with_name("latest.pth"))["modules"]["head"]
    for name, value in head1.items():
        assert_same(head2[name], value)


def test_linear_mhead_two_processes_match_one_up_to_per_process_head_bn(ckpt: Path, tiny_data: Path,
                                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        torchrun: Callable[..., Any]) -> None:
    """Within tolerances: the heads' ``BatchNorm2d`` normalises each process's 150 images with their own statistics
    (no SyncBN on CPU), and the log holds rank 0's loss of its 150 images, not the step's 300.

    Exact: steps, learning rates, batch, images. Per head (and for their sum):

    * the first step's loss (the heads are identical in both runs) within 6 %: rank 0's mean over half the batch
      differs from the whole batch's with a standard error of sigma * sqrt(1/150 - 1/300) = sigma / 17, sigma being
      a head's per-image cross-entropy spread, 0.35-0.75 at this init (logits of std 0.4-0.9: N(0, 0.01) weights
      over 2k-9k normalised inputs), so 3 standard errors are <= 0.13, <= 5 % of a loss of ~ln 10; normalising with
      the statistics of 150 images instead of 300 moves a head's loss by <= 1 %;
    * the second step's loss change (what the first update did: to first order -lr <g1, g2>, so an lr or a
      gradient scale off by a factor k changes it by k - 1) within 30 % of the one-process change: the two steps'
      half-batch errors add up to sqrt(2) sigma / 17 <= 0.065, 3 of which are <= 25 % of the smallest change (~0.4),
      and the BN-perturbed first gradient adds a few %.

    The val metrics are not compared (the heads differ by the BN effects, and each rank scores its half of val with
    its own BN running statistics); that both runs scored the 150 val images is.
    """
    common = ("tiny-places205", "image_size=16", "test_resize=18", "epochs=1", "global_batch_size=300")
    one, two = tmp_path / "one", tmp_path / "two"
    job = runner_args(ckpt, tiny_data, two, *common)
    with torchrun("benchmarks.linear_mhead", *job, logs=tmp_path / "job.log"):
        streams = RankStreams(base_seed_draw=True)
        monkeypatch.setattr(training, "epoch_seed", streams.epoch_seed)
        transform = mhead.train_transform
        monkeypatch.setattr(mhead, "train_transform", lambda name, size: streams.wrap(transform(name, size)))
        mhead.run(parse_args(mhead.LinearMheadConfig, runner_args(ckpt, tiny_data, one, *common),
                             preset_dir=mhead.PRESET_DIR))

    rec1, rec2 = record_in(one), record_in(two)
    d1, d2 = rec1["details"], rec2["details"]
    assert (rec1["world_size"], rec2["world_size"], d2["world_size"]) == (1, 2, 2)
    assert (d1["global_batch_size"], d1["batch_size_per_device"], d2["batch_size_per_device"]) == (300, 300, 150)
    assert d2["global_batch_size"] == 300 and d1["head_bn"] == d2["head_bn"] == "BatchNorm2d"
    assert d1["train_images"] == d2["train_images"] == 600 and d1["val_images"] == d2["val_images"] == 150
    rows1 = log_rows(Path(d1["val_curve_plot"]).with_name("log.jsonl"), "loss")
    rows2 = log_rows(Path(d2["val_curve_plot"]).with_name("log.jsonl"), "loss")
    assert column(rows1, "step") == column(rows2, "step") == [1, 2]  # 2 x 300 = the 600 images once
    assert column(rows1, "lr") == column(rows2, "lr")
    for key in ("loss", *(f"loss_{name}" for name in mhead.FEATURE_NAMES)):
        (first1, second1), (first2, second2) = column(rows1, key), column(rows2, key)
        assert first2 == pytest.approx(first1, rel=0.06), key
        assert second2 - first2 == pytest.approx(second1 - first1, rel=0.3), key
    assert all(0 <= v <= 100 for v in rec2["metrics"].values())


# ---------------------------------------------------------------- semi_sup


def test_semi_sup_two_processes_match_one_up_to_per_process_bn(ckpt: Path, tiny_data: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               torchrun: Callable[..., Any]) -> None:
    """Within a tolerance: the whole ResNet trains with BN in train mode, per process on CPU, so each forward pass
    normalises 16 images with their own statistics instead of 32.

    Exact: the cells, the steps per epoch (the log's ``step``), batch and images. Each cell's epoch training loss
    (the mean over all 110 images, per-process sums all-reduced) within 10 %: the BN statistics of 16 images
    instead of 32 change the pooled features a lot (at 16 px layer4's map is 1 x 1, so its BN normalises over the
    batch alone: ~80 % of their norm here), but the head's logits are small, ~0.3 (N(0, 0.01) weights on features
    of norm ~30), and a cross-entropy moves by at most twice its largest logit change, so each image's loss moves by
    <= ~0.5 and their mean over 110 images, whose changes take both signs, by a few % of ln 10; the next three steps
    (lr 0.01, head lr <= 0.1) carry on the small weight difference. 10 % is 0.24-0.39 of these losses (2.4-3.9),
    while an lr off by 2x moves the head-10 cell's by ~85 %. The val metrics are not compared (different models,
    per-process BN running statistics); the val split's size is.
    """
    common = ("tiny-imagenet_10pct", "image_size=16", "test_resize=18", "epochs=1", "base_lrs=[0.01]",
              "head_lr_mults=[1,10]")
    one, two = tmp_path / "one", tmp_path / "two"
    job = runner_args(ckpt, tiny_data, two, *common)
    with torchrun("benchmarks.semi_sup", *job, logs=tmp_path / "job.log"):
        streams = RankStreams(base_seed_draw=True)
        monkeypatch.setattr(training, "epoch_seed", streams.epoch_seed)
        transform = semi.crop_flip_transform
        monkeypatch.setattr(semi, "crop_flip_transform", lambda size: streams.wrap(transform(size)))
        semi.run(parse_args(semi.SemiSupConfig, runner_args(ckpt, tiny_data, one, *common), preset_dir=semi.PRESET_DIR))

    rec1, rec2 = record_in(one), record_in(two)
    d1, d2 = rec1["details"], rec2["details"]
    assert (rec1["world_size"], rec2["world_size"], d2["world_size"]) == (1, 2, 2)
    assert (d1["global_batch_size"], d1["batch_size_per_device"], d2["batch_size_per_device"]) == (32, 32, 16)
    assert d2["global_batch_size"] == 32 and d1["bn"] == d2["bn"] == "BatchNorm2d"
    assert d1["train_images"] == d2["train_images"] == 110 and d1["val_images"] == d2["val_images"] == 250
    assert d1["cells"].keys() == d2["cells"].keys() == {"lr0.01_head1", "lr0.01_head10"}
    rows1 = log_rows(Path(d1["val_curve_plot"]).with_name("log.jsonl"), "loss_lr0.01_head1")
    rows2 = log_rows(Path(d2["val_curve_plot"]).with_name("log.jsonl"), "loss_lr0.01_head1")
    assert column(rows1, "step") == column(rows2, "step") == [4]  # ceil(110 / 32) steps: each image once
    for name, cell in d1["cells"].items():
        assert d2["cells"][name]["train_loss"] == pytest.approx(cell["train_loss"], rel=0.10), name
        assert cell["diverged_epoch"] is d2["cells"][name]["diverged_epoch"] is None


# ---------------------------------------------------------------- segmentation


def test_segmentation_two_processes_of_two_images_are_one_process_of_four(ckpt: Path, tiny_data: Path,
                                                                          tmp_path: Path,
                                                                          torchrun: Callable[..., Any]) -> None:
    """The same samples, schedule and evaluation; the losses are not comparable.

    The runner fixes the per-device batch (global = batch_size_per_device x world), so the one-process run takes 4
    images per step against 2 x 2. Global sample g is image perm[g mod n] augmented from (seed, g), and rank r's
    k-th sample is g = 2k + r: the two runs train on the same 8 augmented samples, 4 per step. What differs: BN
    statistics over 2 images per process against 4, rank 1's Dropout2d masks (every rank seeds ``seed`` and draws
    in lockstep, so rank 1 reuses rank 0's masks), and the log, which holds rank 0's loss of its 2 images only.
    With 2 images the first of these alone moves every normalised activation by ~sigma / sqrt(2): no tolerance
    would be both safe and tight, so the losses are not compared; the learning rate of every step is, and that both
    runs predicted, wrote and scored all 30 val images.
    """
    common = ("tiny", "max_iters=2", "crop_size=32", "scale=[128,32]", "test_scale=[128,32]")
    one, two = tmp_path / "one", tmp_path / "two"
    job = runner_args(ckpt, tiny_data, two, *common, "batch_size_per_device=2")
    with torchrun("benchmarks.segmentation", *job, logs=tmp_path / "job.log"):
        seg.run(parse_args(seg.SegmentationConfig,
                           runner_args(ckpt, tiny_data, one, *common, "batch_size_per_device=4"),
                           preset_dir=seg.PRESET_DIR))

    rec1, rec2 = record_in(one), record_in(two)
    d1, d2 = rec1["details"], rec2["details"]
    assert (rec1["world_size"], rec2["world_size"], d2["world_size"]) == (1, 2, 2)
    assert (d1["global_batch_size"], d2["global_batch_size"], d2["batch_size_per_device"]) == (4, 4, 2)
    assert d1["iterations"] == d2["iterations"] == 2 and d1["train_images"] == d2["train_images"]
    rows1 = log_rows(Path(d1["loss_curve_plot"]).with_name("log.jsonl"), "loss")
    rows2 = log_rows(Path(d2["loss_curve_plot"]).with_name("log.jsonl"), "loss")
    assert column(rows1, "step") == column(rows2, "step") == [1, 2]
    assert column(rows1, "lr") == column(rows2, "lr")
    assert d1["val_images"] == d2["val_images"] == 30
    for details in (d1, d2):
        assert len(list(Path(details["predictions"]).rglob("*.png"))) == 30
    assert 0 <= rec2["metrics"]["mIoU"] <= 100


# ---------------------------------------------------------------- detection


def detection_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-process detection run draws as the job does: ``training.wrap_ddp`` (one process: the model itself)
    becomes the model with micro-batch m drawing from rank m % 2's stream (train scale, RPN and RoI sampling)."""
    streams = RankStreams(base_seed_draw=False)
    monkeypatch.setattr(training, "epoch_seed", streams.epoch_seed)
    monkeypatch.setattr(training, "wrap_ddp", lambda model, device: streams.wrap(model))


def assert_same_accumulated_detection_step(rec1: dict[str, Any], rec2: dict[str, Any], run1: Path, run2: Path,
                                           losses: tuple[str, ...]) -> None:
    """The detection tests' common comparison, of one iteration: the global batch of 4 as 4 accumulated images in one
    process and 2 x 2 in two; the same learning rate, every loss term equal to float tolerance (``log.jsonl`` in the
    run folders), and the weights after the update too (``latest.pth``, written at the end: the parameters, not the
    BN running statistics, which each rank keeps from its own images).

    One iteration, not two: the losses of a second pass through discrete choices (top-k proposals, NMS, IoU-threshold
    matching, RoI sampling) where the few-ulp difference of the updated weights can swap one RoI. Seen on an AVX-512
    AMD EPYC: det_coco's second-iteration loss_classifier 2.5e-4 apart while every other term agreed within 5e-6.
    The update itself (accumulated gradients against all-reduced ones) is what the weights compare."""
    d1, d2 = rec1["details"], rec2["details"]
    assert (rec1["world_size"], rec2["world_size"], d2["world_size"]) == (1, 2, 2)
    assert (d1["global_batch_size"], d1["accumulate"], d2["global_batch_size"], d2["accumulate"]) == (4, 4, 4, 2)
    assert d1["batch_policy"] == d2["batch_policy"] == "accumulate" and d1["lr"] == d2["lr"]
    rows1, rows2 = (log_rows(run / "log.jsonl", "loss") for run in (run1, run2))
    assert column(rows1, "step") == column(rows2, "step") == [1]
    assert column(rows1, "lr") == column(rows2, "lr")
    for key in losses:
        assert column(rows2, key) == pytest.approx(column(rows1, key), rel=EXACT), key
    model1, model2 = (safe_load(run / "latest.pth")["modules"]["model"] for run in (run1, run2))
    assert model1.keys() == model2.keys()
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    for name, weight in model1.items():
        if not name.endswith(statistics):
            assert_same(model2[name], weight, name)


def test_det_voc_two_processes_are_one_process_accumulating(ckpt: Path, tiny_data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            torchrun: Callable[..., Any]) -> None:
    """Exact. One image per forward pass: the job's iteration is 2 processes x 2 micro-batches (accumulated under
    ``no_sync``), one process's is 4 micro-batches; the stream deals images to the ranks in turn and their flips
    are drawn per image, and with the draws replayed (module docstring) every forward pass computes the same losses,
    BN statistics included (one image each). The logged loss is the mean over ranks of the means over micro-batches:
    float tolerance, and so are the weights after the iteration. ``warmup_iters=0``: the update is at the full lr,
    not at 0.001 x lr, which the weights' float tolerance could not tell from any other. AP is not compared: each
    rank predicts its test images with its own BN running statistics; that both runs detected on all 4 test images
    is compared."""
    common = ("tiny", "max_iters=1", "warmup_iters=0", "global_batch_size=4", "batch_size_per_device=1",
              "test_images=4", "precise_bn_iters=1", "roi_batch_size_per_image=4")
    one, two = tmp_path / "one", tmp_path / "two"
    job = runner_args(ckpt, tiny_data, two, *common)
    with torchrun("benchmarks.det_voc", *job, logs=tmp_path / "job.log"):
        detection_streams(monkeypatch)
        det_voc.run(parse_args(det_voc.DetVocConfig, runner_args(ckpt, tiny_data, one, *common),
                               preset_dir=det_voc.PRESET_DIR))

    rec1, rec2 = record_in(one), record_in(two)
    d1, d2 = rec1["details"], rec2["details"]
    assert d1["max_iters"] == d2["max_iters"] == 1  # x 4 images: 4 seen by either
    assert_same_accumulated_detection_step(rec1, rec2, *(Path(d["trials"][0]["loss_plot"]).parent for d in (d1, d2)),
                                            ("loss", "loss_classifier", "loss_box_reg", "loss_objectness",
                                             "loss_rpn_box_reg"))
    # each process predicts half of the test images: rank 0 writes every image's detections (gathered), and the
    # record is what the results files score
    test_set = VOCDetection(tiny_data / "VOCdevkit", "2007", "test", first=4)
    for details in (d1, d2):
        trial = details["trials"][0]
        results = sorted(Path(trial["results_dir"]).glob("comp4_det_test_*.txt"))
        assert details["test_images"] == 4 and len(results) == 20
        assert {line.split()[0] for f in results for line in f.read_text().splitlines()} == {
            a.image_id for a in test_set.annotations}
        rescored = voc_eval.evaluate(Path(trial["results_dir"]), test_set.annotations).metrics()
        assert rescored == pytest.approx({k: trial[k] for k in ("AP", "AP50", "AP75")})


def coco_view(tiny_data: Path, root: Path, train: int, val: int) -> Path:
    """A data root whose COCO is the first ``train`` annotated train2017 and ``val`` val2017 images of the tiny data
    (annotation files cut to them, the image folders linked): a det_coco epoch is a pass over the train split."""
    source = tiny_data / "coco"
    (root / "coco" / "annotations").mkdir(parents=True)
    for split, count in (("train", train), ("val", val)):
        coco = json.loads((source / "annotations" / f"instances_{split}2017.json").read_text())
        annotated = {a["image_id"] for a in coco["annotations"] if not a["iscrowd"]}
        ids = set([image["id"] for image in coco["images"] if image["id"] in annotated][:count])
        coco["images"] = [image for image in coco["images"] if image["id"] in ids]
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
        (root / "coco" / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
        (root / "coco" / f"{split}2017").symlink_to(source / f"{split}2017", target_is_directory=True)
    return root


def test_det_coco_two_processes_are_one_process_accumulating(ckpt: Path, tiny_data: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             torchrun: Callable[..., Any]) -> None:
    """Exact, as det_voc (one image per forward pass, the draws replayed): Mask R-CNN's BN layers (trunk, FPN, box
    and mask heads) see the same single image and its RoIs in both runs. An epoch is a pass over the train split, so
    the data root holds 4 train images (1 iteration of 4) and 6 val images. Box and mask AP are not compared (each
    rank predicts with its own BN running statistics); that both runs scored all 6 val images is."""
    data = coco_view(tiny_data, tmp_path / "data", train=4, val=6)
    common = ("tiny", "epochs=1", "step_epochs=[1]", "warmup_iters=0", "global_batch_size=4",
              "batch_size_per_device=1")
    one, two = tmp_path / "one", tmp_path / "two"
    job = runner_args(ckpt, data, two, *common)
    with torchrun("benchmarks.det_coco", *job, logs=tmp_path / "job.log"):
        detection_streams(monkeypatch)
        det_coco.run(parse_args(det_coco.DetCocoConfig, runner_args(ckpt, data, one, *common),
                                preset_dir=det_coco.PRESET_DIR))

    rec1, rec2 = record_in(one), record_in(two)
    d1, d2 = rec1["details"], rec2["details"]
    assert d1["train_images"] == d2["train_images"] == 4 and d1["val_images"] == d2["val_images"] == 6
    assert (d1["iters"], d1["iters_per_epoch"]) == (d2["iters"], d2["iters_per_epoch"]) == (1, 1)
    assert_same_accumulated_detection_step(rec1, rec2, Path(d1["loss_plot"]).parent, Path(d2["loss_plot"]).parent,
                                            ("loss", "loss_classifier", "loss_box_reg", "loss_mask",
                                             "loss_objectness", "loss_rpn_box_reg"))
    val_ids = {image["id"] for image in json.loads(
        (data / "coco" / "annotations" / "instances_val2017.json").read_text())["images"]}
    for details in (d1, d2):
        detections = json.loads(Path(details["results_files"]["bbox"]).read_text())
        assert {d["image_id"] for d in detections} == val_ids


# ---------------------------------------------------------------- voc07_svm (trains nothing)


def test_voc07_svm_two_processes_are_one_process(ckpt: Path, tiny_data: Path, tmp_path: Path,
                                                 torchrun: Callable[..., Any]) -> None:
    """Exact. Nothing is trained: each image's features come from the frozen trunk in eval mode (the same in any
    process), the two processes' shares are gathered back into the split's order, and the SVMs are fit once on
    them: the same costs chosen, the same mAP."""
    common = ("tiny", "layers=[feat2]", "low_shot=false", "resize_short=73", "image_size=64")
    one, two = tmp_path / "one", tmp_path / "two"
    with torchrun("benchmarks.voc07_svm", *runner_args(ckpt, tiny_data, two, *common), logs=tmp_path / "job.log"):
        svm.run(parse_args(svm.Voc07SvmConfig, runner_args(ckpt, tiny_data, one, *common), preset_dir=svm.PRESET_DIR))
    rec1, rec2 = record_in(one), record_in(two)
    assert (rec1["world_size"], rec2["world_size"]) == (1, 2)
    assert set(rec1["metrics"]) == set(rec2["metrics"]) and rec2["metrics"] == pytest.approx(rec1["metrics"], rel=EXACT)
