"""The run scaffold: the bookkeeping every entry point shares, so that a runner's ``run(cfg)`` shows its protocol.

A benchmark runner reads::

    def run(cfg: MyConfig) -> dict[str, float]:
        check_inputs(cfg)                                  # one-line errors before anything is written
        with open_run(PROTOCOL, DATASET, cfg, ckpt=cfg.ckpt) as run:
            if run.done is not None:                       # a record exists for this checkpoint and config
                return run.done
            log = run.start(Resolved(...))                 # the run folder, written by rank 0
            ...                                            # the protocol, top to bottom
            return run.finish(metrics, checkpoint=..., seeds=..., batch_size_per_device=..., details=...)

What the scaffold does, and nothing else:

* **Identity.** The checkpoint's sha256 (hashed once per run: pass ``run.ckpt_sha256`` on, e.g. to
  ``adapters.load_backbone``) and :func:`byol_bench.config.config_hash` name the record,
  ``<out_dir>/records/<protocol>_<dataset>_<sha12>_<hash>.json``.
* **Skip.** When that record exists (and ``cfg.force`` is false) ``run.done`` holds its metrics and nothing else
  happens: no process group work, no file written.
* **Lock.** Before anything in the run folder is read or written, rank 0 holds it (:class:`RunLock`,
  ``<run_dir>/run.lock``) until the run ends, also on error; then it removes the temp files that interrupted
  atomic writes left there and of this run's record. A benchmark runner's folder is locked in :meth:`Run.identify`
  when no record exists, and the record is looked for again under the lock: a run that found the folder busy is
  refused (:class:`RunLockedError`), or with ``cfg.wait_for_lock`` waits, and skips if the run it waited for wrote the
  record. Every rank learns rank 0's outcome, so all of them run, skip or fail together.
* **Process group.** :func:`byol_bench.dist.init_distributed` on entry (torchrun's environment, or one process
  without a group); the group is destroyed on exit, also when the run fails.
* **Run folder** (:meth:`Run.start`): ``config.yaml``, ``resolved.json`` (the entry point's ``Resolved``
  dataclass), ``provenance.json`` (earlier invocations kept in ``provenance.previous.jsonl``) and ``log.jsonl``
  (under ``cfg.force`` a fresh one: the earlier run's is kept as ``log.<n>.jsonl``).
* **Record** (:meth:`Run.finish`): assembled and validated on every rank, written by rank 0 only; every rank
  returns the metrics.

The config must have the fields every entry point shares (docs/RUNNERS.md): ``preset``, ``out_dir``, ``device``,
``tiny``, ``rehearsal`` and ``force`` (a runner's config subclasses :class:`byol_bench.runner_config.RunnerConfig`,
which declares them; the pretrainer's declares its own), and may have ``wait_for_lock`` (false when absent).

The pretrainer's checkpoint is its output, so it opens the run without one, with its folder
(``open_run(..., run_dir=out_dir)``: locked before its resume checkpoint is read), and names the checkpoint with
:meth:`Run.identify` once the final checkpoint exists.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byol_bench import dist
from byol_bench.checkpoint import sha256_file
from byol_bench.config import config_hash, to_dict
from byol_bench.records import find_record, make_record, model_label, read_record, record_path, write_record
from byol_bench.runlog import RunLog, archive_log, write_run_files

LOCK_FILE = "run.lock"
LOCK_POLL_S = 10.0  # how often a run that waits for a busy run folder tries again
# flock unsupported: NFS without a lock daemon (ENOLCK), some FUSE and SMB mounts (EOPNOTSUPP), Lustre mounted
# without -o flock (ENOSYS)
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
TEMP_FILE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # byol_bench.fileio.atomic_write's temp files (tempfile.mkstemp)


class RunLockedError(ValueError):
    """Another process holds the run folder; the message names it (pid, host, start) and the fix."""


@contextmanager
def open_run(protocol: str, dataset: str, cfg: Any, ckpt: str | os.PathLike | None = None,
             run_dir: str | os.PathLike | None = None) -> Iterator[Run]:
    """Open the bookkeeping of one run of ``protocol`` on ``dataset``; see the module docstring.

    Args:
        protocol: the record's protocol (a key of ``byol_bench.tables``, e.g. ``voc07_svm``).
        dataset: the record's dataset (e.g. ``voc07``).
        cfg: the entry point's frozen config dataclass.
        ckpt: the evaluated checkpoint; None when the run produces it (call :meth:`Run.identify` later).
        run_dir: the run folder, locked now; None: the default folder, locked by :meth:`Run.identify` (or
            :meth:`Run.start`).

    Raises:
        CheckpointError: ``ckpt`` does not exist.
        RunLockedError: another process holds the run folder (and ``cfg.wait_for_lock`` is false).
    """
    info = dist.init_distributed(cfg.device)
    try:
        run = Run(protocol, dataset, cfg, info)
        try:
            if run_dir is not None:
                run._claim(Path(run_dir))
            if ckpt is not None:
                run.identify(ckpt)
            yield run
        finally:
            for lock in (run._lock, *run._held):
                if lock is not None:
                    lock.release()
    finally:
        dist.cleanup()


class RunLock:
    """Exclusive hold of a run folder by one process: ``flock`` on ``<run_dir>/run.lock``.

    The flock is the mutual exclusion: the kernel (for NFS the server) drops it when its holder dies, however it dies,
    so a crashed run never blocks the folder. The file's JSON (``pid``, ``host``, ``started``) only names the holder
    in the messages; a file whose flock is free was left by a killed run and is taken over. The holder removes the
    file on release, so a folder that no run holds has none.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> dict[str, Any] | None:
        """Take the lock unless another process holds it: None when taken, else that holder's JSON (``{}`` when
        it has not written it yet). Where the file system has no flock, warns and goes on as if it had taken it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                return holder
            except OSError as exc:
                if exc.errno not in NO_FLOCK:
                    os.close(fd)
                    raise
                print(f"warning: {self.path}: the file system has no locks ({exc.strerror}); running unprotected "
                      "against a second run in this folder", flush=True)
            else:
                if not _same_file(fd, self.path):  # its holder released (and removed) it meanwhile: lock the new one
                    os.close(fd)
                    continue
                stale = _read_holder(fd)
                if stale:
                    print(f"{self.path}: taking over the lock left by {_describe(stale)}, which is gone", flush=True)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
            self._fd = fd
            return None

    def release(self) -> None:
        """Remove the lock file and drop the lock (a no-op when not held)."""
        if self._fd is None:
            return
        if _same_file(self._fd, self.path):  # removed first: a waiter that then locks the old file sees it is gone
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        here = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (here.st_dev, here.st_ino)


def _read_holder(fd: int) -> dict[str, Any]:
    """The lock file's JSON; ``{}`` while its holder has not written it yet."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
            f"(started {holder.get('started', 'at an unknown time')})")


def remove_temp_files(folder: Path, prefix: str = ".", recurse: bool = True, skip: Path | None = None) -> int:
    """Remove the temp files of interrupted atomic writes (``.<name>.<8 random>.tmp``) named ``prefix...`` in
    ``folder`` (and below it with ``recurse``, but not in ``skip`` nor in another run's folder: one holding its own
    ``run.lock``, whose writes may be under way); return how many. Call it holding the folder's lock."""
    skip = skip.resolve() if skip is not None else None
    removed = 0
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = [d for d in dirs if recurse and (here / d).resolve() != skip and not (here / d / LOCK_FILE).exists()]
        for name in files:
            if name.startswith(prefix) and TEMP_FILE.fullmatch(name):
                (here / name).unlink(missing_ok=True)
                removed += 1
    return removed


@dataclass
class Run:
    """One invocation of an entry point: its identity, folders, process group, log and provenance."""

    protocol: str
    dataset: str
    cfg: Any
    info: dist.DistInfo
    started: float = field(default_factory=time.time)
    config_hash: str = ""
    ckpt_path: Path | None = None
    ckpt_sha256: str = ""
    done: dict[str, float] | None = None  # metrics of the existing record when this run is skipped
    run_dir: Path | None = None
    log: RunLog | None = None
    provenance: dict[str, Any] | None = None
    _lock: RunLock | None = field(default=None, init=False, repr=False)  # set once every rank knows rank 0 holds it
    _held: list[RunLock] = field(default_factory=list, init=False, repr=False)  # further folders held (hold())

    def __post_init__(self) -> None:
        self.config_hash = config_hash(self.cfg)

    @property
    def records_dir(self) -> Path:
        return Path(self.cfg.out_dir) / "records"

    @property
    def record_path(self) -> Path:
        """Where this run's record goes (files that belong to the record are written next to it)."""
        return record_path(self.records_dir, self.protocol, self.dataset, self._sha(), self.config_hash)

    def plot_title(self, what: str) -> str:
        """A plot's title: what it shows, then the checkpoint and preset it belongs to (plots travel alone)."""
        return f"{what}\n{model_label(self.ckpt_path)} ({self._sha()[:8]}) · {self.cfg.preset}"

    def identify(self, ckpt: str | os.PathLike) -> dict[str, float] | None:
        """Hash ``ckpt`` and look for this run's record; return (and keep in ``done``) its metrics if it exists.

        With ``cfg.force`` an existing record is ignored (and replaced by :meth:`finish`). When the run goes on and
        holds no run folder yet, its default folder is locked first and the record looked for again: a run of the
        same identity may have written it meanwhile, or, when this one waited for it, just now (then this run skips
        also under ``cfg.force``: that record is the redone one).

        Raises:
            CheckpointError: ``ckpt`` does not exist.
            RunLockedError: another process holds the default run folder (and ``cfg.wait_for_lock`` is false).
        """
        self.ckpt_path = Path(ckpt)
        self.ckpt_sha256 = sha256_file(ckpt)
        found = self._recorded()
        if found is not None and not self.cfg.force:
            return self._skip(found, "exists for this checkpoint and config (--force redoes it)")
        if self._lock is None:
            waited = self._claim(self._default_run_dir())
            again = self._recorded()
            if again is not None and waited and again != found:
                return self._skip(again, "was written by the run this one waited for")
            if again is not None and not self.cfg.force:
                return self._skip(again, "exists for this checkpoint and config (--force redoes it)")
        if self.info.is_main:
            self._report_removed(remove_temp_files(self.records_dir, f".{self.record_path.stem}.", recurse=False),
                                 self.records_dir)
        return None

    def start(self, resolved: Any = None, run_dir: str | os.PathLike | None = None) -> RunLog:
        """Write the run folder (rank 0) and return its JSON-lines log.

        Args:
            resolved: the entry point's ``Resolved`` dataclass (derived values), written as ``resolved.json``.
            run_dir: the run folder; default: the one the run holds, else
                ``<out_dir>/runs/<protocol>/<model>-<sha8>-<config hash>`` (then locked here).
        """
        held = self.run_dir
        folder = Path(run_dir) if run_dir is not None else held or self._default_run_dir()
        if held is None:
            self._claim(folder)
        elif folder.resolve() != held.resolve():
            raise RuntimeError(f"Run.start(run_dir={folder}): the run holds {held}; name the folder it writes in "
                               "open_run(run_dir=...)")
        values = dataclasses.asdict(resolved) if dataclasses.is_dataclass(resolved) else (resolved or {})
        if self.cfg.force:
            archive_log(folder)
        self.provenance = write_run_files(folder, self.cfg, values)
        self.log = RunLog(folder)
        return self.log

    def finish(self, metrics: dict[str, float], *, checkpoint: dict[str, Any], seeds: dict[str, int],
               batch_size_per_device: int, details: dict[str, Any] | None = None, model: str | None = None,
               wall_time_s: float | None = None) -> dict[str, float]:
        """Write the result record (rank 0 only; validated on every rank) and return ``metrics``.

        Args:
            metrics: the table's numbers (percent where the table shows percent).
            checkpoint: ``format``, ``arch``, ``encoder`` (and any extra fields, e.g. an adapter's report);
                ``path`` and ``sha256`` come from the scaffold.
            seeds: every seed that changes the result.
            batch_size_per_device: images per process per step.
            details: protocol extras behind the table cells.
            model: the row label; default: from the checkpoint's file name.
            wall_time_s: the run's wall time when it spans several invocations; default: this invocation's.
        """
        if self.provenance is None:
            raise RuntimeError("Run.finish() before Run.start(): the record needs the run's provenance")
        record = make_record(
            protocol=self.protocol, dataset=self.dataset, model=model or model_label(self.ckpt_path),
            preset=self.cfg.preset, metrics=metrics, config=to_dict(self.cfg), config_hash=self.config_hash,
            checkpoint={**checkpoint, "path": str(self.ckpt_path), "sha256": self._sha()}, seeds=seeds,
            batch_size_per_device=batch_size_per_device,
            wall_time_s=time.time() - self.started if wall_time_s is None else wall_time_s,
            provenance=self.provenance, tiny=self.cfg.tiny, rehearsal=self.cfg.rehearsal, details=details)
        if self.info.is_main:
            write_record(record, self.records_dir)
        dist.barrier()
        return record["metrics"]

    def _default_run_dir(self) -> Path:
        return Path(self.cfg.out_dir) / "runs" / self.protocol / (
            f"{model_label(self.ckpt_path)}-{self._sha()[:8]}-{self.config_hash}")

    def _claim(self, run_dir: Path) -> bool:
        """Hold ``run_dir`` for this run: rank 0 takes its lock, every rank learns the outcome (so all go on, wait
        or fail together); then rank 0 removes the temp files interrupted writes left in it. Returns whether the run
        waited for another.

        Raises:
            RunLockedError: on every rank, when another process holds the folder and ``cfg.wait_for_lock`` is false.
        """
        self._lock, waited = self._hold(run_dir, "run folder", skip=self.records_dir)
        self.run_dir = run_dir
        return waited

    def hold(self, folder: str | os.PathLike) -> None:
        """Hold one more folder until the run ends, as the run folder is held: one whose files this run writes and
        other runs share (a semi_sup cell's state, shared by the grid and by the cell run alone). Rank 0 locks it,
        and removes the temp files interrupted writes left in it.

        Raises:
            RunLockedError: on every rank, when another process holds it and ``cfg.wait_for_lock`` is false.
        """
        lock, _ = self._hold(Path(folder), "folder")
        self._held.append(lock)

    def _hold(self, folder: Path, what: str, skip: Path | None = None) -> tuple[RunLock, bool]:
        """Rank 0 takes ``folder``'s lock (every rank learns the outcome, so all go on, wait or fail together),
        then removes the temp files in it (not in ``skip``); returns the lock and whether it waited for another."""
        lock, waited = RunLock(folder), False
        while (holder := _from_rank0(lock.acquire() if self.info.is_main else None)) is not None:
            busy = f"{folder}: another run holds this {what}: {_describe(holder)}"
            if not getattr(self.cfg, "wait_for_lock", False):
                raise RunLockedError(f"{busy}; let it finish, wait for it (wait_for_lock=true) or choose another "
                                     "--out-dir")
            if not waited and self.info.is_main:
                print(f"waiting: {busy} (wait_for_lock=true)", flush=True)
            waited = True
            time.sleep(LOCK_POLL_S)
        if self.info.is_main:
            self._report_removed(remove_temp_files(folder, skip=skip), folder)
        return lock, waited

    def _recorded(self) -> tuple[str, tuple[int, int, int], dict[str, float]] | None:
        """This run's valid record as rank 0 sees it: its path, (inode, size, mtime) and metrics; else None."""
        found = None
        if self.info.is_main:
            path = find_record(self.records_dir, self.protocol, self.dataset, self.ckpt_sha256, self.config_hash)
            if path is not None:
                stat = path.stat()
                found = (str(path), (stat.st_ino, stat.st_size, stat.st_mtime_ns), read_record(path)["metrics"])
        return _from_rank0(found)

    def _skip(self, found: tuple[str, tuple[int, int, int], dict[str, float]], why: str) -> dict[str, float]:
        if self.info.is_main:
            print(f"skip {self.protocol}: {found[0]} {why}")
        self.done = found[2]
        return self.done

    @staticmethod
    def _report_removed(count: int, folder: Path) -> None:
        if count:
            print(f"removed {count} temp file(s) of interrupted writes in {folder}", flush=True)

    def _sha(self) -> str:
        if not self.ckpt_sha256:
            raise RuntimeError("the run has no checkpoint yet: call Run.identify(path) first")
        return self.ckpt_sha256


def _from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (every rank calls this; without a process group, ``value``)."""
    return dist.all_gather_objects(value)[0]
