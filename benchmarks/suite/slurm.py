"""The ``slurm`` launcher: one submitit job per (protocol, preset), then a tables job that writes the report.

Why submitit rather than hand-written sbatch scripts: it is what DINO, MAE and VISSL users already submit with; it
writes the sbatch script, starts one task per GPU with ``srun`` and tells each its rank (``JobEnvironment``), keeps
every job's log and outcome (``<id>_0_result.pkl``: success or the traceback) in one folder, requeues a job on
preemption or timeout (``Checkpointable``: SIGUSR2 ``signal_delay_s`` before the limit), and chains the tables job
with an ``afterany`` dependency. What it does not need: ``sacct`` (a cluster without an accounting store has none);
this module waits on ``squeue`` and reads the outcome files.

Each job's task starts the runner as ``python -m <module> <args>`` with torchrun's variables (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) taken from SLURM: the runners' one code path
(byol_bench.dist). A requeued job runs the same command again, and the runner resumes from its last checkpoint
(``resume=auto``).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import pickle
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from benchmarks.suite import launchers
from benchmarks.suite.jobs import Job, existing_record
from byol_bench.checkpoint import sha256_file
from byol_bench.records import read_record

DEFAULT_TIME_MIN = 72 * 60
# squeue states of a job that is not over (a requeued job is PENDING again)
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "PREEMPTED"}
POLL_S = 5


@dataclass(frozen=True)
class Options:
    """The resources and sbatch options of every job."""

    gpus_per_node: int = 8
    max_nodes: int | None = None
    nproc_per_node: int | None = None  # CPU-only jobs (gpus_per_node == 0): processes of a job
    cpus_per_task: int = 8
    time_min: int = DEFAULT_TIME_MIN
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        return cls(args.gpus_per_node, args.max_nodes, args.nproc_per_node, args.cpus_per_task, args.time,
                   args.partition, args.account, args.qos, args.constraint,
                   dict(option.split("=", 1) for option in args.sbatch))

    def resources(self, job: Job) -> dict[str, int]:
        """``nodes``, ``ntasks_per_node`` and ``gpus_per_node`` of ``job``: its reference GPU count over nodes of
        ``gpus_per_node`` (at most ``max_nodes``; on fewer processes the runners' small-world rules apply,
        docs/CLUSTER.md)."""
        if self.gpus_per_node == 0:
            return {"nodes": 1, "ntasks_per_node": self.nproc_per_node or 1, "gpus_per_node": 0}
        nodes = min(math.ceil(job.gpus / self.gpus_per_node), self.max_nodes or job.gpus)
        per_node = min(job.gpus, self.gpus_per_node)
        return {"nodes": nodes, "ntasks_per_node": per_node, "gpus_per_node": per_node}

    def sbatch(self, job: Job) -> dict:
        """submitit's ``SlurmExecutor`` parameters of ``job``."""
        res = self.resources(job)
        params = {"nodes": res["nodes"], "ntasks_per_node": res["ntasks_per_node"], "cpus_per_task": self.cpus_per_task,
                  "time": self.time_min, "partition": self.partition, "account": self.account, "qos": self.qos,
                  "constraint": self.constraint,
                  # a requeued job (preemption, `scontrol requeue`, timeout) runs again: the runner resumes
                  "additional_parameters": {"requeue": True, **self.extra}}
        if res["gpus_per_node"]:
            params["gpus_per_node"] = res["gpus_per_node"]
        return {k: v for k, v in params.items() if v is not None}


def check_available() -> None:
    if shutil.which("sbatch") is None:
        raise ValueError("--launcher slurm needs SLURM's sbatch on PATH: run on a cluster's login node, or install "
                         "the client (Debian/Ubuntu: apt-get install slurm-client; scripts/slurm_cluster.sh starts a "
                         "one-node test cluster)")


class RunnerTask(submitit.helpers.Checkpointable):
    """One task of a job: ``python -m <module> <args>`` as one rank of the job's processes. Checkpointable: on
    preemption or timeout submitit requeues the same call, and the runner resumes from its last checkpoint."""

    def __init__(self, module: str, args: tuple[str, ...]) -> None:
        self.module, self.args = module, args

    def __call__(self) -> str:
        env = submitit.JobEnvironment()
        ranks = {}
        if env.num_tasks > 1:
            ranks = {"RANK": env.global_rank, "LOCAL_RANK": env.local_rank, "WORLD_SIZE": env.num_tasks,
                     "LOCAL_WORLD_SIZE": env.num_tasks // env.num_nodes, "MASTER_ADDR": env.hostnames[0],
                     "MASTER_PORT": 20000 + int(env.job_id.split("_")[0]) % 20000}  # one port per job
        done = subprocess.run([sys.executable, "-m", self.module, *self.args],
                              env={**os.environ, **{k: str(v) for k, v in ranks.items()}})
        if done.returncode != 0:
            raise RuntimeError(f"python -m {self.module} exited with {done.returncode} (its output is above)")
        return "ok"


class TablesTask:
    """The last job: the report of every job (``ok`` when its outcome file says success; a skipped job is ok), with
    the wall time its record states."""

    def __init__(self, out: Path, jobs: list[tuple[Job, str]], folder: Path, ckpt_sha256: str) -> None:
        self.out, self.jobs, self.folder, self.sha = out, jobs, folder, ckpt_sha256

    def __call__(self) -> str:
        runs = []
        for job, job_id in self.jobs:
            record = existing_record(job, self.sha, honour_force=False)
            seconds = float(read_record(record)["wall_time_s"]) if record else 0.0
            runs.append((job.protocol.name, job.preset, seconds, outcome(self.folder, job_id) if job_id else "ok"))
        launchers.report(self.out, runs)
        return "ok"


def outcome(folder: Path, job_id: str) -> str:
    """``ok`` when the job's outcome file says success; ``FAILED`` otherwise (an error, or killed before it could
    write one)."""
    result = _folder(folder, job_id) / f"{job_id}_0_result.pkl"
    if not result.is_file():
        return "FAILED"
    with result.open("rb") as handle:
        tag, _ = pickle.load(handle)
    return "ok" if tag == "success" else "FAILED"


def _folder(folder: Path, job_id: str) -> Path:
    return Path(str(folder).replace("%j", job_id))


def out_tag(out: Path) -> str:
    """A short name of the out folder: two suites into two folders never take each other's jobs."""
    return hashlib.sha1(str(out).encode()).hexdigest()[:8]


def job_name(job: Job, out: Path) -> str:
    """The job's name in the queue: what and where."""
    return f"{job.label}@{out_tag(out)}"


def queued() -> dict[str, str]:
    """Job name -> id of this user's jobs that are not over."""
    listing = subprocess.run(["squeue", "-h", "--me", "-o", "%i|%j|%T"], capture_output=True, text=True, check=True)
    return {name: job_id for job_id, name, state in (line.split("|") for line in listing.stdout.splitlines())
            if state in ACTIVE}


def flags(params: dict) -> list[str]:
    """submitit parameters as the sbatch options they become."""
    merged = {**{k: v for k, v in params.items() if k != "additional_parameters"},
              **params.get("additional_parameters", {})}
    return [f"--{key.replace('_', '-')}" + ("" if value is True else f"={value}") for key, value in merged.items()]


def test_only(job: Job, options: Options) -> None:
    """Ask sbatch whether it would take such a job (partition, account, qos, resources), submitting nothing."""
    done = subprocess.run(["sbatch", "--test-only", *flags(options.sbatch(job)), "--wrap", "true"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        message = " ".join(line.removeprefix("sbatch: error: ") for line in done.stderr.splitlines() if line.strip())
        raise ValueError(f"sbatch refused the jobs: {message}")


def launch(jobs: list[Job], options: Options, out: Path, ckpt: Path, dry_run: bool, wait: bool) -> int:
    """Submit the jobs and the tables job; print the ids, the logs and how to follow them. Returns the exit code."""
    folder = out / "slurm" / "%j"
    if dry_run:
        for job in jobs:
            print(f"job {job.label}: {' '.join(flags(options.sbatch(job)))}\n    python -m {job.protocol.module} "
                  f"{' '.join(job.args)}")
        print(f"job tables (afterany: all of the above): 1 task, no GPU\n    writes {out / 'model_zoo.md'}")
        return 0
    sha = sha256_file(ckpt)
    waiting = queued()
    todo, submitted = [], []
    for job in jobs:
        if (record := existing_record(job, sha)) is not None:
            print(f"skip {job.label}: {record} exists (--force redoes it)")
            submitted.append((job, ""))
        elif (queued_id := waiting.get(job_name(job, out))) is not None:
            print(f"{job.label}: already queued as job {queued_id}, not submitted again")
            submitted.append((job, queued_id))
        else:
            todo.append(job)
    if todo:
        test_only(max(todo, key=lambda j: j.gpus), options)
    executor = submitit.SlurmExecutor(folder=folder)
    for job in todo:
        executor.update_parameters(job_name=job_name(job, out), **options.sbatch(job))
        submitted.append((job, executor.submit(RunnerTask(job.protocol.module, job.args)).job_id))
        print(f"submitted {job.label}: job {submitted[-1][1]} ({' '.join(flags(options.sbatch(job)))})")
    ids = [job_id for _, job_id in submitted if job_id]
    tables = {"nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 1, "time": 60,
              **{k: v for k, v in options.sbatch(jobs[0]).items() if k in ("partition", "account", "qos")}}
    if ids:
        tables["additional_parameters"] = {"dependency": "afterany:" + ":".join(ids)}
    executor.update_parameters(job_name=f"tables@{out_tag(out)}", **tables)
    order = sorted(submitted, key=lambda s: jobs.index(s[0]))
    tables_id = executor.submit(TablesTask(out, order, folder, sha)).job_id
    print(f"submitted tables: job {tables_id} (afterany), writes {out / 'model_zoo.md'}")
    print(f"logs: {out / 'slurm'}/<job id>/<job id>_0_log.out (and .err)")
    print(f"progress: squeue -j {','.join([*ids, tables_id])}")
    if not wait:
        return 0
    wait_for([*ids, tables_id])
    failed = [job.label for job, job_id in order if job_id and outcome(folder, job_id) != "ok"]
    if outcome(folder, tables_id) != "ok":
        failed.append("tables")
    print(f"report: {out / 'model_zoo.md'}")
    if failed:
        print(f"FAILED jobs: {' '.join(failed)} (logs in {out / 'slurm'}/)", file=sys.stderr)
        return 1
    return 0


def wait_for(ids: list[str]) -> None:
    """Block until none of ``ids`` is queued or running (``squeue``: no accounting store needed)."""
    while True:
        listing = subprocess.run(["squeue", "-h", "-o", "%T", "-j", ",".join(ids)], capture_output=True, text=True)
        if listing.returncode == 0 and not ACTIVE & set(listing.stdout.split()):
            return
        if listing.returncode != 0 and "Invalid job id" in listing.stderr:
            return  # every id has left the controller's memory: all over
        time.sleep(POLL_S)
