"""Command lines run in the test process: ``python -m MODULE ARGS`` without a new interpreter.

A runner's one-line-error tests try a handful of bad inputs each; as subprocesses every case paid ~3 s of Python and
torch start-up before reaching the check it tests. :func:`run_module` runs the same entry module (``runpy``, as
``python -m`` does: ``main_guard`` included) in this process and returns what ``subprocess.run`` would: the exit
code, stdout and stderr. The interpreter path stays covered: every runner runs as ``python -m`` in a real
interpreter in its kill test (tests/kill_support.py), and a one-line error reaches a real interpreter's stderr in
tests/test_voc07_svm_e2e.py and tests/test_pretrain_train.py (``main_guard`` is the same for every entry point).
"""

from __future__ import annotations

import contextlib
import io
import runpy
import subprocess
import sys
from typing import IO


def run_module(argv: list[str]) -> subprocess.CompletedProcess:
    """``argv`` as given to ``subprocess.run`` (``[sys.executable, "-m", module, *args]``), run in this process."""
    if argv[:2] != [sys.executable, "-m"]:
        raise ValueError(f"expected [sys.executable, '-m', module, ...], got {argv[:3]}")
    module, args = argv[2], [str(a) for a in argv[3:]]
    out, err = io.StringIO(), io.StringIO()
    saved_argv, code = sys.argv, 0
    sys.argv = [module, *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    except SystemExit as exc:
        code = exit_code(exc, err)
    finally:
        sys.argv = saved_argv
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def exit_code(exc: SystemExit, stderr: IO[str]) -> int:
    """What the interpreter does with a ``SystemExit``: an int is the exit code, None is 0, and a message goes to
    ``stderr`` (exit code 1)."""
    if isinstance(exc.code, str):
        stderr.write(exc.code + "\n")
    return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
