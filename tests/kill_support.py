"""Kill a run with SIGKILL at a random point, for the resume tests of every trainer ("never a wrong record").

A clean stop (``stop_after_epochs`` / ``_iters`` / ``_steps``) resumes from a state the runner chose to write at a
moment it chose. A lost node (the OOM killer, a preemption, a power cut) leaves whatever the moment left: the last
checkpoint, log rows of the steps trained after it, perhaps a half-written ``.latest.pth.*.tmp``. Only a real kill
tests that. :func:`kill_mid_run` starts the runner's command line in its own interpreter, waits until the run has
written its checkpoint (the file's inode and mtime, polled), sleeps a random delay and SIGKILLs the process group.
The test then runs the same config again (``resume=auto``, the default) in its own process (what the command runs,
without a second interpreter start-up: ~5 s of imports) and compares it with an uninterrupted run.

The delay is drawn from a seed that changes from run to run (so the suite, run after run, kills at many points) and
is printed in every assertion message; ``KILL_SEED=<seed>`` draws the same delay again, ``KILL_REPORT=<file>``
appends every kill to that file. Its window is sized from a measured time (the interval between two checkpoint
writes, or a logged step time: :func:`per_write`, :func:`seconds_per_step`), so that the kill lands in the middle of
the run, not after it. Where the steps are short (an iteration) the interval between the first two writes is no
measure, often 2-3x the steady one (seen on the segmentation and det_coco runs): there it is the second and third
writes'. A run that ended before its kill is noticed (:attr:`Kill.killed` is false) and the test still holds: the
rerun finds the record.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.01  # a CPU checkpoint interval of these tests is 0.1 s or more: no write is missed
TEMP_FILES = ".*.tmp"  # byol_bench.fileio.atomic_write's temp files: what a kill during a write leaves

Window = Callable[[Sequence[float]], float]


@dataclass(frozen=True, repr=False)
class Kill:
    """What one :func:`kill_mid_run` did; its repr (what pytest prints of ``assert ..., kill``) says it in a line."""

    command: tuple[str, ...]
    seed: int
    waited: int  # the delay started after this many checkpoint writes
    writes: tuple[float, ...]  # seconds after the start at which the checkpoint writes were seen, until the kill
    window_s: float
    delay_s: float
    killed: bool  # False: the run ended (exit code 0) before its delay was up; the rerun must then skip
    temp_files: tuple[str, ...]  # left in the watched folder right after the kill (a write cut short)
    output: str  # the run's stdout and stderr

    def __repr__(self) -> str:
        when = f"{self.delay_s:.2f} s (of a {self.window_s:.2f} s window) after checkpoint write {self.waited}"
        what = f"SIGKILL {when}" if self.killed else f"no kill: the run ended on its own before {when}"
        writes = ", ".join(f"{t:.2f}" for t in self.writes)
        tail = " | ".join(self.output.strip().splitlines()[-3:])
        return (f"{what}; KILL_SEED={self.seed} draws this delay again; {len(self.writes)} writes seen, at "
                f"[{writes}] s; temp files left: {list(self.temp_files)}; command: {' '.join(self.command[1:])}; "
                f"output: ...{tail[-400:]}")


def kill_mid_run(command: Sequence[str], folder: Path, pattern: str, *, writes: int = 1, window: float | Window,
                 timeout_s: float = 600.0) -> Kill:
    """Start ``command`` (``[sys.executable, "-m", module, *args]``), SIGKILL it at a random point after its
    checkpoint has been written ``writes`` times, and return what happened.

    Args:
        command: the runner's command line; it runs in the repository with one OpenMP thread and no progress bar,
            in a process group of its own (the kill takes any DataLoader workers with it, as a lost node would).
        folder, pattern: the checkpoint, ``folder.glob(pattern)`` (a run folder's name holds hashes). A write is a
            new inode or mtime of a match (``atomic_write`` renames a new file over it); files already there when
            the command starts count only once rewritten.
        writes: wait for this many writes before the delay starts.
        window: the delay is drawn uniformly from ``[0, window)`` seconds; a callable gets the write times (seconds
            after the start, :func:`per_write`) and may read what the run has logged so far.
        timeout_s: the run must reach its writes within this many seconds.

    Raises:
        AssertionError: the run failed, ended before its writes, or timed out (its output in the message).
    """
    seed = int(os.environ.get("KILL_SEED") or random.SystemRandom().randrange(2**31))
    seen = {path: _identity(path) for path in folder.glob(pattern)}
    times: list[float] = []
    with tempfile.TemporaryFile("w+") as output:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "BYOL_BENCH_NO_PROGRESS": "1"}
        process = subprocess.Popen(list(command), cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        started = time.monotonic()

        def look() -> None:  # note the writes since the last look
            for path in folder.glob(pattern):
                identity = _identity(path)
                if identity is not None and identity != seen.get(path):
                    seen[path] = identity
                    times.append(time.monotonic() - started)

        try:
            while len(times) < writes:
                look()
                if process.poll() is not None or time.monotonic() - started > timeout_s:
                    raise AssertionError(f"{' '.join(command[1:])}: {len(times)} of {writes} checkpoint writes "
                                         f"before it {'ended' if process.poll() is not None else 'timed out'} "
                                         f"(exit {process.poll()}); output:\n{_read(output)[-3000:]}")
                time.sleep(POLL_S)
            window_s = float(window(times) if callable(window) else window)
            delay_s = random.Random(seed).uniform(0.0, window_s)
            waited = len(times)
            deadline = time.monotonic() + delay_s
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(POLL_S)
                look()
            killed = process.poll() is None
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        text = _read(output)
    if not killed and process.returncode != 0:
        raise AssertionError(f"{' '.join(command[1:])}: failed (exit {process.returncode}); output:\n{text[-3000:]}")
    kill = Kill(tuple(command), seed, waited, tuple(times), window_s, delay_s, killed, tuple(temp_files(folder)), text)
    print(kill)  # in the captured output of a failing test too
    if os.environ.get("KILL_REPORT"):  # a file to append every kill to (where the kills land, over many runs)
        with open(os.environ["KILL_REPORT"], "a") as report:
            report.write(f"{kill!r}\n")
    return kill


def per_write(intervals: float) -> Window:
    """A window of ``intervals`` times the interval between the last two writes seen (``writes >= 2``): with a
    checkpoint every step, the time of that many more steps."""
    def window(times: Sequence[float]) -> float:
        return intervals * (times[-1] - times[-2])
    return window


def seconds_per_step(log_file: Path, key: str, since: float = 0.0) -> float:
    """Seconds per step of a run, measured on its ``log.jsonl`` rows holding ``key`` (logged at or after ``since``,
    a ``time.time()``): the time between the first and the last of them over the steps between them."""
    rows = [json.loads(line) for line in Path(log_file).read_text().splitlines() if line.strip()]
    points = sorted({row["step"]: row["time"] for row in rows if key in row and row["time"] >= since}.items())
    if len(points) < 2:
        raise AssertionError(f"{log_file}: {len(points)} rows with {key!r}; a step time needs two")
    (first_step, first), (last_step, last) = points[0], points[-1]
    return (last - first) / (last_step - first_step)


def temp_files(folder: Path) -> list[str]:
    """The temp files of interrupted atomic writes under ``folder`` (relative paths): what a kill during a write
    leaves, and what the next run in that folder removes once it holds it."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(TEMP_FILES))


def unequal_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys whose tensors differ (or that only one side has): empty when two state dicts are equal, bit for
    bit."""
    return sorted(set(a) ^ set(b)) + [k for k in a if k in b and not torch.equal(a[k], b[k])]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:  # replaced between the glob and the stat: seen on the next poll
        return None
    return stat.st_ino, stat.st_mtime_ns


def _read(handle: IO[str]) -> str:
    handle.flush()
    handle.seek(0)
    return handle.read()
