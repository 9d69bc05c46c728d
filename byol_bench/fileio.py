"""Atomic file writes (temp file in the same folder + rename): readers never see a partial file.

Kept free of torch so that record and table tools start instantly.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], mode: str) -> Path:
    """Call ``write(handle)`` on a temp file next to ``path``, then rename it over ``path``.

    On any failure the temp file is removed and ``path`` is left as it was: a full disk while saving a checkpoint
    keeps the last good one. A failed write (full disk, quota, permissions) is raised as an OSError naming ``path``,
    also where the writer turned it into another error (``torch.save`` raises a RuntimeError about its zip stream),
    so that the entry point can say in one line what to do (:func:`byol_bench.cli.main_guard`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from None
    recorder: _WriteErrors | None = None
    try:
        with os.fdopen(fd, mode) as handle:
            recorder = _WriteErrors(handle)
            write(recorder)
            # Data on disk before the rename: otherwise a power loss can persist the rename first (XFS, network
            # file systems) and leave an empty file where the last good checkpoint was.
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        failed = exc if isinstance(exc, OSError) else recorder.error if recorder else None
        if failed is None or failed.errno is None:
            raise
        raise _naming(failed, path) from exc
    _fsync_dir(path.parent)
    return path


class _WriteErrors:
    """The temp file as ``write`` sees it, keeping the OSError of a failed ``write``/``flush``: a writer may turn it
    into an error of its own (``torch.save``: "unexpected pos"), which would hide the full disk behind it."""

    def __init__(self, handle: IO) -> None:
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self._handle.flush()
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` as the same kind of OSError naming ``path`` (the temp file's name, or none, would mean nothing)."""
    return OSError(exc.errno, exc.strerror, str(path))


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the data itself is already synced
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda handle: handle.write(text), "w")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON (indented, keys sorted, trailing newline; NaN refused) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")
