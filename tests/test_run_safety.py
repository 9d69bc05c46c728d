"""Never a wrong record: one-line errors for what the user's disk and paths cause, a full disk that keeps the last
good checkpoint and record, one run per run folder (lock, stale lock, waiting), a fresh log under --force, temp
files of interrupted writes removed, and no empty tables."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import runpy
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from cli_support import run_module  # tests/ is on sys.path

from benchmarks.linear import avgpool
from byol_bench import fileio, scaffold
from byol_bench.checkpoint import atomic_save
from byol_bench.cli import main_guard, os_error_line
from byol_bench.config import load_config
from byol_bench.fileio import atomic_write_json
from byol_bench.runner_config import RunnerConfig
from pretrain import train as pretrain
from pretrain.config import PRESET_DIR as PRETRAIN_PRESETS
from pretrain.config import PretrainConfig

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = {"format": "torchvision", "arch": "resnet18", "encoder": "online"}


@dataclass(frozen=True)
class LockConfig(RunnerConfig, preset="unit", out_dir="out", device="cpu", tiny=True):
    """The fields every runner shares (``wait_for_lock`` among them), as a runner's config declares them."""


@pytest.fixture()
def fake_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "byol_r18.pth"
    path.write_bytes(b"hashed, never parsed")
    return path


def _run_once(cfg: LockConfig, ckpt: Path, value: float = 1.0) -> dict[str, float] | None:
    """One scaffolded run that logs and scores ``value``; None when it was skipped."""
    with scaffold.open_run("voc07_svm", "voc07", cfg, ckpt=ckpt) as run:
        if run.done is not None:
            return None
        run.start().log(step=1, value=value)
        return run.finish({"svm": value}, checkpoint=CHECKPOINT, seeds={}, batch_size_per_device=1)


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


# ---------------------------------------------------------------- OSErrors the user causes: one line, exit 2


@pytest.mark.parametrize(("code", "fix"), [
    (errno.ENOSPC, "free space or choose another --out-dir"),
    (errno.EDQUOT, "free space within your quota or choose another --out-dir"),
    (errno.EACCES, "fix its permissions or choose another --out-dir"),
    (errno.EPERM, "fix its permissions or choose another --out-dir"),
    (errno.EROFS, "choose another --out-dir on a writable file system"),
    (errno.ENAMETOOLONG, "choose a shorter --out-dir"),
    (errno.ENOTDIR, "a file stands where a folder is needed"),
    (errno.EEXIST, "a file stands where a folder is needed"),
])
def test_os_errors_the_user_causes_are_one_line_naming_the_file_and_the_fix(code, fix, capsys) -> None:
    def fail() -> None:
        raise OSError(code, os.strerror(code), "/results/latest.pth")

    with pytest.raises(SystemExit) as stop:
        main_guard(fail)
    assert stop.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: /results/latest.pth: {os.strerror(code)}; {fix}")


def test_other_os_errors_stay_tracebacks_and_the_fix_names_the_entry_points_option() -> None:
    def broken() -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), "/dev/sdz")  # the machine's, not the user's

    with pytest.raises(OSError, match="Input/output error"):
        main_guard(broken)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # no file named: the fix alone
    assert os_error_line(full, "--out") == "No space left on device; free space or choose another --out"


def test_permission_denied_for_real_is_one_line(tmp_path) -> None:
    """As root without capabilities (setpriv), a folder of another user is not writable; skipped where that cannot
    be arranged (the mapping itself is the unit test above)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop the capabilities")
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o755)
    os.chown(folder, 65534, 65534)
    code = ("from byol_bench.cli import main_guard; from byol_bench.fileio import atomic_write_text; "
            f"main_guard(lambda: atomic_write_text({str(folder / 'x.json')!r}, 'x'))")
    proc = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-c", code],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    if proc.returncode != 2 and "setpriv" in proc.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {proc.stderr.strip()}")
    assert proc.returncode == 2, proc.stderr
    assert _one_error_line(proc.stderr) == (f"error: {folder / 'x.json'}: Permission denied; fix its permissions or "
                                            "choose another --out-dir")


@pytest.mark.parametrize("out", ["a_file", "a_file/sub", "x" * 300])
def test_an_unusable_out_dir_is_one_line_in_linear_avgpool(out, ckpt, tiny_data, tmp_path) -> None:
    (tmp_path / "a_file").write_text("in the way")
    proc = run_module([sys.executable, "-m", "benchmarks.linear_avgpool", "--preset", "tiny-places205", "--ckpt", ckpt,
                       "--data-root", tiny_data, "--out-dir", tmp_path / out])
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert str(tmp_path / out) in line and "choose" in line and "--out-dir" in line


def test_an_out_dir_that_is_a_file_is_one_line_in_pretrain(tiny_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BYOL_BENCH_NO_PROGRESS", "1")
    (tmp_path / "a_file").write_text("in the way")
    proc = run_module([sys.executable, "-m", "pretrain", "--preset", "tiny", *_pretrain_args(tiny_data, tmp_path),
                       f"out_dir={tmp_path / 'a_file'}"])
    assert proc.returncode == 2, proc.stderr
    assert _one_error_line(proc.stderr).startswith(f"error: {tmp_path / 'a_file'}")


# ---------------------------------------------------------------- a full disk keeps the last good files


class _FullDisk:
    """``os.fdopen`` as atomic_write calls it, for files that take ``allow`` bytes, then raise ENOSPC."""

    def __init__(self, allow: int) -> None:
        self.allow = allow

    def __call__(self, fd: int, mode: str) -> io.IOBase:
        disk = self

        class Full(io.BufferedWriter):
            def write(self, data: bytes) -> int:
                disk.allow -= len(data)
                if disk.allow < 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return super().write(data)

        full = Full(io.FileIO(fd, "w"))
        return full if "b" in mode else io.TextIOWrapper(full)


@pytest.mark.parametrize("allow", [0, 300])  # 300: torch.save's zip writer turns the OSError into a RuntimeError
def test_atomic_write_on_a_full_disk_keeps_the_file_and_leaves_no_temp_file(allow, tmp_path, monkeypatch) -> None:
    ckpt, record = tmp_path / "latest.pth", tmp_path / "records" / "r.json"
    atomic_save({"w": torch.zeros(10)}, ckpt)
    atomic_write_json(record, {"metrics": {"top1": 1.0}})
    before = {path: path.read_bytes() for path in (ckpt, record)}
    monkeypatch.setattr(fileio.os, "fdopen", _FullDisk(allow))
    with pytest.raises(OSError) as full:
        atomic_save({"w": torch.ones(100_000)}, ckpt)
    assert (full.value.errno, full.value.filename) == (errno.ENOSPC, str(ckpt))
    with pytest.raises(OSError, match="No space left") as full:
        atomic_write_json(record, {"metrics": {"top1": 2.0}, "pad": "x" * 10_000})
    assert full.value.filename == str(record)
    monkeypatch.undo()

    def fsync_fails(fd: int) -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(fileio.os, "fsync", fsync_fails)
    with pytest.raises(OSError, match="quota") as full:
        atomic_save({"w": torch.ones(10)}, ckpt)
    assert full.value.filename == str(ckpt)
    monkeypatch.undo()
    assert {path: path.read_bytes() for path in (ckpt, record)} == before
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["latest.pth", "r.json"]


# The runner's own command line (`python -m MODULE ARGS`, main_guard included) in a fresh interpreter where writing
# the temp file of TARGET fails with ENOSPC: at its first write (`write`) or at its fsync (`fsync`).
FULL_DISK_RUN = textwrap.dedent("""
    import errno, io, os, runpy, sys
    target, how, module, *args = sys.argv[1:]

    def failing(fd):
        return f"/.{target}." in os.readlink(f"/proc/self/fd/{fd}")

    def no_space():
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class Full(io.BufferedWriter):
        def write(self, data):
            raise no_space()

    real_fdopen, real_fsync = os.fdopen, os.fsync

    def fdopen(fd, *rest, **kwargs):
        return Full(io.FileIO(fd, "w")) if how == "write" and failing(fd) else real_fdopen(fd, *rest, **kwargs)

    def fsync(fd):
        if how == "fsync" and failing(fd):
            raise no_space()
        real_fsync(fd)

    os.fdopen, os.fsync = fdopen, fsync
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
""")


def _full_disk_rerun(out: Path, target: str, how: str, module: str, *args: object) -> None:
    """Rerun ``module`` with ``force=true`` on a disk that is full when ``target`` is saved: exit 2 with one line,
    and every file of ``out`` that existed (checkpoints, record) byte for byte as it was, no temp file left."""
    before = {path: path.read_bytes() for path in out.rglob("*")
              if path.is_file() and (path.suffix == ".pth" or path.parent.name == "records")}
    assert any(path.name == target for path in before) and any(path.parent.name == "records" for path in before)
    env = {**os.environ, "BYOL_BENCH_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_RUN, target, how, module, *map(str, args), "force=true"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert line.endswith(f"/{target}: No space left on device; free space or choose another --out-dir"), line
    assert {path: path.read_bytes() for path in before} == before
    assert not [path for path in out.rglob("*.tmp")]


def test_a_full_disk_at_the_first_checkpoint_keeps_linear_avgpools_checkpoint_and_record(ckpt, tiny_data,
                                                                                          tmp_path) -> None:
    args = ["--preset", "tiny-places205", "--ckpt", ckpt, "--data-root", tiny_data, "--out-dir", tmp_path,
            "epochs=1", "milestones=[]", "image_size=16", "test_resize=18"]
    avgpool.run(load_config(avgpool.LinearAvgpoolConfig, "tiny-places205",
                            [f"ckpt={ckpt}", f"data_root={tiny_data}", f"out_dir={tmp_path}", *args[8:]],
                            preset_dir=avgpool.PRESET_DIR))
    _full_disk_rerun(tmp_path, "latest.pth", "write", "benchmarks.linear_avgpool", *args)


def _pretrain_args(tiny_data: Path, tmp_path: Path) -> list[str]:
    """ResNet-18 at 32 px on 8 images, batch 4: 2 optimizer steps, latest.pth at step 1, no kNN monitor."""
    train_list = tmp_path / "train8.txt"
    train_list.write_text("".join((tiny_data / "imagenet/meta/train.txt").read_text().splitlines(True)[:8]))
    return [f"data_root={tiny_data}", f"train_list={train_list}", "val_list=", "batch_size_per_device=4",
            "epochs=1", "warmup_epochs=0", "image_size=32", "num_workers=0", "projector_hidden_dim=64",
            "projector_out_dim=16", "ckpt_every_steps=1", "knn=false", "knn_random_init_baseline=false",
            "device=cpu"]


def test_a_full_disk_at_the_first_checkpoint_keeps_pretrains_checkpoints_and_record(tiny_data, tmp_path,
                                                                                     monkeypatch) -> None:
    monkeypatch.setenv("BYOL_BENCH_NO_PROGRESS", "1")
    out = tmp_path / "out"
    args = [*_pretrain_args(tiny_data, tmp_path), f"out_dir={out}"]
    pretrain.run(load_config(PretrainConfig, "tiny", args, preset_dir=PRETRAIN_PRESETS))
    assert (out / "final.pth").is_file()
    _full_disk_rerun(out, "latest.pth", "fsync", "pretrain", "--preset", "tiny", *args)


# ---------------------------------------------------------------- one run per run folder


def test_a_second_run_is_refused_while_the_first_holds_the_folder(tmp_path, fake_ckpt) -> None:
    cfg = LockConfig(out_dir=str(tmp_path))
    with scaffold.open_run("voc07_svm", "voc07", cfg, ckpt=fake_ckpt) as first:
        lock_file = first.run_dir / "run.lock"
        holder = json.loads(lock_file.read_text())
        assert (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname())
        with pytest.raises(scaffold.RunLockedError) as refused, scaffold.open_run("voc07_svm", "voc07", cfg,
                                                                                   ckpt=fake_ckpt):
            pass
        message = str(refused.value)
        assert f"pid {os.getpid()} on {socket.gethostname()} (started {holder['started']})" in message
        assert str(first.run_dir) in message and "wait_for_lock=true" in message and "--out-dir" in message
        with pytest.raises(RuntimeError, match="the run holds"):
            first.start(run_dir=tmp_path / "elsewhere")
        first.start()
        first.finish({"svm": 1.0}, checkpoint=CHECKPOINT, seeds={}, batch_size_per_device=1)
    assert not lock_file.exists()  # released: the next run skips on the record
    assert _run_once(cfg, fake_ckpt) is None


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, capsys) -> None:
    code = ("import sys, time; from byol_bench.scaffold import RunLock; "
            "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline() == "held\n"
        lock = scaffold.RunLock(tmp_path)
        assert lock.acquire()["pid"] == holder.pid  # busy: the holder is named
    finally:
        holder.kill()  # SIGKILL: no release, the file stays
        holder.wait()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == holder.pid
    assert lock.acquire() is None
    assert f"taking over the lock left by pid {holder.pid} on {socket.gethostname()}" in capsys.readouterr().out
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run.lock").exists()


@pytest.mark.parametrize(("holder_writes_record", "force"), [(True, False), (True, True), (False, False)])
def test_wait_for_lock_waits_then_skips_when_the_holder_wrote_the_record(holder_writes_record, force, tmp_path,
                                                                         fake_ckpt, monkeypatch, capsys) -> None:
    cfg = LockConfig(out_dir=str(tmp_path))
    holding = contextlib.ExitStack()
    first = holding.enter_context(scaffold.open_run("voc07_svm", "voc07", cfg, ckpt=fake_ckpt))
    first.start()
    waits = []
    real_sleep = time.sleep

    def holder_ends_while_waiting(seconds: float) -> None:
        if seconds != scaffold.LOCK_POLL_S:  # another sleeper (subprocess polling git under load): a real sleep
            real_sleep(seconds)
            return
        assert not waits, "still waiting after the holder ended"
        waits.append(seconds)
        if holder_writes_record:
            first.finish({"svm": 1.0}, checkpoint=CHECKPOINT, seeds={}, batch_size_per_device=1)
        holding.close()

    monkeypatch.setattr(scaffold.time, "sleep", holder_ends_while_waiting)
    waiting = dataclasses.replace(cfg, wait_for_lock=True, force=force)
    assert _run_once(waiting, fake_ckpt, 2.0) == (None if holder_writes_record else {"svm": 2.0})
    out = capsys.readouterr().out
    assert waits == [scaffold.LOCK_POLL_S]
    assert out.count("waiting: ") == 1 and f"pid {os.getpid()} on {socket.gethostname()}" in out
    assert ("was written by the run this one waited for" in out) == holder_writes_record


def test_without_flock_support_the_run_warns_and_goes_on(tmp_path, fake_ckpt, monkeypatch, capsys) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(scaffold.fcntl, "flock", no_locks)
    assert _run_once(LockConfig(out_dir=str(tmp_path)), fake_ckpt) == {"svm": 1.0}
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "no locks" in warnings[0]
    assert not list(tmp_path.rglob("run.lock"))


def test_every_rank_of_a_torchrun_job_is_refused_together(tmp_path) -> None:
    """Rank 0 finds the folder busy; rank 1 learns it from rank 0 (it must neither run nor wait in a barrier)."""
    worker = textwrap.dedent(f"""
        import os
        from dataclasses import dataclass
        from byol_bench import scaffold

        @dataclass(frozen=True)
        class Config:
            preset: str = "unit"
            out_dir: str = {str(tmp_path)!r}
            device: str = "cpu"
            tiny: bool = True
            rehearsal: bool = False
            force: bool = False

        try:
            with scaffold.open_run("pretrain", "imagenet", Config(), run_dir={str(tmp_path)!r}):
                outcome = "ran"
        except scaffold.RunLockedError as exc:
            outcome = "refused: " + str(exc)
        with open(os.path.join({str(tmp_path)!r}, "rank" + os.environ["RANK"]), "w") as handle:
            handle.write(outcome)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    lock = scaffold.RunLock(tmp_path)
    assert lock.acquire() is None
    try:
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "--no-python", sys.executable, "-c", worker],
                       check=True, env=env, capture_output=True, timeout=300, cwd=REPO)
    finally:
        lock.release()
    outcomes = [(tmp_path / f"rank{rank}").read_text() for rank in (0, 1)]
    assert outcomes[0] == outcomes[1] and outcomes[0].startswith(f"refused: {tmp_path}: "), outcomes


# ---------------------------------------------------------------- a fresh log under --force, no stale temp files


def test_force_starts_a_fresh_log_and_keeps_the_earlier_ones(tmp_path, fake_ckpt) -> None:
    cfg = LockConfig(out_dir=str(tmp_path))
    forced = dataclasses.replace(cfg, force=True)
    for cfg_, value in ((cfg, 1.0), (forced, 2.0), (forced, 3.0)):
        _run_once(cfg_, fake_ckpt, value)
    (run_dir,) = (tmp_path / "runs" / "voc07_svm").iterdir()

    def values(name: str) -> list[float]:
        return [json.loads(line)["value"] for line in (run_dir / name).read_text().splitlines()]

    assert (values("log.1.jsonl"), values("log.2.jsonl"), values("log.jsonl")) == ([1.0], [2.0], [3.0])


def test_a_further_folder_is_held_as_the_run_folder_is(tmp_path, fake_ckpt) -> None:
    """``Run.hold`` (semi_sup's cell folders, which the grid and the cell run alone share): refused while another
    process holds the folder, its temp files removed once held, released when the run ends."""
    cfg = LockConfig(out_dir=str(tmp_path))
    cell = tmp_path / "runs" / "semi_sup" / "cells" / "c1"
    cell.mkdir(parents=True)
    orphan = cell / ".latest.pth.k2j4h5g6.tmp"  # what a kill during a write of the cell's state leaves
    orphan.write_text("partial")
    other = scaffold.RunLock(cell)
    assert other.acquire() is None
    with scaffold.open_run("voc07_svm", "voc07", cfg, ckpt=fake_ckpt) as run:
        with pytest.raises(scaffold.RunLockedError) as refused:
            run.hold(cell)
        assert str(refused.value).startswith(f"{cell}: another run holds this folder: pid {os.getpid()} on ")
        assert orphan.exists()  # another run holds it: its writes may be under way
        other.release()
        run.hold(cell)
        assert not orphan.exists() and json.loads((cell / "run.lock").read_text())["pid"] == os.getpid()
    assert not (cell / "run.lock").exists()  # released with the run


def test_temp_files_of_interrupted_writes_are_removed_once_the_folder_is_held(tmp_path, fake_ckpt, capsys) -> None:
    cfg = LockConfig(out_dir=str(tmp_path))
    with scaffold.open_run("voc07_svm", "voc07", cfg, ckpt=fake_ckpt) as run:
        run_dir, stem = run.run_dir, run.record_path.stem
        run.start()  # and killed: no record
    records = tmp_path / "records"
    orphans = [run_dir / ".latest.pth.abcd_123.tmp", run_dir / "cells/c1/.latest.pth.k2j4h5g6.tmp",
               records / f".{stem}.json.q1w2e3r4.tmp", records / f".{stem}.bbox.json.a1b2c3d4.tmp"]
    kept = [records / ".voc07_svm_voc07_000000000000_abcdef012345.json.z9y8x7w6.tmp",  # another run's record
            run_dir / "notes.tmp", run_dir / ".hidden",
            run_dir / "busy/.latest.pth.m1n2b3v4.tmp", run_dir / "busy/run.lock"]  # a run folder in use inside
    for path in orphans + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("partial")
    capsys.readouterr()
    assert _run_once(cfg, fake_ckpt) == {"svm": 1.0}
    assert [path for path in orphans if path.exists()] == [] and all(path.exists() for path in kept)
    out = capsys.readouterr().out
    assert f"removed 2 temp file(s) of interrupted writes in {run_dir}\n" in out
    assert f"removed 2 temp file(s) of interrupted writes in {records}\n" in out

    # The pretrainer's folder holds its records: at the lock, its other temp files go; its own record's once it is
    # named (identify), never another record's.
    out_dir = tmp_path / "pretrain"
    mine, other = out_dir / ".latest.pth.abcdefgh.tmp", out_dir / "records/.pretrain_imagenet_other.json.abcdefgh.tmp"
    for path in (mine, other):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("partial")
    with scaffold.open_run("pretrain", "imagenet", LockConfig(out_dir=str(out_dir)), run_dir=out_dir) as run:
        assert not mine.exists() and other.exists()
        run.start(run_dir=out_dir)
        final = out_dir / "final.pth"
        final.write_bytes(b"weights")
        stem = f"pretrain_imagenet_{scaffold.sha256_file(final)[:12]}_{run.config_hash}"
        own = run.records_dir / f".{stem}.json.zzzzzzzz.tmp"
        own.write_text("partial")
        assert run.identify(final) is None
        assert not own.exists() and other.exists()


# ---------------------------------------------------------------- tables


def test_make_tables_without_records_is_one_line_naming_the_folder(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "notes.json").write_text("[]")  # JSON, but no record
    monkeypatch.setattr(sys, "argv", ["make_tables.py", "--records", str(tmp_path / "records")])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO / "scripts" / "make_tables.py"), run_name="__main__")
    assert stop.value.code == 2
    assert _one_error_line(capsys.readouterr().err).startswith(f"error: {tmp_path / 'records'}: no result records")
