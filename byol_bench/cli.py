"""Entry-point glue: turn expected errors into one line on stderr and exit code 2."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Any

# The project's own errors (CheckpointError, ConfigError, RecordError, the loaders' errors) subclass ValueError and
# carry a complete one-line message naming the file and the fix; an unknown name (preset, arch, dataset, layer) is a
# ValueError listing the valid names.
# Anything else is a bug and keeps its traceback. (No imports of the error classes: this module stays torch-free.)
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)

# OSErrors the user causes and fixes (the path, the disk, the permissions), by errno: what to do about each. Any
# other OSError (EIO, EBADF, ...) is the machine's or a bug's and keeps its traceback. ``{out}`` is the entry
# point's output option.
OS_ERROR_FIXES: dict[int, str] = {
    errno.ENOSPC: "free space or choose another {out}",
    errno.EDQUOT: "free space within your quota or choose another {out}",
    errno.EACCES: "fix its permissions or choose another {out}",
    errno.EPERM: "fix its permissions or choose another {out}",
    errno.EROFS: "choose another {out} on a writable file system",
    errno.ENAMETOOLONG: "choose a shorter {out}",
    errno.ENOTDIR: "a file stands where a folder is needed: move it or choose another {out}",
    errno.EEXIST: "a file stands where a folder is needed: move it or choose another {out}",
    errno.EISDIR: "a folder stands where a file is needed: move it or choose another {out}",
}


def main_guard(fn: Callable[[], Any], out_option: str = "--out-dir") -> None:
    """Run ``fn()``; on a user error print ``error: <message>`` (one line) and exit 2.

    Args:
        fn: the entry point's main.
        out_option: the option that chooses where it writes, named in the fix of a file-system error.
    """
    try:
        fn()
    except USER_ERRORS as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:
        message = os_error_line(exc, out_option)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def os_error_line(exc: OSError, out_option: str = "--out-dir") -> str | None:
    """``<filename>: <strerror>; <what to do>`` for an OSError the user causes (:data:`OS_ERROR_FIXES`), else None."""
    fix = OS_ERROR_FIXES.get(exc.errno) if exc.errno is not None else None
    if fix is None:
        return None
    where = f"{exc.filename}: " if exc.filename is not None else ""
    return " ".join(f"{where}{exc.strerror}; {fix.format(out=out_option)}".split())


def one_line(exc: BaseException) -> str:
    """The error's message on one line. An error re-raised from a DataLoader worker carries the worker's traceback
    in its message ("Caught DatasetError in DataLoader worker process 0. Original Traceback ..."): its last line,
    ``module.ErrorClass: message``, holds the message (which names the file), so that is what is kept."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())
