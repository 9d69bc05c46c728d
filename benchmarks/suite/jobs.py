"""The suite's unit of work: one (protocol, preset) run of a runner, and whether its record exists already."""

from __future__ import annotations

import importlib
import typing
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from byol_bench.config import config_hash, parse_args
from byol_bench.protocols import Protocol, Selection
from byol_bench.records import find_record


@dataclass(frozen=True)
class Job:
    """``python -m <protocol.module> <args>``: one preset of one protocol.

    Attributes:
        protocol: its entry of :data:`byol_bench.protocols.PROTOCOLS`.
        preset: the preset it runs.
        args: the runner's command-line arguments (``--preset``, ``--ckpt``, ``--data-root``, ``--out-dir``, ...).
        gpus: the recipe's processes (the preset's reference GPU count; 1 for the embedded data).
    """

    protocol: Protocol
    preset: str
    args: tuple[str, ...]
    gpus: int

    @property
    def label(self) -> str:
        return f"{self.protocol.name}:{self.preset}"


def make_jobs(selection: Selection, ckpt: Path, data_root: Path, out: Path,
              force: bool) -> list[Job]:
    """One job per (protocol, preset) of ``selection`` (:func:`byol_bench.protocols.select`), in its order."""
    return [Job(p, preset, ("--preset", preset, "--ckpt", str(ckpt), "--data-root", str(data_root), "--out-dir",
                            str(out), *(["--force"] if force else [])), p.gpus(preset))
            for p, presets in selection for preset in presets]


def runner_config(protocol: Protocol, args: typing.Sequence[str]) -> tuple[ModuleType, typing.Any]:
    """The runner module of ``protocol`` and its config for these command-line arguments, parsed as the runner
    parses them (the config class is the type of ``run``'s ``cfg``: docs/RUNNERS.md)."""
    runner = importlib.import_module(protocol.runner)
    return runner, parse_args(typing.get_type_hints(runner.run)["cfg"], args, preset_dir=runner.PRESET_DIR)


def existing_record(job: Job, ckpt_sha256: str, honour_force: bool = True) -> Path | None:
    """The record this job writes, when it exists: the runner's own identity (checkpoint sha256 and config hash of
    the very arguments it gets), so a job the runner would skip is not launched at all. With ``--force`` in its
    arguments (and ``honour_force``) there is none: the job redoes it."""
    if honour_force and "--force" in job.args:
        return None
    runner, cfg = runner_config(job.protocol, job.args)
    dataset = getattr(cfg, "dataset", None) or runner.DATASET
    return find_record(Path(cfg.out_dir) / "records", job.protocol.name, dataset, ckpt_sha256, config_hash(cfg))
