"""Checkpoint I/O: safe loading, atomic writes, hashing and strict state-dict loading.

Every checkpoint is read with ``torch.load(weights_only=True)``: a checkpoint is data, and a pickle that tries to
run code is refused instead of executed. Every error is one line naming the file and what to do about it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from byol_bench.fileio import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["CheckpointError", "atomic_save", "atomic_write_json", "atomic_write_text", "load_state_dict_strict",
           "safe_load", "sha256_file"]


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model; the message is one line naming the file."""


def safe_load(path: str | os.PathLike) -> Any:
    """Load a torch checkpoint with ``weights_only=True`` on the CPU.

    Raises:
        CheckpointError: the file is missing, is not a torch checkpoint, or carries code (refused unexecuted).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found; check the path (--ckpt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses globals it does not know: that is exactly a pickle that would run code.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to unpickle (weights_only=True): {first}; only tensors, numbers, strings, lists and "
            "dicts are accepted - re-save the weights with torch.save(model.state_dict(), ...)"
        ) from None
    except Exception as exc:  # a truncated or foreign file fails in many ways; all mean "unreadable"
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {_one_line(exc)}); "
            "is the file truncated or of another format?"
        ) from None


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB checkpoints do not need to fit in memory."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: checkpoint file not found; check the path (--ckpt)")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (temp file + rename)."""
    return atomic_write(Path(path), lambda handle: torch.save(obj, handle), "wb")


def load_state_dict_strict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str | os.PathLike,
    allowed_missing: Iterable[str] = (),
) -> None:
    """Load ``state_dict`` into ``model`` and fail unless the only missing keys are ``allowed_missing``.

    ``strict=False`` followed by an exact check, as MoCo's ``main_lincls.py`` does: a silent partial load (the
    most expensive mistake in transfer benchmarks) becomes an error that lists what did not match.

    Raises:
        CheckpointError: missing (beyond ``allowed_missing``) or unexpected keys, or shape mismatches.
    """
    expected = model.state_dict()
    mismatched = [
        f"{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if mismatched:
        raise CheckpointError(f"{source}: shape mismatch for {_preview(mismatched)}; wrong architecture (--arch)?")
    result = model.load_state_dict(dict(state_dict), strict=False)
    missing = sorted(set(result.missing_keys) - set(allowed_missing))
    unexpected = sorted(result.unexpected_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit {type(model).__name__}: missing keys [{_preview(missing)}], "
            f"unexpected keys [{_preview(unexpected)}]; wrong architecture, or convert it with "
            "`python -m adapters inspect`"
        )


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""
