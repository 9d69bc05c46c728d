"""Stand-in protocol runner for the run_all tests: the same skip/record contract as the real runners."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from byol_bench.checkpoint import sha256_file
from byol_bench.cli import main_guard
from byol_bench.config import config_hash, opt, parse_args, to_dict
from byol_bench.records import find_record, make_record, model_label, write_record
from byol_bench.runlog import provenance


@dataclass(frozen=True)
class FakeConfig:
    preset: str = opt("none", "preset name")
    ckpt: str = opt("", "checkpoint")
    data_root: str = opt("data", "data root", identity=False)
    out_dir: str = opt("out", "output folder", identity=False)
    force: bool = opt(False, "redo", identity=False)


def main() -> None:
    cfg = parse_args(FakeConfig, preset_dir=Path(__file__).parents[1] / "configs")
    sha, key = sha256_file(cfg.ckpt), config_hash(cfg)
    records = Path(cfg.out_dir) / "records"
    if not cfg.force and find_record(records, "voc07_svm", "voc07", sha, key):
        print("skip: record exists")
        return
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(cfg.out_dir) / "runs.txt", "a") as handle:
        handle.write("ran\n")
    write_record(make_record(
        protocol="voc07_svm", dataset="voc07", model=model_label(cfg.ckpt), preset=cfg.preset,
        metrics={"svm": 42.0}, config=to_dict(cfg), config_hash=key,
        checkpoint={"path": cfg.ckpt, "sha256": sha, "format": "torchvision", "arch": "resnet18", "encoder": "online"},
        seeds={}, batch_size_per_device=1, wall_time_s=time.time() % 1, provenance=provenance(), tiny=True),
        records)


if __name__ == "__main__":
    main_guard(main)
