"""Training data for the pretrainer: which image each process sees when, and with which augmentation seed.

The order follows mmselfsup's ``DistributedSampler`` (B §1.1): one shuffled permutation per epoch, a contiguous
chunk of it per process. Each sample also gets its own seed, a hash of ``(seed, epoch, position)``; all of its
augmentation draws come from that seed (:func:`pretrain.augment.two_views`). A run therefore sees the same
images with the same augmentation parameters whatever the worker count, and a resumed run continues with exactly
the batches the interrupted one would have seen next.

NOTE: deviations from mmselfsup's sampler, for fixed shapes and a seedable order: the permutation is seeded with
``seed + epoch`` (mmselfsup: ``epoch`` only), and the last incomplete batch of each process is dropped
(mmselfsup pads to the world size and keeps a short last batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from byol_bench.datasets.imagenet import ImageFolderList
from pretrain.augment import BatchAugmenter, two_views
from pretrain.config import PretrainConfig

_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A well-mixed 64-bit seed for one sample (splitmix64 finaliser of the combined key)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xD1B54A32D192ED03 + position) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(dataset index, sample seed)`` for one process and one epoch.

    Args:
        num_images: size of the training split.
        batch_size: images per batch (per process).
        rank: this process's rank.
        world_size: number of processes.
        seed: run seed.
    """

    def __init__(self, num_images: int, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        self.num_images = num_images
        self.batch_size = batch_size
        self.rank = rank
        self.per_rank = num_images // world_size
        self.batches_per_epoch = self.per_rank // batch_size
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate, starting at batch ``start_batch`` (for resuming mid-epoch)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_images, generator=generator).tolist()
        first = self.rank * self.per_rank
        for batch in range(self.start_batch, self.batches_per_epoch):
            positions = range(first + batch * self.batch_size, first + (batch + 1) * self.batch_size)
            yield [(order[p], sample_seed(self.seed, self.epoch, p)) for p in positions]


class TwoViewDataset(Dataset):
    """Decoded image -> two cropped uint8 views plus their photometric parameters (see ``augment.two_views``).

    Indexed by ``(index, seed)`` pairs from :class:`EpochBatchSampler`.
    """

    def __init__(self, images: ImageFolderList, image_size: int, scale: tuple[float, float]) -> None:
        self.images = images
        self.image_size = image_size
        self.scale = scale

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        image, _ = self.images[index]
        return two_views(image, seed, self.image_size, self.scale)


def open_split(cfg: PretrainConfig, split: str, transform: Any = None) -> ImageFolderList:
    """The ``train`` or ``val`` split of ``<data_root>/<dataset>``, through the shared ImageNet loader."""
    list_file = cfg.train_list if split == "train" else cfg.val_list
    return ImageFolderList(Path(cfg.data_root) / cfg.dataset, split, transform=transform,
                           list_file=list_file or None, min_size=cfg.decode_min_size or None)


class CollateViews:
    """Collate two-view samples; with ``photometric=True`` also apply the photometric ops to the whole batch.

    On a CUDA machine the photometric ops belong on the GPU (:class:`pretrain.augment.BatchAugmenter`). On a
    CPU-only machine they run here, inside the DataLoader workers: a worker's torch uses one thread, so the
    batched ops do not compete with the training process's multi-threaded kernels (on 2 busy cores, contended
    OpenMP barriers made them 10x slower in the main process).
    """

    def __init__(self, photometric: bool) -> None:
        # The training process's augmenter does the same on the CPU; it passes float views through untouched.
        self.augmenter = BatchAugmenter(torch.device("cpu"), channels_last=False) if photometric else None

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = default_collate(samples)
        if self.augmenter is None:
            return batch
        view1, view2 = self.augmenter(batch)
        return {"view1": view1, "view2": view2}


def make_loader(dataset: Dataset, batch_sampler: Sampler, num_workers: int, device: torch.device) -> DataLoader:
    """A DataLoader over ``batch_sampler``; workers persist across epochs (start-up is not free).

    With CPU training and workers, the workers also apply the photometric ops (see :class:`CollateViews`).
    """
    cuda = device.type == "cuda"
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, pin_memory=cuda,
                      collate_fn=CollateViews(photometric=not cuda and num_workers > 0),
                      persistent_workers=num_workers > 0)


def iterate_batches(loader: DataLoader, sampler: EpochBatchSampler, start_iter: int) -> Iterator[tuple[int, Any]]:
    """Endless ``(epoch, batch)`` stream starting at global data iteration ``start_iter``."""
    epoch, offset = divmod(start_iter, sampler.batches_per_epoch)
    while True:
        sampler.set_epoch(epoch, start_batch=offset)
        for batch in loader:
            yield epoch, batch
        epoch, offset = epoch + 1, 0
