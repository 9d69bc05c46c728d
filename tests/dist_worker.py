"""Run under torchrun by tests/test_dist.py: checks collectives, SyncBN conversion and rank-0-only writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from byol_bench import dist
from byol_bench.runlog import RunLog

info = dist.init_distributed(device="cpu")
out = Path(sys.argv[1])
rank = torch.tensor([float(info.rank)])
result = {
    "world": info.world_size,
    "mean": dist.all_reduce_mean(rank).item(),
    "sum": dist.all_reduce_sum(rank).item(),
    "gathered": dist.all_gather_cat(rank).tolist(),
    "syncbn": isinstance(dist.maybe_sync_bn(nn.Sequential(nn.BatchNorm2d(2)))[0], nn.SyncBatchNorm),
}
RunLog(out).log(rank=info.rank)
if dist.is_main():
    (out / "result.json").write_text(json.dumps(result))
dist.barrier()
dist.cleanup()
