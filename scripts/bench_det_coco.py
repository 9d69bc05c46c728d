#!/usr/bin/env python
"""Mask R-CNN R50-FPN training throughput: the native ``det_coco`` model vs torchvision's stock
``maskrcnn_resnet50_fpn_v2`` (the same FPN + 4conv1fc/BN box head + 4-conv/BN mask head family; detectron2 is not a
dependency: when it is not importable this is the floor check of the issue).

Measured in one process on identical inputs (``--batch`` random images of ``--size`` x ``--size`` px with three
boxes and masks each, resized to ``--size`` by both models' transforms):

(a) **native**: ``byol_bench.detection.mask_rcnn.build_mask_rcnn`` around a ResNet-50 (the ``det_coco`` model: mmdet
    L1 losses, aligned multi-level RoIAlign, binary mask targets), one SGD step = forward in train mode, the summed
    losses, backward, ``optimizer.step()``; bf16 autocast on CUDA as the trainer;
(b) **torchvision**: ``maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, trainable_backbone_layers=5)``
    with the same number of classes, train/test size and step;
``ratio_vs_torchvision`` = (a) / (b).

    python scripts/bench_det_coco.py                          # CPU: 160 px, batch 2
    python scripts/bench_det_coco.py --device cuda --size 800 --batch 2 --iters 20
    python scripts/bench_det_coco.py --json                   # last line: one JSON object

Each measurement runs ``--warmup`` untimed steps, then ``--iters`` timed ones; ``--rounds`` repeats them and keeps
the best round (the load average is printed: the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

from byol_bench.backbone import build_resnet
from byol_bench.cli import main_guard
from byol_bench.detection.mask_rcnn import build_mask_rcnn
from byol_bench.runlog import cpu_model
from byol_bench.training import autocast, resolve_precision

NUM_CLASSES = 80


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(step: Callable[[], object], device: torch.device, warmup: int, iters: int, rounds: int) -> float:
    """Best-round rate of ``step`` in calls per second."""
    for _ in range(warmup):
        step()
    best = 0.0
    for _ in range(rounds):
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            step()
        sync(device)
        best = max(best, iters / (time.perf_counter() - start))
    return best


def inputs(batch: int, size: int, device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Random images with three boxes (and their box-shaped masks) each."""
    gen = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, size, size, generator=gen).to(device))
        corners = torch.rand(3, 2, generator=gen) * size * 0.6
        boxes = torch.cat([corners, corners + size * 0.3], dim=1).round()
        masks = torch.zeros(3, size, size, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist(), strict=True):
            m[y0:y1, x0:x1] = 1
        targets.append({"boxes": boxes.to(device), "labels": torch.tensor([1, 2, 3], device=device),
                        "masks": masks.to(device)})
    return images, targets


def stepper(model: torch.nn.Module, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
            device: torch.device, precision: str) -> Callable[[], None]:
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        with autocast(device, precision):
            losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = resolve_precision("auto", device)
    images, targets = inputs(args.batch, args.size, device)
    torch.manual_seed(0)
    native = build_mask_rcnn(build_resnet("resnet50"), NUM_CLASSES, train_min_sizes=(args.size,),
                             test_min_size=args.size, max_size=args.size)
    ours = measure(stepper(native, images, targets, device, precision), device, args.warmup, args.iters, args.rounds)
    del native
    stock = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1,
                                     trainable_backbone_layers=5, min_size=args.size, max_size=args.size)
    theirs = measure(stepper(stock, images, targets, device, precision), device, args.warmup, args.iters,
                     args.rounds)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    result = {
        "device": machine, "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "arch": "resnet50", "size": args.size, "batch": args.batch, "precision": precision,
        "train_iters_per_s_native": round(ours, 4), "train_iters_per_s_torchvision": round(theirs, 4),
        "ratio_vs_torchvision": round(ours / theirs, 3), "ratio_vs_detectron2": None,
    }
    print(f"{machine}; load average {os.getloadavg()[0]:.2f}")
    print(f"Mask R-CNN R50-FPN training step ({args.size} px, batch {args.batch}, {precision}): native {ours:.3f} "
          f"it/s, torchvision maskrcnn_resnet50_fpn_v2 {theirs:.3f} it/s, ratio {ours / theirs:.2f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main_guard(main)
