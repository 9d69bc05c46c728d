"""Detection training data: a deterministic infinite stream of aspect-ratio-grouped batches, and the flip.

The stream is a function of ``(seed, rank, world_size)`` only, so a run resumed at iteration ``k`` draws exactly the
batches (and flips) that an uninterrupted run draws from iteration ``k`` on, whatever the DataLoader workers do:

* each pass over the data is a permutation drawn from ``(seed, pass)``; rank ``r`` of ``w`` takes every ``w``-th
  image from position ``r`` (detectron2 ``TrainingSampler`` sharding of one shared permutation);
* images join one of two buckets by orientation (``width > height`` or not) and a bucket is emitted as a batch
  once it holds ``batch_size`` images (detectron2 ``AspectRatioGroupedDataset``: less padding per batch);
* every drawn image carries its own augmentation seed, so the horizontal flip does not depend on which worker
  loads it. (The random train scale is drawn by the model's transform from the global torch RNG, which the trainer
  reseeds at every checkpoint boundary.)

Samples are torchvision detection samples: ``(image, target)`` with ``image`` a uint8 ``(3, H, W)`` RGB tensor and
``target`` a dict holding at least ``boxes`` (float32 ``(N, 4)`` ``x0, y0, x1, y1`` pixel-edge coordinates) and
``labels`` (int64 ``(N,)``, 1..C; 0 is the background); ``masks`` (uint8 ``(N, H, W)``) are flipped too, any other
key is passed through.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from byol_bench.seeding import rng_for

Sample = tuple[torch.Tensor, dict[str, Any]]


def orientation_groups(sizes: Sequence[tuple[int, int]]) -> list[int]:
    """Aspect-ratio group of each image from its ``(width, height)``: 0 when ``width > height``, else 1 (detectron2)."""
    return [0 if w > h else 1 for w, h in sizes]


class GroupedBatchStream:
    """Infinite batches of ``(dataset index, augmentation seed)`` pairs for one process, from batch ``start`` on.

    Args:
        groups: aspect-ratio group per dataset image (:func:`orientation_groups`).
        batch_size: images per batch (per process).
        seed: the stream's seed (a different seed or ``tag`` gives an independent stream).
        rank, world_size: this process and the process count.
        start: batches to skip (a resumed run skips those it has trained on).
        tag: names the stream (``"train"``, ``"precise-bn"``).
    """

    def __init__(self, groups: Sequence[int], batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0, tag: str = "train") -> None:
        if batch_size <= 0 or not len(groups):
            raise ValueError(f"a batch stream needs images and a positive batch size (got {len(groups)} images, "
                             f"batch_size={batch_size})")
        self.groups = np.asarray(groups, dtype=np.int64)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.start, self.tag = start, tag

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        buckets: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
        emitted = 0
        for data_pass in range(2**62):
            rng = rng_for(self.seed, "detection-stream", self.tag, data_pass)
            order = rng.permutation(len(self.groups))
            seeds = rng.integers(2**62, size=len(order))  # drawn for the whole pass: every rank sees the same
            for index, sample_seed in zip(order[self.rank::self.world_size].tolist(),
                                          seeds[self.rank::self.world_size].tolist(), strict=True):
                bucket = buckets[int(self.groups[index])]
                bucket.append((index, sample_seed))
                if len(bucket) == self.batch_size:
                    if emitted >= self.start:
                        yield list(bucket)
                    emitted += 1
                    bucket.clear()
        raise AssertionError("unreachable")


class FlipSamples(Dataset):
    """Training view of a detection dataset: indexed by ``(index, seed)``; flips horizontally with ``flip_prob``.

    ``boxes`` ``x0, x1`` become ``W - x1, W - x0`` (pixel-edge coordinates); ``masks`` are mirrored.
    """

    def __init__(self, dataset: Dataset, flip_prob: float = 0.5) -> None:
        self.dataset, self.flip_prob = dataset, flip_prob

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        index, seed = key
        image, target = self.dataset[index]
        if np.random.default_rng(seed).random() < self.flip_prob:
            image, target = hflip(image, target)
        return image, target


def hflip(image: torch.Tensor, target: dict[str, Any]) -> Sample:
    """Mirror an image and its target (boxes and masks) left-right."""
    width = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


def collate(batch: list[Sample]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Detection batches stay lists: images of different sizes are batched (padded) by the model's transform."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def to_device(images: list[torch.Tensor], targets: list[dict[str, Any]] | None,
              device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, Any]] | None]:
    """uint8 images -> float32 in [0, 1] on ``device`` (torchvision's input convention); tensors of targets moved."""
    images = [im.to(device, non_blocking=True).float().div_(255) for im in images]
    if targets is not None:
        targets = [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                   for t in targets]
    return images, targets
