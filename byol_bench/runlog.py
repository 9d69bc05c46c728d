"""Per-run logging: a JSON-lines metrics log, progress bars, and the provenance written into every run folder.

Only rank 0 writes. A run folder holds ``config.yaml`` (the config as given), ``resolved.json`` (derived values),
``provenance.json`` (command line, git commit, library versions, device; earlier invocations of the same run in
``provenance.previous.jsonl``) and ``log.jsonl`` (metrics).
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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

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


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them visible rather than crash the logger
    return value


def progress(iterable: Iterable[T], desc: str, total: int | None = None, **kwargs: Any) -> Iterator[T]:
    """A tqdm progress bar on rank 0 (silent on other ranks); ``BYOL_BENCH_NO_PROGRESS=1`` turns bars off."""
    disable = not dist.is_main() or os.environ.get("BYOL_BENCH_NO_PROGRESS") == "1"
    return iter(tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True, **kwargs))


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
    import numpy
    import sklearn
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "scikit-learn": sklearn.__version__}


def provenance() -> dict[str, Any]:
    """Command line, git commit, library versions, device and host: what is needed to rerun a result."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
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
