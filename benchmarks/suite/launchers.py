"""The ``local`` and ``torchrun`` launchers: the jobs one after another on this machine, and the report.

``local`` runs ``python -m <module> <args>``: one process (the runners keep the recipe's global batch with their
small-world rules). ``torchrun`` runs ``python -m torch.distributed.run --nproc-per-node N [...] -m <module> <args>``
for every job, N at most the recipe's GPU count of a full preset (:meth:`Torchrun.for_job`): one node
(``--standalone``) or several (``--nnodes``, ``--node-rank``, ``--master-addr``; inside a SLURM allocation they
default to its variables, so ``srun --ntasks-per-node 1 scripts/run_all_benchmarks.sh ...`` runs the suite on every
node of it). The runners are torchrun-native (byol_bench.dist): nothing else changes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.suite.jobs import Job
from byol_bench.fileio import atomic_write_text
from byol_bench.records import load_records
from byol_bench.tables import PUBLISHED_DIR, records_frame, render_markdown, render_summary, write_timings

Run = tuple[str, str, float, str]  # protocol, preset, seconds, status: one line of run_times.tsv


@dataclass(frozen=True)
class Torchrun:
    """Where the processes of a torchrun launch sit: ``nnodes`` nodes of ``nproc_per_node`` each."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = ""
    master_port: int = 29500

    def for_job(self, job: Job) -> Torchrun:
        """At most the recipe's GPU count for a full preset: a 4-GPU recipe on an 8-GPU node runs on 4 (the
        segmentation runner's batch is per GPU, as mmseg's: more processes would change its recipe; the other runners
        keep their global batch either way). The embedded data's presets run on every process given."""
        if job.preset not in dict(job.protocol.full):
            return self
        return dataclasses.replace(self, nproc_per_node=min(self.nproc_per_node, math.ceil(job.gpus / self.nnodes)))

    def argv(self) -> list[str]:
        if self.nnodes == 1 and not self.master_addr:
            where = ["--standalone"]  # a free port on this machine: jobs never collide with another suite's
        else:
            where = ["--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank),
                     "--master-addr", self.master_addr or "127.0.0.1", "--master-port", str(self.master_port)]
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(self.nproc_per_node), *where]


def slurm_nodes() -> tuple[int, int, str]:
    """``(nnodes, node_rank, master address)`` of the SLURM allocation this runs in, or ``(1, 0, "")``."""
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES", os.environ.get("SLURM_NNODES", "1")))
    if nodes <= 1 or "SLURM_JOB_NODELIST" not in os.environ:
        return 1, 0, ""
    hosts = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]], check=True,
                           capture_output=True, text=True).stdout.split()
    return nodes, int(os.environ.get("SLURM_NODEID", "0")), hosts[0]


def visible_gpus() -> int:
    import torch  # here: the other launchers never need it

    return torch.cuda.device_count()


def command(job: Job, torchrun: Torchrun | None) -> list[str]:
    """The command line of ``job``: ``python -m`` (local), or under torchrun."""
    start = [sys.executable] if torchrun is None else torchrun.for_job(job).argv()
    return [*start, "-m", job.protocol.module, *job.args]


def available(job: Job) -> bool:
    """A protocol runs when its module exists (a stand-in list may name one that does not)."""
    try:
        return importlib.util.find_spec(job.protocol.module) is not None
    except ModuleNotFoundError:  # its package is missing too
        return False


def run_jobs(jobs: list[Job], torchrun: Torchrun | None, dry_run: bool) -> list[Run]:
    """Run the jobs one after another (a failing one does not stop the others); their ``(protocol, preset,
    seconds, status)``."""
    runs = []
    for job in jobs:
        argv = command(job, torchrun)
        if dry_run:
            print(" ".join(argv))
            continue
        if not available(job):
            print(f"-- {job.protocol.name}: not available yet, skipped", flush=True)
            continue
        print(f"== {job.protocol.name} (preset {job.preset})", flush=True)
        began = time.time()
        done = subprocess.run(argv)
        if done.returncode != 0:
            print(f"!! {job.protocol.name} ({job.preset}) failed (exit {done.returncode})", file=sys.stderr)
        runs.append((job.protocol.name, job.preset, time.time() - began, "ok" if done.returncode == 0 else "FAILED"))
    return runs


def report(out: Path, runs: list[Run]) -> None:
    """Write ``run_times.tsv``, and from the records (when there are any) ``model_zoo.md`` (the tables, the
    published rows, the runs of this invocation with their failures, links to every plot) and ``all_records.csv``;
    print the tables and the summary."""
    write_timings(out / "run_times.tsv", runs)
    if not (out / "records").is_dir():
        return
    records = load_records(out / "records") + load_records(PUBLISHED_DIR)
    text = render_markdown(records, out, runs)
    atomic_write_text(out / "model_zoo.md", text)
    atomic_write_text(out / "all_records.csv", records_frame(records).to_csv(index=False))
    print(text)
    print(f"\n== summary: protocol, preset, wall time, headline figure\n{render_summary(records, runs)}")
    print(f"report (tables, published rows, links to every plot): {out / 'model_zoo.md'}")
    print(f"records: {out / 'records'}/   run folders (logs, curves, result files): {out / 'runs'}/   "
          f"all metrics: {out / 'all_records.csv'}")
