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
* **Process group.** :func:`byol_bench.dist.init_distributed` on entry (torchrun's environment, or one process
  without a group); the group is destroyed on exit, also when the run fails.
* **Run folder** (:meth:`Run.start`): ``config.yaml``, ``resolved.json`` (the entry point's ``Resolved``
  dataclass), ``provenance.json`` (earlier invocations kept in ``provenance.previous.jsonl``) and ``log.jsonl``.
* **Record** (:meth:`Run.finish`): assembled and validated on every rank, written by rank 0 only; every rank
  returns the metrics.

The config must have the fields every entry point shares (docs/RUNNERS.md): ``preset``, ``out_dir``, ``device``,
``tiny``, ``rehearsal`` and ``force`` (a runner's config subclasses :class:`byol_bench.runner_config.RunnerConfig`,
which declares them; the pretrainer's declares its own).

The pretrainer's checkpoint is its output, so it opens the run without one and names it with :meth:`Run.identify`
once the final checkpoint exists.
"""

from __future__ import annotations

import dataclasses
import os
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
from byol_bench.runlog import RunLog, write_run_files


@contextmanager
def open_run(protocol: str, dataset: str, cfg: Any, ckpt: str | os.PathLike | None = None) -> Iterator[Run]:
    """Open the bookkeeping of one run of ``protocol`` on ``dataset``; see the module docstring.

    Args:
        protocol: the record's protocol (a key of ``byol_bench.tables``, e.g. ``voc07_svm``).
        dataset: the record's dataset (e.g. ``voc07``).
        cfg: the entry point's frozen config dataclass.
        ckpt: the evaluated checkpoint; None when the run produces it (call :meth:`Run.identify` later).

    Raises:
        CheckpointError: ``ckpt`` does not exist.
    """
    info = dist.init_distributed(cfg.device)
    try:
        run = Run(protocol, dataset, cfg, info)
        if ckpt is not None:
            run.identify(ckpt)
        yield run
    finally:
        dist.cleanup()


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

        With ``cfg.force`` an existing record is ignored (and replaced by :meth:`finish`).
        """
        self.ckpt_path = Path(ckpt)
        self.ckpt_sha256 = sha256_file(ckpt)
        existing = find_record(self.records_dir, self.protocol, self.dataset, self.ckpt_sha256, self.config_hash)
        if existing is not None and not self.cfg.force:
            if self.info.is_main:
                print(f"skip {self.protocol}: {existing} exists for this checkpoint and config (--force redoes it)")
            self.done = read_record(existing)["metrics"]
        return self.done

    def start(self, resolved: Any = None, run_dir: str | os.PathLike | None = None) -> RunLog:
        """Write the run folder (rank 0) and return its JSON-lines log.

        Args:
            resolved: the entry point's ``Resolved`` dataclass (derived values), written as ``resolved.json``.
            run_dir: the run folder; default ``<out_dir>/runs/<protocol>/<model>-<sha8>-<config hash>``.
        """
        if run_dir is None:
            run_dir = Path(self.cfg.out_dir) / "runs" / self.protocol / (
                f"{model_label(self.ckpt_path)}-{self._sha()[:8]}-{self.config_hash}")
        self.run_dir = Path(run_dir)
        values = dataclasses.asdict(resolved) if dataclasses.is_dataclass(resolved) else (resolved or {})
        self.provenance = write_run_files(self.run_dir, self.cfg, values)
        self.log = RunLog(self.run_dir)
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

    def _sha(self) -> str:
        if not self.ckpt_sha256:
            raise RuntimeError("the run has no checkpoint yet: call Run.identify(path) first")
        return self.ckpt_sha256
