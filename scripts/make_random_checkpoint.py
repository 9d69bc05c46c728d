#!/usr/bin/env python
"""Write a seeded random-init ResNet state dict: the labelled baseline row of the tables.

    python scripts/make_random_checkpoint.py --arch resnet18 --seed 0 --out work_dirs/random-init_resnet18_seed0.pth
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from byol_bench.backbone import build_resnet, trunk_state_dict
from byol_bench.checkpoint import atomic_save
from byol_bench.cli import main_guard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18", help="torchvision ResNet name (or timm:<name>)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the initialisation")
    parser.add_argument("--out", type=Path, required=True, help="output .pth (name it random-init_* so tables say so)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    state = trunk_state_dict(build_resnet(args.arch))
    atomic_save(state, args.out)
    print(args.out)


if __name__ == "__main__":
    main_guard(main)
