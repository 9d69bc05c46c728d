"""k-NN monitor: weighted k-nearest-neighbour accuracy of frozen, global-pooled backbone features.

The vote is temperature-weighted, as DINO's ``eval_knn.py`` and InstDisc (Wu et al. 2018) do it: each of the k
nearest train features (cosine similarity s) votes for its class with weight ``exp(s / T)``; k = 20, T = 0.07.
Features are the backbone's global-average-pooled output, L2-normalised, computed in eval mode (BN running
statistics) on centre crops. It is a cheap training monitor, not one of the protocols.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from byol_bench import dist
from byol_bench.metrics import topk_correct
from pretrain.augment import BatchAugmenter


@torch.no_grad()
def extract_features(backbone: nn.Module, dataset: Dataset, augmenter: BatchAugmenter, batch_size: int,
                     num_workers: int, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised pooled features and labels of ``dataset``, sharded over the processes and gathered.

    Every process gets all features, in dataset order.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    total = len(dataset)
    per_rank = -(-total // world)
    # Strided shards, padded by repeating the last index so that every process gathers the same shape.
    indices = [min(i, total - 1) for i in range(rank, per_rank * world, world)]
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers,
                        pin_memory=augmenter.device.type == "cuda")
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    for images, targets in loader:
        with torch.autocast(augmenter.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = backbone(augmenter.normalize(images))
        feats.append(nn.functional.normalize(out.float(), dim=1))
        labels.append(targets.to(augmenter.device))
    backbone.train(was_training)
    gathered = dist.all_gather_cat(torch.cat(feats))
    gathered_labels = dist.all_gather_cat(torch.cat(labels))
    # Row r * per_rank + j holds dataset index r + j * world; undo the striding, then drop the padding.
    order = torch.arange(per_rank * world, device=gathered.device).view(world, per_rank).t().reshape(-1)
    return gathered[order][:total], gathered_labels[order][:total]


@torch.no_grad()
def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 20, temperature: float = 0.07,
                 topk: Sequence[int] = (1, 5), chunk: int = 1024) -> dict[str, float]:
    """Weighted kNN top-k accuracy in percent, ``{"top1": ..., "top5": ...}`` (top-k capped at the class count).

    Args:
        train_feats: (N, D) L2-normalised bank.
        train_labels: (N,) int labels.
        test_feats: (M, D) L2-normalised queries.
        test_labels: (M,) int labels.
        k: neighbours.
        temperature: vote weight ``exp(cos / T)``.
        topk: which accuracies to return.
        chunk: queries per similarity block (bounds memory at chunk x N).
    """
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, train_feats.shape[0])
    correct = dict.fromkeys(topk, 0)
    for start in range(0, test_feats.shape[0], chunk):
        queries, truth = test_feats[start:start + chunk], test_labels[start:start + chunk]
        sims, idx = (queries @ train_feats.t()).topk(k, dim=1)
        votes = torch.zeros(queries.shape[0], num_classes, device=queries.device)
        votes.scatter_add_(1, train_labels[idx], (sims / temperature).exp())
        for t, hits in topk_correct(votes, truth, topk).items():
            correct[t] += hits
    return {f"top{t}": 100.0 * correct[t] / test_feats.shape[0] for t in topk}


def knn_monitor(backbone: nn.Module, train_set: Dataset, val_set: Dataset, augmenter: BatchAugmenter, *,
                k: int, temperature: float, max_train_images: int, batch_size: int, num_workers: int,
                precision: str) -> dict[str, float]:
    """kNN top-1/top-5 of ``backbone`` with the train split as bank (optionally evenly subsampled) and val queries."""
    if 0 < max_train_images < len(train_set):
        stride = len(train_set) / max_train_images
        train_set = Subset(train_set, [int(i * stride) for i in range(max_train_images)])
    bank, bank_labels = extract_features(backbone, train_set, augmenter, batch_size, num_workers, precision)
    queries, query_labels = extract_features(backbone, val_set, augmenter, batch_size, num_workers, precision)
    return knn_accuracy(bank, bank_labels, queries, query_labels, k=k, temperature=temperature)
