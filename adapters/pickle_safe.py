"""A restricted unpickler for detectron2-style ``.pkl`` weight files.

``pickle.load`` runs whatever callable a file names, so a downloaded ``.pkl`` is code, not data. detectron2 model
files are plain pickles of ``{"model": {name: numpy array}, ...}``, which ``torch.load(weights_only=True)`` does
not read. This unpickler resolves only the handful of globals needed to rebuild dicts, lists, numbers, strings and
numpy arrays; any other global (``os.system``, ``builtins.eval``, a class) is refused before anything runs.
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from byol_bench.checkpoint import CheckpointError

# (module, name) -> object. numpy pickles name its private reconstructors; numpy>=2 moved them from
# ``numpy.core`` to ``numpy._core`` and files written by either version must load, so both spellings map to the
# installed functions. ``_codecs.encode`` turns the latin-1 text of protocol-2 (Python 2 era) pickles into bytes.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = np._core.multiarray._reconstruct
    _ALLOWED[(_module, "scalar")] = np._core.multiarray.scalar
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_module, "_frombuffer")] = np._core.numeric._frombuffer


class _DataOnlyUnpickler(pickle.Unpickler):
    """Resolve only the globals in ``_ALLOWED``; everything else is refused unexecuted."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it references {module}.{name}") from None


def load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` allowing only dicts, lists, numbers, strings and numpy arrays.

    Raises:
        CheckpointError: missing file, a pickle that names code (refused before it runs), or unreadable data.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found; check the path")
    try:
        with open(path, "rb") as handle:
            # latin1 reads the numpy payload of Python 2 pickles (detectron2's Caffe2-era model zoo) as bytes.
            return _DataOnlyUnpickler(handle, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("it references"):
            raise CheckpointError(
                f"{path}: refused to unpickle: {exc}, which is code, not data; only dicts, lists, numbers, "
                "strings and numpy arrays are accepted - obtain the weights from a trusted source"
            ) from None
        raise CheckpointError(f"{path}: not a readable pickle ({exc}); is it truncated or of another format?") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as exc:
        raise CheckpointError(
            f"{path}: not a readable pickle ({type(exc).__name__}: {str(exc)[:120]}); is it truncated or of another "
            "format?"
        ) from None
