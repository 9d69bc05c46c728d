"""Per-run logging: a JSON-lines metrics log, progress (a bar on a terminal, plain lines off one), and the provenance
written into every run folder.

Only rank 0 writes. A run folder holds ``config.yaml`` (the config as given), ``resolved.json`` (derived values),
``provenance.json`` (command line, git commit, library versions, device; earlier invocations of the same run in
``provenance.previous.jsonl``) and ``log.jsonl`` (metrics; ``log.<n>.jsonl`` are those of the runs that ``--force``
redid).
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

import torch
import yaml
from tqdm.auto import tqdm

from byol_bench import dist
from byol_bench.checkpoint import atomic_write_json, atomic_write_text
from byol_bench.config import to_dict

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]


class RunLog:
    """Append-only JSON-lines log of metrics (one object per call), written by rank 0 only."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / "log.jsonl"
        if dist.is_main():
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, **metrics: Any) -> None:
        """Append ``metrics`` (plus a wall-clock timestamp) as one JSON line."""
        if not dist.is_main():
            return
        row = {"time": round(time.time(), 3), **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    def drop_after_step(self, step: int) -> None:
        """Remove the rows logged after optimizer step ``step`` (a resumed run logs those steps again).

        A run that crashed after its last checkpoint has already logged the steps it will repeat; without this the
        log and the loss curve would hold them twice. Rows without a ``step`` are kept.
        """
        if not dist.is_main() or not self.path.is_file():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if json.loads(line).get("step", step) <= step]
        if len(kept) < len(lines):
            atomic_write_text(self.path, "".join(kept))


def archive_log(run_dir: str | os.PathLike) -> Path | None:
    """Move the run folder's ``log.jsonl`` to ``log.<n>.jsonl`` (the first free n; rank 0) and return where.

    A ``--force`` run trains afresh: its log starts empty, so that its curves show this run alone, and the earlier
    run's rows are kept beside it rather than dropped.
    """
    log = Path(run_dir) / "log.jsonl"
    if not dist.is_main() or not log.is_file():
        return None
    n = 1
    while (kept := log.with_name(f"log.{n}.jsonl")).exists():
        n += 1
    return log.rename(kept)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them visible rather than crash the logger
    return value


class Progress:
    """Progress of a loop, shown on rank 0 only: a tqdm bar on a terminal, plain lines off one.

    On a terminal (``stream.isatty()``, or a Jupyter kernel) this is the usual redrawing tqdm bar. Off a terminal
    (SLURM logs, CI, ``| tee``) a bar would redraw into the file as carriage-return frames, so instead it prints
    plain lines such as ``byol: step 120/272 (44%) loss=3.21 lr=0.0375 img/s=25.1 elapsed 0:02:10 eta 0:01:10``:
    one each time the loop passes another ``every_percent`` but never within ``min_interval_s`` of the previous
    one, a heartbeat after ``max_interval_s`` without a line (after one minute for the first line, as early word
    of the rate), and the final state at the end. That is at most 100 / ``every_percent`` + 1 lines plus the
    heartbeats: 21 for a short run, about 60 for a 24-hour one. The ETA is measured from the first
    update on, so start-up (workers, compilation) does not inflate it. ``BYOL_BENCH_NO_PROGRESS=1`` silences both.

    Args:
        total: number of updates that make 100 % (None: unknown; then a line every minute, no percentage or ETA).
        desc: label at the start of the bar / line.
        initial: the count already done (a resumed run).
        unit: the word before the count in plain lines (``"step"`` -> ``byol: step 120/272``).
        stream: where to write (default ``sys.stderr``, as tqdm).
        every_percent, min_interval_s, max_interval_s: the plain-line cadence (see above).
        clock: monotonic seconds (tests substitute a fake clock).
    """

    def __init__(self, total: int | None, desc: str, *, initial: int = 0, unit: str = "", stream: TextIO | None = None,
                 every_percent: float = 5.0, min_interval_s: float = 10.0, max_interval_s: float = 1800.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.n, self.unit = total, desc, initial, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_percent, self.min_interval_s, self.max_interval_s = every_percent, min_interval_s, max_interval_s
        self.clock = clock
        self.postfix: dict[str, str] = {}
        self._bar: Any = None
        self._lines = dist.is_main() and os.environ.get("BYOL_BENCH_NO_PROGRESS") != "1"
        if self._lines and _interactive(self.stream):
            self._lines = False
            self._bar = tqdm(total=total, initial=initial, desc=desc, file=self.stream, dynamic_ncols=True)
        self._start = clock()
        self._first: tuple[float, int] | None = None  # (time, count) at the first update: the ETA's origin
        self._last_line: tuple[float, int] = (self._start, initial)  # (time, count) of the latest plain line
        self._wrote = False  # until the first line, the heartbeat comes after a minute: early word of the rate

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the count (``key=value``, in the given order) from now on."""
        self.postfix = {key: str(value) for key, value in values.items()}
        if self._bar is not None:
            self._bar.set_postfix(ordered_dict=self.postfix, refresh=False)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more done; print a line if one is due."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        if not self._lines:
            return
        now = self.clock()
        if self._first is None:
            self._first = (now, self.n)
        since = now - self._last_line[0]
        if self.total:
            step = self.every_percent * self.total / 100
            passed = self.n // step > self._last_line[1] // step
            heartbeat = self.max_interval_s if self._wrote else min(self.max_interval_s, 60.0)
            due = (passed and since >= self.min_interval_s) or since >= heartbeat
        else:
            due = since >= 60.0
        if due:
            self._write(now)

    def close(self) -> None:
        """Ends the bar; off a terminal, prints the final state unless the last line already shows it."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._lines and self.n != self._last_line[1]:
            self._write(self.clock())
        self._lines = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, now: float) -> None:
        parts = [f"{self.desc}:", f"{self.unit} {self.n}".strip()]
        if self.total:
            parts[-1] += f"/{self.total}"
            parts.append(f"({100 * self.n // self.total}%)")
        parts += [f"{key}={value}" for key, value in self.postfix.items()]
        parts.append(f"elapsed {_hms(now - self._start)}")
        if self.total and self._first is not None and self.n > self._first[1] and self.n < self.total:
            rate = (self.n - self._first[1]) / max(now - self._first[0], 1e-9)
            parts.append(f"eta {_hms((self.total - self.n) / rate)}")
        print(" ".join(parts), file=self.stream, flush=True)
        self._last_line, self._wrote = (now, self.n), True


def _interactive(stream: TextIO) -> bool:
    """A terminal (or a Jupyter kernel, where tqdm draws a widget): where a redrawing bar reads well."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return "ipykernel" in sys.modules


def _hms(seconds: float) -> str:
    seconds = int(seconds) if math.isfinite(seconds) else 0
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "") -> Iterator[T]:
    """Iterate with a :class:`Progress` (bar on a terminal, plain lines off one; rank 0; see there)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit=unit) as bar:
        for item in iterable:
            yield item
            bar.update()


def git_commit() -> str:
    """The repository's HEAD commit (``+dirty`` when the tree has changes), or ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that change numbers."""
    from importlib.metadata import version

    import numpy
    import torchvision

    # scikit-learn's from its installed metadata (the same string as sklearn.__version__): importing sklearn costs
    # ~3 s, in every run of a process that does not use it (pretraining, the detection and segmentation trainers).
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "scikit-learn": version("scikit-learn")}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform``): printed with every speed figure."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def steps_per_second(step: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Calls of ``step`` per second over ``iters`` timed calls after ``warmup`` untimed ones (CUDA synchronised
    around the timed calls): the benchmark scripts' one timing loop."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return iters / (time.perf_counter() - start)


def provenance() -> dict[str, Any]:
    """Command line, git commit, library versions, device and host: what is needed to rerun a result."""
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else f"cpu: {cpu_model()} ({os.cpu_count()} cores)")
    return {"argv": [sys.executable, *sys.argv], "git_commit": git_commit(), "versions": library_versions(),
            "device": device, "hostname": socket.gethostname(), "world_size": dist.get_world_size(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_run_files(run_dir: str | os.PathLike, cfg: Any, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write config, resolved values and provenance into ``run_dir`` (rank 0 only); return the provenance.

    A run folder used before (a resumed or repeated run) keeps the earlier invocations' provenance: each is
    appended to ``provenance.previous.jsonl`` before ``provenance.json`` is replaced.
    """
    info = provenance()
    if dist.is_main():
        run_dir = Path(run_dir)
        earlier = run_dir / "provenance.json"
        if earlier.is_file():
            with open(run_dir / "provenance.previous.jsonl", "a") as handle:
                handle.write(json.dumps(json.loads(earlier.read_text()), sort_keys=True) + "\n")
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        atomic_write_json(run_dir / "resolved.json", resolved or {})
        atomic_write_json(run_dir / "provenance.json", info)
    return info
