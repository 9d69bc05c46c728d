"""Run under torchrun by tests/test_scaffold.py: the scaffold writes the record on rank 0 only and destroys the group.

Every rank calls ``Run.finish``; each call that reaches ``write_record`` appends the rank to ``writes.txt``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from test_scaffold import TinyConfig  # the script's folder (tests/) is on sys.path

from byol_bench import dist, scaffold
from byol_bench.config import load_config

out, ckpt = Path(sys.argv[1]), sys.argv[2]
write_record = scaffold.write_record


def counting_write(record, records_dir):
    with open(out / "writes.txt", "a") as handle:
        handle.write(f"{dist.get_rank()}\n")
    return write_record(record, records_dir)


scaffold.write_record = counting_write
cfg = load_config(TinyConfig, overrides=[f"out_dir={out}", "device=cpu"])
with scaffold.open_run("voc07_svm", "voc07", cfg, ckpt=ckpt) as run:
    world, rank = run.info.world_size, run.info.rank
    run.start()
    metrics = run.finish({"svm": 10.0 + rank}, checkpoint={"format": "torchvision", "arch": "resnet18",
                                                           "encoder": "online"}, seeds={}, batch_size_per_device=1)
state = {"world": world, "metrics": metrics, "initialized_after": dist.is_initialized()}
(out / f"rank{rank}.json").write_text(json.dumps(state))
