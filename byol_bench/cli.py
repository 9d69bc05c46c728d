"""Entry-point glue: turn expected errors into one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

# The project's own errors (CheckpointError, ConfigError, RecordError, the loaders' errors) subclass ValueError and
# carry a complete one-line message naming the file and the fix; STYLE.md also uses ValueError for unknown names.
# Anything else is a bug and keeps its traceback. (No imports of the error classes: this module stays torch-free.)
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def main_guard(fn: Callable[[], Any]) -> None:
    """Run ``fn()``; on a user error print ``error: <message>`` (one line) and exit 2."""
    try:
        fn()
    except USER_ERRORS as exc:
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
