"""Command line of the BYOL pretrainer.

    python -m pretrain --preset tiny data_root=data/tiny out_dir=work_dirs/pretrain/tiny
    torchrun --nproc_per_node 8 -m pretrain --preset byol_resnet50_8xb32-accum16-coslr-200e_in1k data_root=data
    python -m pretrain --help          # every key with its default and advice

Presets are ``configs/pretrain/*.yaml``; any key can be overridden as ``key=value`` or ``--key value``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from byol_bench import dist
from byol_bench.cli import main_guard
from byol_bench.config import parse_args
from pretrain.config import PRESET_DIR, PretrainConfig
from pretrain.train import run


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, train, print the final metrics as one JSON line (rank 0)."""
    cfg = parse_args(PretrainConfig, argv, preset_dir=PRESET_DIR, description=__doc__)
    metrics = run(cfg)  # the run scaffold has destroyed the process group when run() returns
    if dist.launch_rank() == 0:
        print(json.dumps(metrics))


if __name__ == "__main__":
    main_guard(main)
