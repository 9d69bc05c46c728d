"""Distributed helpers: no-ops without a process group; real collectives under torchrun (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from byol_bench import dist
from byol_bench.runlog import RunLog


def test_single_process_needs_no_process_group(tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = dist.init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
    x = torch.arange(3.0)
    assert dist.all_reduce_mean(x) is x and dist.all_reduce_sum(x) is x and dist.all_gather_cat(x) is x
    bn = nn.Sequential(nn.BatchNorm2d(2))
    assert isinstance(dist.maybe_sync_bn(bn)[0], nn.BatchNorm2d)
    RunLog(tmp_path).log(loss=torch.tensor(1.5), bad=float("nan"))
    row = json.loads((tmp_path / "log.jsonl").read_text())
    assert row["loss"] == 1.5 and row["bad"] == "nan"


def test_torchrun_two_processes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(Path(__file__).parent / "dist_worker.py"), str(tmp_path)],
                   check=True, env=env, capture_output=True, timeout=300)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result == {"world": 2, "mean": 0.5, "sum": 1.0, "gathered": [0.0, 1.0], "syncbn": True}
    # Only rank 0 writes the log.
    assert [json.loads(line)["rank"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [0]
