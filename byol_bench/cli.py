"""Entry-point glue: turn expected errors into one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

# The project's own errors (CheckpointError, ConfigError, RecordError, the loaders' errors) subclass ValueError and
# carry a complete one-line message naming the file and the fix; an unknown name (preset, arch, dataset, layer) is a
# ValueError listing the valid names.
# Anything else is a bug and keeps its traceback. (No imports of the error classes: this module stays torch-free.)
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def main_guard(fn: Callable[[], Any]) -> None:
    """Run ``fn()``; on a user error print ``error: <message>`` (one line) and exit 2."""
    try:
        fn()
    except USER_ERRORS as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None


def one_line(exc: BaseException) -> str:
    """The error's message on one line. An error re-raised from a DataLoader worker carries the worker's traceback
    in its message ("Caught DatasetError in DataLoader worker process 0. Original Traceback ..."): its last line,
    ``module.ErrorClass: message``, holds the message (which names the file), so that is what is kept."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())
