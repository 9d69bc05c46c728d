"""Entry-point glue: turn expected errors into one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from byol_bench.checkpoint import CheckpointError
from byol_bench.config import ConfigError
from byol_bench.records import RecordError

# Errors whose message is already a complete, actionable sentence. Anything else is a bug: show the traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (CheckpointError, ConfigError, RecordError, FileNotFoundError,
                                                 ValueError)


def main_guard(fn: Callable[[], Any]) -> None:
    """Run ``fn()``; on a user error print ``error: <message>`` (one line) and exit 2."""
    try:
        fn()
    except USER_ERRORS as exc:
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
