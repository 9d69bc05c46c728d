"""scripts/run_all_benchmarks.sh (python -m benchmarks.suite), local launcher: idempotent reruns, --force, failure
reporting, bad arguments; with stand-in runners."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.suite.__main__ import main as suite_main
from byol_bench.cli import main_guard
from byol_bench.protocols import PROTOCOLS

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_all_benchmarks.sh"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "BYOL_BENCH_SUITE_PROTOCOLS": "fakebench:PROTOCOLS",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "fake_runners"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp_path)


def _ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "random-init_r18.pth"
    path.write_bytes(b"weights are hashed, never parsed by the stand-in runner")
    return path


def test_rerun_is_idempotent_only_filters_and_force_redoes(tmp_path):
    ckpt, out = _ckpt(tmp_path), tmp_path / "out"
    first = _run(tmp_path, str(ckpt), "--out", str(out), "--only", "ok")
    assert first.returncode == 0, first.stderr
    assert "| random-init_r18 † | tiny |  | 42.00 |" in first.stdout
    assert "(published) |" in first.stdout  # the published rows beside the measured one
    summary = first.stdout.split("== summary")[1].splitlines()
    assert any(line.split()[:2] == ["ok", "tiny"] and line.split()[-1] == "ok" for line in summary), summary
    # --only filters out the failing stand-in listed first: the exit code is 0 and only ok runs (and skips: its
    # record exists).
    second = _run(tmp_path, str(ckpt), "--out", str(out), "--only", "ok")
    assert second.returncode == 0 and "skip voc07_svm:" in second.stdout and "protocols run: ok" in second.stdout
    assert (out / "runs.txt").read_text() == "ran\n"
    assert _run(tmp_path, str(ckpt), "--out", str(out), "--only", "ok", "--force").returncode == 0
    assert (out / "runs.txt").read_text() == "ran\nran\n"
    assert (out / "model_zoo.md").is_file() and (out / "all_records.csv").is_file()


def test_failure_is_reported_and_others_still_run(tmp_path):
    ckpt, out = _ckpt(tmp_path), tmp_path / "out"
    result = _run(tmp_path, str(ckpt), "--out", str(out))
    assert result.returncode == 1
    assert "FAILED protocols: broken" in result.stderr
    assert "missing: not available yet, skipped" in result.stdout
    assert (out / "runs.txt").read_text() == "ran\n"
    report = (out / "model_zoo.md").read_text()  # the report names the failure too
    assert "**FAILED: broken (tiny)**" in report and "broken          tiny" in report.split("## Runs")[1]


def _suite(capsys, *args: str) -> tuple[int, str, str]:
    """The suite in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main_guard(lambda: sys.exit(suite_main(list(args))))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_bad_arguments_exit_2_in_one_line_and_write_nothing(tmp_path, capsys, monkeypatch):
    ckpt, out = str(_ckpt(tmp_path)), tmp_path / "out"
    (tmp_path / "not_gpu_check.json").write_text('{"rows": []}')
    cases = {
        (str(tmp_path / "nope.pth"),): "checkpoint " + str(tmp_path / "nope.pth") + " not found",
        ("--preset", "huge"): "argument --preset: invalid choice: 'huge'",
        ("--launcher", "mpirun"): "argument --launcher: invalid choice: 'mpirun' (choose from 'local', 'torchrun', "
                                  "'slurm')",
        ("--launcher", "torchrun", "--nproc-per-node", "0"): "argument --nproc-per-node: must be at least 1, got 0",
        ("--only", "voc07_svm,nope"): "--only nope: unknown protocol; valid: voc07_svm, linear_mhead, linear_avgpool, "
                                      "semi_sup, det_voc, det_coco, segmentation",
        ("--plan", "--rates", str(tmp_path / "not_gpu_check.json")): "not a gpu_check JSON",
        ("--sbatch", "exclusive"): "--sbatch exclusive: write it KEY=VALUE",
        ("--bogus",): "unrecognized arguments: --bogus",
    }
    for args, message in cases.items():
        code, stdout, stderr = _suite(capsys, *((ckpt,) if "nope" not in args[0] else ()), "--out", str(out), *args)
        assert code == 2 and message in stderr, (args, stderr)
        assert len(stderr.strip().splitlines()) == 1 and stdout == "", (args, stdout)
    # no sbatch on PATH: the message names what to install
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _, stderr = _suite(capsys, ckpt, "--out", str(out), "--launcher", "slurm")
    assert code == 2 and "needs SLURM's sbatch on PATH" in stderr and "slurm-client" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_plan_prints_gpus_work_and_gpu_hours_per_protocol_and_in_total(tmp_path, capsys):
    code, out, _ = _suite(capsys, "--plan")
    assert code == 0
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == sum(len(p.full) for p in PROTOCOLS)  # every full preset of every protocol
    det_voc = next(r for r in rows if r[1] == "faster-rcnn_resnet50-c4_8xb2-24k_voc0712")
    # 24k iterations x 16 images at the reference 8 img/s/GPU, plus the 4,952 test images at 3x the rate
    assert det_voc[2:5] == ["8", "24,000 iters x 16", "384,000"]
    assert float(det_voc[8]) == pytest.approx((384_000 + 4_952 / 3) / 8 / 3600, abs=0.05)
    in1k = next(r for r in rows if r[1] == "linear-mhead_resnet50_8xb32-steplr-90e_in1k")
    assert in1k[4] == f"{90 * 1_281_167:,}" and in1k[3] == "90 epochs x 256"
    per_protocol = next(line for line in out.splitlines() if line.startswith("GPU-hours per protocol: "))
    assert [part.split()[0] for part in per_protocol.split(": ")[1].split(", ")] == [p.name for p in PROTOCOLS]
    total = float(next(line for line in out.splitlines() if line.startswith("Total: ")).split()[1].replace(",", ""))
    assert total == pytest.approx(sum(float(r[8].replace(",", "")) for r in rows), abs=0.1)
    # two nodes: the same GPU-hours, less wall time
    _, two, _ = _suite(capsys, "--plan", "--nodes", "2")
    wall = [float(line.split("; ")[1].split()[0].replace(",", "")) for line in (out, two)
            for line in line.splitlines() if line.startswith("Total: ")]
    assert wall[1] < wall[0]


def test_plan_takes_measured_rates_from_a_gpu_check_json(tmp_path, capsys):
    """gpu_check's GPU rehearsal rows (scripts/rehearse.py's, with the rehearsal summary) replace the reference."""
    rates = tmp_path / "gpu_check.json"
    rates.write_text(json.dumps({"dry_run": False, "machine": {"gpu": "NVIDIA H200"}, "steps": {"rehearsal": {
        "status": "ok", "rows": [{"protocol": "det_coco", "preset": "mask-rcnn_resnet50-fpn_8xb2-ms-1x_coco",
                                  "status": "ok", "images_per_s": 20.0, "full_run_device_hours": 21.5}]}}}))
    code, out, _ = _suite(capsys, "--plan", "--only", "det_coco,det_voc", "--rates", str(rates))
    assert code == 0
    rows = {r.split(" | ")[1]: r.split(" | ") for r in out.splitlines() if r.startswith("| det_")}
    assert rows["mask-rcnn_resnet50-fpn_8xb2-ms-1x_coco"][6:9] == ["20", "gpu_check (NVIDIA H200)", "21.5"]
    assert rows["faster-rcnn_resnet50-c4_8xb2-24k_voc0712"][7] == "reference"
    rates.write_text(json.dumps({"dry_run": True, "machine": {"gpu": None}, "steps": {}}))
    code, _, err = _suite(capsys, "--plan", "--rates", str(rates))
    assert code == 2 and "a CPU dry run of gpu_check measures no GPU rate" in err


def test_dry_run_prints_every_command_and_launches_nothing(tmp_path, capsys):
    ckpt, out = _ckpt(tmp_path), tmp_path / "out"
    code, text, _ = _suite(capsys, str(ckpt), "--out", str(out), "--preset", "full", "--launcher", "torchrun",
                           "--nproc-per-node", "4", "--nnodes", "2", "--node-rank", "1", "--master-addr", "node0",
                           "--dry-run")
    lines = text.strip().splitlines()
    assert code == 0 and len(lines) == sum(len(p.full) for p in PROTOCOLS)
    # 2 nodes of 4: the 8-GPU recipes on all of them, the 4-GPU ones on 2 per node, the SVM on 1 per node
    per_node = {p.name: {8: "4", 4: "2", 1: "1"}[p.full[0][1]] for p in PROTOCOLS}
    assert all(f" -m torch.distributed.run --nproc-per-node {per_node[line.split(' -m benchmarks.')[1].split()[0]]} "
               "--nnodes 2 --node-rank 1 --master-addr node0 --master-port 29500 -m benchmarks." in line
               for line in lines), lines
    code, text, _ = _suite(capsys, str(ckpt), "--out", str(out), "--preset", "full", "--launcher", "slurm",
                           "--gpus-per-node", "4", "--max-nodes", "1", "--partition", "gpu", "--sbatch",
                           "mem=400G", "--dry-run", "--only", "det_voc,voc07_svm")
    assert code == 0
    assert ("job det_voc:faster-rcnn_resnet50-c4_8xb2-24k_voc0712: --nodes=1 --ntasks-per-node=4 --cpus-per-task=8 "
            "--time=4320 --partition=gpu --gpus-per-node=4 --requeue --mem=400G") in text  # 8 GPUs -> 1 node of 4
    assert "job voc07_svm:voc07_svm_mmselfsup: --nodes=1 --ntasks-per-node=1" in text
    assert "job tables (afterany: all of the above)" in text
    assert not out.exists()
