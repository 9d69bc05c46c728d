"""BYOL's own objective on held-out images: did a run learn what it was trained to do?

A fixed set of view pairs (images the run never trained on, each with its own augmentation seed, through the
trainer's own augmentation code) is scored with the symmetrised BYOL loss (:meth:`pretrain.model.BYOL.forward`)
for the weights a run starts from and for the weights it ends with. The loss is computed as training computes it:
BN layers in train mode (per-view batch statistics, batches of the training size), on a deep copy, without
gradients, so neither the networks nor their running statistics change. Eval mode would score something else: a
random init's BN running statistics are placeholders (mean 0, variance 1).

    python -m pretrain.heldout work_dirs/pretrain/tiny/final.pth [--images 256] [--pair-seed 0] [--data-root DIR]

prints ``{"initial": ..., "final": ..., "drop": ...}`` for the first ``--images`` val images of the run's dataset
(``tests/test_pretrain_tiny.py`` asserts the drop; docs/PRETRAIN.md has the measured figures). In code::

    pairs = heldout_view_pairs(open_split(cfg, "val"), cfg.image_size, (cfg.crop_scale_min, 1.0),
                               count=128, batch_size=cfg.batch_size_per_device)
    before = byol_loss(initial_byol(cfg), pairs)
    after = byol_loss(byol_from_checkpoint(out_dir / "final.pth"), pairs)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from byol_bench.backbone import build_resnet
from byol_bench.checkpoint import safe_load
from byol_bench.cli import main_guard
from pretrain import train
from pretrain.augment import BatchAugmenter
from pretrain.config import PretrainConfig
from pretrain.data import TwoViewDataset, open_split, sample_seed
from pretrain.model import BYOL
from pretrain.train import load_networks

ViewPair = tuple[torch.Tensor, torch.Tensor]


def heldout_view_pairs(images: Dataset, image_size: int, scale: tuple[float, float], *, count: int,
                       batch_size: int, seed: int = 0) -> list[ViewPair]:
    """Two augmented, normalised views of the first ``count`` images, in batches of ``batch_size`` (CPU tensors).

    Image ``i`` gets the augmentation seed ``sample_seed(seed, 0, i)``, so the pairs are a function of the images
    and ``seed`` only. A trailing partial batch is dropped, as the trainer drops one (BN statistics per batch).

    Raises:
        ValueError: fewer than ``batch_size`` images.
    """
    count = min(count, len(images))
    if count < batch_size:
        raise ValueError(f"{count} images are fewer than one batch of {batch_size}")
    views = TwoViewDataset(images, image_size, scale)
    augmenter = BatchAugmenter(torch.device("cpu"), channels_last=False)
    pairs = []
    for start in range(0, count - batch_size + 1, batch_size):
        samples = [views[(i, sample_seed(seed, 0, i))] for i in range(start, start + batch_size)]
        pairs.append(augmenter(default_collate(samples)))
    return pairs


@torch.no_grad()
def byol_loss(byol: BYOL, pairs: Sequence[ViewPair]) -> float:
    """Mean symmetrised BYOL loss (in [0, 8]) over ``pairs``, networks in train mode as in training.

    Runs on a deep copy, so ``byol`` (weights, BN running statistics, mode) is left as it was.
    """
    probe = copy.deepcopy(byol).train()
    device = next(probe.parameters()).device
    losses = [float(probe(view1.to(device), view2.to(device))) for view1, view2 in pairs]
    return sum(losses) / len(losses)


def config_from_checkpoint(path: Path) -> PretrainConfig:
    """The config a pretraining checkpoint was written with (keys this version does not know are ignored)."""
    saved: dict[str, Any] = safe_load(path)["config"]
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    return PretrainConfig(**{k: v for k, v in saved.items() if k in known})


def byol_from_checkpoint(path: Path) -> BYOL:
    """The online network, predictor and target of a pretraining checkpoint (``pretrain.train.checkpoint_state``)."""
    ckpt: dict[str, Any] = safe_load(path)
    cfg = ckpt["config"]
    byol = BYOL(build_resnet(cfg["arch"]), cfg["projector_hidden_dim"], cfg["projector_out_dim"])
    load_networks(byol, ckpt, path)
    return byol


def initial_byol(cfg: PretrainConfig) -> BYOL:
    """The networks a run of ``cfg`` starts from (:func:`pretrain.train.initial_byol`), global RNG left as it was."""
    with torch.random.fork_rng(devices=[]):
        return train.initial_byol(cfg)


def heldout_drop(checkpoint: Path, images: int = 256, pair_seed: int = 0,
                 data_root: str | None = None) -> dict[str, float]:
    """Held-out BYOL loss of the run's initial networks and of ``checkpoint``, on its dataset's val split.

    Args:
        checkpoint: a pretraining checkpoint (``final.pth``); its config gives the seed, sizes and dataset.
        images: val images to take (from the start of the split), in batches of the run's batch size.
        pair_seed: seed of the views' augmentation draws.
        data_root: where the dataset lies now, if not where the run read it.

    Returns:
        ``initial``, ``final`` and ``drop`` (initial − final).
    """
    cfg = config_from_checkpoint(checkpoint)
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data_root=data_root)
    pairs = heldout_view_pairs(open_split(cfg, "val"), cfg.image_size, (cfg.crop_scale_min, 1.0), count=images,
                               batch_size=cfg.batch_size_per_device, seed=pair_seed)
    initial, final = byol_loss(initial_byol(cfg), pairs), byol_loss(byol_from_checkpoint(checkpoint), pairs)
    return {"initial": initial, "final": final, "drop": initial - final}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pretrain.heldout CKPT [--images N] [--pair-seed S] [--data-root DIR]``: print one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m pretrain.heldout", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a pretraining checkpoint, e.g. <out_dir>/final.pth")
    parser.add_argument("--images", type=int, default=256, help="val images (default 256)")
    parser.add_argument("--pair-seed", type=int, default=0, help="seed of the views' augmentation (default 0)")
    parser.add_argument("--data-root", default=None, help="data root, if not the one the run used")
    args = parser.parse_args(argv)
    print(json.dumps(heldout_drop(args.checkpoint, args.images, args.pair_seed, args.data_root)))


if __name__ == "__main__":
    main_guard(main)
