"""Run every protocol on one checkpoint and write one model-zoo report: locally, under torchrun, or on SLURM.

    scripts/run_all_benchmarks.sh [CKPT] [--preset tiny|full] [--only a,b] [--data-root DIR] [--out DIR] [--force]
                                  [--launcher local|torchrun|slurm] [--dry-run] [--plan] [options below]

With no CKPT this is the demo: it generates the embedded mini-datasets (data/tiny), pretrains the tiny BYOL
checkpoint, and runs every protocol at the tiny preset. Each runner skips work whose record already exists for the
same checkpoint sha256 and config (--force redoes it) and resumes an unfinished run from its last checkpoint, so
rerunning the same command after a crash, a preemption or a timeout finishes what is left. A failing protocol does
not stop the others: failures are named in the report, and the exit code is non-zero.

Launchers (--launcher):
  local     one process per protocol, one after another (the default). The runners keep each recipe's global batch
            with fewer processes (docs/RUNNERS.md, "small world").
  torchrun  each protocol under `torchrun --nproc-per-node N` (default: the GPUs visible, or 1), one after another;
            several nodes with --nnodes/--node-rank/--master-addr, which default to the SLURM allocation's when run
            inside one (one suite command per node: `srun --ntasks-per-node 1 scripts/run_all_benchmarks.sh ...`).
  slurm     one job per (protocol, preset) through submitit, each with its preset's reference GPU count (nodes x
            --gpus-per-node, at most --max-nodes), then a tables job (afterany) that writes the report and names the
            jobs that failed. Prints the job ids, the log folder and the command that shows progress; --wait blocks
            until all are done (non-zero exit when one failed). A preempted, requeued or timed-out job resumes from
            its last checkpoint; a job whose record exists is not submitted; one still queued is not submitted twice.

--dry-run prints every command or job (resources, command) and launches nothing. --plan prints, per preset, the
GPUs, the schedule, the images processed, and the GPU-hours and wall time on --gpus/--nodes, from a gpu_check JSON
(--rates) or the reference rates of docs/CLUSTER.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.suite import launchers, plan, slurm
from benchmarks.suite.jobs import make_jobs
from byol_bench.cli import main_guard
from byol_bench.protocols import PROTOCOLS, Protocol, select

REPO = Path(__file__).resolve().parents[2]
# Tests drive the suite with stand-in runners: "module:attribute" of another protocol list.
PROTOCOLS_HOOK = "BYOL_BENCH_SUITE_PROTOCOLS"


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments: ``error: ...`` on one line and exit 2 (argparse prints the usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="run_all_benchmarks.sh", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", nargs="?", type=Path, help="the checkpoint (.pth); none: the demo")
    p.add_argument("--preset", choices=("tiny", "full"), default="tiny", help="the presets to run (default tiny)")
    p.add_argument("--only", default="",
                   help="comma-separated protocols, or protocol:preset for one preset (default: every protocol)")
    p.add_argument("--data-root", type=Path, help="datasets (default: the checkout's data/, or data/tiny for the demo)")
    p.add_argument("--out", type=Path,
                   help="records, runs and report (default: the checkout's results/<checkpoint name>, or results/demo)")
    p.add_argument("--force", action="store_true", help="redo runs whose record exists")
    p.add_argument("--launcher", choices=("local", "torchrun", "slurm"), default="local",
                   help="where the processes run (default local; see above)")
    p.add_argument("--dry-run", action="store_true", help="print every command or job; launch nothing")
    p.add_argument("--plan", action="store_true",
                   help="print the GPUs, work and GPU-hours of every full preset; run nothing")
    t = p.add_argument_group("torchrun")
    t.add_argument("--nproc-per-node", type=positive,
                   help="processes per node (torchrun: default the GPUs visible, or 1; slurm --gpus-per-node 0: the "
                        "CPU tasks of a job, default 1)")
    t.add_argument("--nnodes", type=positive, help="nodes (default: the SLURM allocation's, or 1)")
    t.add_argument("--node-rank", type=int, help="this node's rank (default: $SLURM_NODEID, or 0)")
    t.add_argument("--master-addr", default=None, help="rank 0's host (default: the allocation's first node)")
    t.add_argument("--master-port", type=int, default=29500)
    s = p.add_argument_group("slurm")
    s.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8; 0: CPU-only jobs)")
    s.add_argument("--max-nodes", type=positive, help="at most this many nodes per job (default: as many as needed)")
    s.add_argument("--cpus-per-task", type=positive, default=8, help="CPUs per process (default 8)")
    s.add_argument("--partition", help="SLURM partition")
    s.add_argument("--account", help="SLURM account")
    s.add_argument("--qos", help="SLURM quality of service")
    s.add_argument("--constraint", help="SLURM node constraint (e.g. a100)")
    s.add_argument("--time", type=positive, default=slurm.DEFAULT_TIME_MIN,
                   help=f"time limit per job in minutes (default {slurm.DEFAULT_TIME_MIN}); a job that reaches it "
                        "is requeued and resumes")
    s.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --sbatch mem=400G --sbatch exclude=node3 (repeatable)")
    s.add_argument("--wait", action="store_true", help="block until every job is done; non-zero exit if one failed")
    c = p.add_argument_group("plan")
    c.add_argument("--gpus", type=positive, default=8, help="GPUs per node of the planned cluster (default 8)")
    c.add_argument("--nodes", type=positive, default=1, help="nodes of the planned cluster (default 1)")
    c.add_argument("--rates", type=Path, help="a scripts/gpu_check.py JSON: its measured rates replace the reference")
    args = p.parse_args(argv)
    if args.gpus_per_node < 0:
        p.error(f"--gpus-per-node must be 0 or more, got {args.gpus_per_node}")
    for option in args.sbatch:
        if "=" not in option:
            p.error(f"--sbatch {option}: write it KEY=VALUE, e.g. --sbatch mem=400G")
    return args


def protocol_list() -> tuple[Protocol, ...]:
    hook = os.environ.get(PROTOCOLS_HOOK)
    if not hook:
        return PROTOCOLS
    module, _, attribute = hook.partition(":")
    return getattr(importlib.import_module(module), attribute)


def demo_checkpoint(data_root: Path, dry_run: bool) -> Path:
    """The demo's inputs: the embedded data, then the tiny BYOL checkpoint pretrained on it (here, one process)."""
    ckpt = REPO / "work_dirs" / "pretrain" / "tiny" / "byol_resnet18_tiny.pth"
    steps = []
    if not (data_root / "TINY_DATA.json").is_file():
        steps.append(("generating the embedded mini-datasets in " + str(data_root),
                      [sys.executable, str(REPO / "scripts" / "make_tiny_data.py"), "--out", str(data_root)]))
    if not ckpt.is_file():
        steps.append(("pretraining the tiny BYOL checkpoint (ResNet-18, embedded ImageNet layout)",
                      [sys.executable, "-m", "pretrain", "--preset", "tiny", f"data_root={data_root}",
                       f"out_dir={ckpt.parent}"]))
    for what, argv in steps:
        print(f"== {what}", flush=True)
        if dry_run:
            print(" ".join(argv))
        else:
            subprocess.run(argv, check=True, cwd=REPO)
    return ckpt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.plan:
        selection = select(args.only, "full", protocol_list())
        print(plan.render(plan.plan(selection, plan.load_rates(args.rates)), args.gpus, args.nodes))
        return 0
    selection = select(args.only, args.preset, protocol_list())
    if args.launcher == "slurm" and not args.dry_run:
        slurm.check_available()
    if args.ckpt is None:
        data_root = args.data_root or REPO / "data" / "tiny"
        out = args.out or REPO / "results" / "demo"
        ckpt = demo_checkpoint(data_root, args.dry_run)
    else:
        ckpt, data_root = args.ckpt, args.data_root or REPO / "data"
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint {ckpt} not found; pass the path of a .pth file")
        out = args.out or REPO / "results" / ckpt.stem
    jobs = make_jobs(selection, ckpt.resolve(), data_root.resolve(), out.resolve(), args.force)
    if args.launcher == "slurm":
        return slurm.launch(jobs, slurm.Options.from_args(args), out.resolve(), ckpt, args.dry_run, args.wait)
    torchrun = None
    if args.launcher == "torchrun":
        nnodes, node_rank, master = launchers.slurm_nodes()
        torchrun = launchers.Torchrun(args.nproc_per_node or launchers.visible_gpus() or 1, args.nnodes or nnodes,
                                      node_rank if args.node_rank is None else args.node_rank,
                                      args.master_addr or master, args.master_port)
    runs = launchers.run_jobs(jobs, torchrun, args.dry_run)
    if args.dry_run:
        return 0
    if torchrun is None or torchrun.node_rank == 0:  # one report: every node ran the same jobs
        launchers.report(out, runs)
    several = {p.name for p, presets in selection if len(presets) > 1}
    labels = {status: [f"{p}:{preset}" if p in several else p for p, preset, _, s in runs if s == status]
              for status in ("ok", "FAILED")}
    print(f"protocols run: {' '.join(labels['ok']) or 'none'}")
    if labels["FAILED"]:
        print(f"FAILED protocols: {' '.join(labels['FAILED'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    main_guard(lambda: sys.exit(main()))
