"""The suite on a real one-node SLURM (scripts/slurm_cluster.sh, started by .ci/run): jobs, requeue, report, rerun.

Skipped, with the reason, only where no cluster can be started (no slurm-wlm and not root to install it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from byol_bench.records import load_records

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "scripts" / "slurm_cluster.sh"
# a frozen-trunk probe and a trainer of the whole network: one tiny preset each (~15, ~25 s), one interrupted each way
# (the launch, requeue and resume path is the same for every protocol: the others would only add minutes)
ONLY = "linear_avgpool:tiny,segmentation:tiny"


@pytest.fixture(scope="module")
def slurm_env():
    """The environment of a running one-node cluster: the one of $SLURM_CONF, or one started here (and stopped)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "BYOL_BENCH_NO_PROGRESS": "1"}
    started = False
    if "SLURM_CONF" not in env:
        if shutil.which("slurmctld") is None:
            pytest.skip('no SLURM here: `eval "$(scripts/slurm_cluster.sh start)"` installs slurm-wlm and munge and '
                        "starts a one-node cluster (.ci/run does)")
        done = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            pytest.skip(f"the one-node SLURM did not start: {done.stderr.strip().splitlines()[-1]}")
        env["SLURM_CONF"] = done.stdout.strip().split("=", 1)[1]
        started = True
    if subprocess.run(["sinfo"], env=env, capture_output=True, timeout=30).returncode != 0:
        pytest.skip(f"SLURM_CONF={env['SLURM_CONF']} is set but sinfo fails: the cluster is not running")
    yield env
    if started:
        subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=120)


def _suite(env: dict, *args: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "benchmarks.suite", *args]
    if not wait:
        return subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def _job_id(env: dict, label: str) -> str:
    listing = subprocess.run(["squeue", "-h", "--me", "-o", "%i|%j"], env=env, capture_output=True, text=True,
                             check=True).stdout
    (job_id,) = [i for i, name in (line.split("|") for line in listing.splitlines()) if name.startswith(label + "@")]
    return job_id


def _metrics(out: Path) -> dict[tuple[str, str], dict[str, float]]:
    return {(r["protocol"], r["dataset"]): r["metrics"] for r in load_records(out / "records")}


def test_suite_on_slurm_equals_local_and_requeued_jobs_resume(slurm_env, ckpt, tiny_data, tmp_path):
    common = (str(ckpt), "--data-root", str(tiny_data), "--only", ONLY)
    on_slurm = ("--out", str(tmp_path / "slurm"), "--launcher", "slurm", "--gpus-per-node", "0",
                "--cpus-per-task", "1", "--wait")
    suite = _suite(slurm_env, *common, *on_slurm, wait=False)
    # the uninterrupted reference, of the probe only: that the preempted segmentation run resumes to the numbers of an
    # uninterrupted one is tests/test_segmentation.py's kill test (here: that SLURM requeued it and it resumed)
    local = _suite(slurm_env, str(ckpt), "--data-root", str(tiny_data), "--only", "linear_avgpool:tiny", "--out",
                   str(tmp_path / "local"), wait=False)

    # Once each has checkpointed: requeue the probe's job from outside (`scontrol requeue`, as a node failure would),
    # and preempt the segmentation job the way SLURM does before a time limit or a preemption (SIGUSR2: submitit
    # requeues it). Each rerun must resume from its checkpoint, not start again.
    interrupted = {}
    for label, how in (("linear_avgpool", ["scontrol", "requeue"]), ("segmentation", ["scancel", "--signal=USR2"])):
        checkpoints = tmp_path / "slurm" / "runs" / label
        deadline = time.time() + 300
        while not list(checkpoints.glob("*/latest.pth")) and time.time() < deadline and suite.poll() is None:
            time.sleep(0.2)
        assert list(checkpoints.glob("*/latest.pth")), f"the {label} job wrote no checkpoint"
        interrupted[label] = _job_id(slurm_env, f"{label}:tiny")
        subprocess.run([*how, interrupted[label]], env=slurm_env, check=True, capture_output=True)

    stdout, stderr = suite.communicate(timeout=600)
    assert suite.returncode == 0, stderr
    assert "progress: squeue -j " in stdout and "/slurm/<job id>/<job id>_0_log.out" in stdout
    assert local.wait(timeout=600) == 0, local.stderr.read()
    for label, job_id in interrupted.items():
        shown = subprocess.run(["scontrol", "show", "job", job_id], env=slurm_env, capture_output=True,
                               text=True).stdout
        assert "Restarts=1" in shown and "JobState=COMPLETED" in shown, shown
        job_log = tmp_path / "slurm" / "slurm" / job_id / f"{job_id}_0_log.out"
        assert f"{label}: resumed from" in job_log.read_text()  # the rerun continued from its checkpoint

    # Every record is valid (load_records validates); the requeued probe's equals the local run's: the runners are
    # deterministic on the CPU, and it resumed to the uninterrupted result.
    measured = _metrics(tmp_path / "slurm")
    assert set(measured) == {("linear_avgpool", "imagenet"), ("segmentation", "voc12aug")}
    assert _metrics(tmp_path / "local") == {("linear_avgpool", "imagenet"): measured[("linear_avgpool", "imagenet")]}
    report = (tmp_path / "slurm" / "model_zoo.md").read_text()
    runs = report.split("## Runs")[1].split("```")[1].splitlines()
    assert [line.split()[:2] + line.split()[4:5] for line in runs if line] == [
        ["linear_avgpool", "tiny", "ok"], ["segmentation", "tiny", "ok"]]
    assert "FAILED" not in report

    # The same command again: every record exists, so nothing but the tables job is submitted.
    again = _suite(slurm_env, *common, *on_slurm)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skip ") == 2 and "submitted linear_avgpool" not in again.stdout
    assert _metrics(tmp_path / "slurm") == measured


def test_refused_partition_is_one_line_and_submits_nothing(slurm_env, ckpt, tiny_data, tmp_path):
    before = subprocess.run(["squeue", "-h", "--me"], env=slurm_env, capture_output=True, text=True).stdout
    bad = _suite(slurm_env, str(ckpt), "--data-root", str(tiny_data), "--only", "voc07_svm", "--out",
                 str(tmp_path / "out"), "--launcher", "slurm", "--gpus-per-node", "0", "--partition", "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error: sbatch refused the jobs: ")
    assert "partition" in bad.stderr.lower() and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert subprocess.run(["squeue", "-h", "--me"], env=slurm_env, capture_output=True, text=True).stdout == before
