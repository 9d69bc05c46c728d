"""One torchrun job that runs command lines one after another: ``torchrun --nproc_per_node 2 tests/torchrun_queue.py
QUEUE`` (tests/test_torchrun_equivalence.py's shared job).

Each process waits for ``QUEUE/<k>.json`` (k = 0, 1, ...: ``{"module", "argv", "log", "port"}``, or ``null`` to
end), runs ``python -m <module> <argv>`` in itself (``runpy``, as ``python -m`` does) with its output appended to
``log``, and writes its exit code to ``QUEUE/<k>.<rank>.exit`` (rank 0 always, other ranks when it is not 0). One
launcher and two interpreters then serve every test of the module instead of three interpreters per test (~10 CPU-s
of start-up each).

A runner initialises and destroys its process group itself, so the runs are as separate as separate jobs', but for
one thing: a process group made again on the launcher's store can read the keys the previous one left there (seen:
gloo connecting to the port of the previous group's peer), so each run's group meets on a store of its own, which
rank 0 serves at ``port`` (``MASTER_PORT``; ``TORCHELASTIC_USE_AGENT_STORE=False``, as without an agent).

A failed run ends the process at once (``os._exit``): torchrun then stops the other one, which may be waiting in a
collective that will never complete, and the test sees the job gone.
"""

from __future__ import annotations

import itertools
import json
import os
import runpy
import sys
import time
import traceback
from pathlib import Path

from cli_support import exit_code  # tests/ is sys.path[0] of this script

from byol_bench.fileio import atomic_write_text

POLL_S = 0.05


def run(module: str, argv: list[str], log: str) -> int:
    """``python -m module argv`` in this process, stdout and stderr appended to ``log``; its exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as output:
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
        sys.argv = [module, *argv]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exit_code(exc, sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, saved_fd in enumerate(saved, start=1):
                os.dup2(saved_fd, fd)
                os.close(saved_fd)
    return code


def main(queue: Path) -> None:
    rank = int(os.environ["RANK"])
    for k in itertools.count():
        spec = queue / f"{k}.json"
        while not spec.exists():
            time.sleep(POLL_S)
        job = json.loads(spec.read_text())
        if job is None:
            return
        os.environ.update(MASTER_PORT=str(job["port"]), TORCHELASTIC_USE_AGENT_STORE="False")
        code = run(job["module"], job["argv"], job["log"])
        if rank == 0 or code:
            atomic_write_text(queue / f"{k}.{rank}.exit", str(code))  # whole when seen: the test polls for it
        if code:
            os._exit(code)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
