#!/usr/bin/env python
"""Multi-head linear probe throughput: this runner vs an mmselfsup-style reference loop vs the compute-only bound.

Measured in one process, same backbone, resolution, batch, head sizes and images:

(a) **this runner**: ``benchmarks.linear.mhead.train_step`` (the function ``run()`` calls once per batch: the
    frozen backbone once under ``torch.inference_mode()`` via ``pooled_features``, five fp32 ``MultiHeads``, the
    summed cross-entropy, SGD nesterov) fed by the runner's own data path: its ``DataLoader`` (DistributedSampler,
    ``--workers`` workers, pin_memory on CUDA) over ``classification.train_transform('imagenet', size)`` on the
    on-disk images; bf16 autocast + channels_last backbone on CUDA, as the runner;
(b) **reference**: the loop of the kind mmselfsup v0.5.0 runs: the same per-image PIL pipeline in DataLoader
    workers (RandomResizedCrop, flip, ColorJitter, ToTensor, Lighting, Normalize: mmselfsup's, which the runner
    kept), the backbone forward in fp32 (contiguous NCHW) with autograd on, the same heads and SGD on top.
    ``--reference-backbone tracked`` (default) keeps the backbone parameters ``requires_grad`` and leaves them out
    of the optimizer, so the graph is recorded and the backward runs through the backbone; ``frozen`` is
    mmselfsup's ``frozen_stages=4`` literally (``requires_grad=False``, eval BN: grad mode on, no graph recorded);
(c) **compute-only bound**: (a)'s ``train_step`` on pre-made random tensors already on the device, no data.

    python scripts/bench_linear.py                                     # CPU: ResNet-18, 112 px, batch 64
    python scripts/bench_linear.py --device cuda --arch resnet50 --image-size 224 --batch 256 --workers 12 \\
        --jpeg-size 400                                                # one GPU, ImageNet-sized JPEGs
    python scripts/bench_linear.py --json                              # last line: one JSON object

Each method runs ``--warmup`` untimed steps (at least the batches the DataLoader prefetches, so timing never starts
from a full queue), then ``--iters`` timed ones; ``--rounds`` repeats (c), (a), (b) in turn and keeps each
method's best round (the load average is printed). Heads have ``--num-classes`` outputs (ImageNet's 1000 by
default). Images are the embedded tiny ImageNet (``data/tiny``, generated into a temporary folder when missing;
``--jpeg-size N`` re-encodes them with an N-pixel short side to mimic ImageNet decode cost), repeated so that
one DataLoader epoch covers every step (the runner's loader restarts its workers each epoch; on real ImageNet that
happens once per 5,000 batches).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler

from benchmarks.linear.mhead import POOL_GRIDS, MultiHeads, head_dims, train_step
from byol_bench.backbone import FEATURE_NAMES, MultiLayerFeatures, build_resnet, feature_channels
from byol_bench.classification import open_split, train_transform
from byol_bench.cli import main_guard
from byol_bench.runlog import cpu_model, steps_per_second
from byol_bench.training import resolve_precision

LR, MOMENTUM, WD = 0.01, 0.9, 1e-4  # the protocol's SGD (nesterov)


def sgd(heads: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(heads.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD, nesterov=True)


def endless(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


# -------------------------------------------------------------------- (b) the reference loop -------------------


def reference_stepper(arch: str, dims: dict[str, int], num_classes: int, pooling: str, loader: DataLoader,
                      device: torch.device, tracked: bool) -> Callable[[], float]:
    """mmselfsup-style step: fp32 NCHW backbone in grad mode, eval BN, the heads and SGD on top."""
    torch.manual_seed(0)
    backbone = build_resnet(arch).eval().requires_grad_(tracked)
    extractor = MultiLayerFeatures(backbone, FEATURE_NAMES, pooled=False).to(device).eval()
    torch.manual_seed(0)
    heads = MultiHeads(feature_channels(backbone), dims, num_classes).to(device)
    optimizer = sgd(heads)  # the backbone's parameters are not in it: with ``tracked`` they get grads nobody uses
    batches = endless(loader)

    def step() -> float:
        images, labels = next(batches)
        images, labels = images.to(device), labels.to(device)
        maps = extractor(images)
        if pooling == "adaptive":
            pooled = {k: F.adaptive_avg_pool2d(v, POOL_GRIDS[k]) for k, v in maps.items()}
        else:
            pooled = {k: extractor.pools[k](v) for k, v in maps.items()}
        logits = heads(pooled)
        loss = sum(F.cross_entropy(v, labels) for v in logits.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


# -------------------------------------------------------------------- measurement ------------------------------


def measure(step: Callable[[], object], device: torch.device, warmup: int, iters: int, batch: int) -> float:
    """Images per second over ``iters`` timed steps after ``warmup`` untimed ones."""
    return steps_per_second(step, device, warmup, iters) * batch


def tiny_root(data_root: Path, workdir: Path, jpeg_size: int) -> Path:
    """A data root holding ``imagenet/train``: the given one, or the embedded tiny set generated into ``workdir``;
    with ``jpeg_size`` > 0 its train images re-encoded with that short side (ImageNet-like decode cost)."""
    root = data_root
    if not (root / "imagenet" / "train").is_dir():
        from byol_bench.tinydata import make_tiny_data

        make_tiny_data(workdir / "tiny", seed=0, only=["imagenet"], workers=1)
        root = workdir / "tiny"
    if jpeg_size <= 0:
        return root
    big = workdir / "big"
    for src in sorted((root / "imagenet" / "train").rglob("*.JPEG")):
        dst = big / "imagenet" / "train" / src.relative_to(root / "imagenet" / "train")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as img:
            scale = jpeg_size / min(img.size)
            img.convert("RGB").resize((round(img.width * scale), round(img.height * scale)),
                                      Image.Resampling.BICUBIC).save(dst, quality=90)
    return big


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18", help="backbone for all three methods")
    parser.add_argument("--image-size", type=int, default=112, help="train crop side in pixels")
    parser.add_argument("--batch", type=int, default=64, help="images per step")
    parser.add_argument("--num-classes", type=int, default=1000, help="outputs of every head (ImageNet: 1000)")
    parser.add_argument("--pooling", default="auto", choices=("auto", "specified", "adaptive"),
                        help="auto: the protocol's fixed kernels at >= 192 px, adaptive to the same grids below")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for (a) and (b)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--iters", type=int, default=20, help="timed steps per method and round")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed steps per method and round (>= the 2 x workers batches a loader prefetches)")
    parser.add_argument("--rounds", type=int, default=2, help="repeat (c), (a), (b) in turn; keep the best")
    parser.add_argument("--reference-backbone", default="tracked", choices=("tracked", "frozen"),
                        help="(b)'s backbone: requires_grad kept (graph recorded) or set False (mmselfsup)")
    parser.add_argument("--data-root", type=Path, default=Path("data/tiny"),
                        help="folder holding imagenet/train; the embedded set is generated when it is missing")
    parser.add_argument("--jpeg-size", type=int, default=0,
                        help="re-encode the train images with this short side (0: as is; 400 ~ ImageNet decode cost)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="(a) and (c) backbone, as the runner's precision= (auto: bf16 on CUDA, fp32 on CPU); "
                             "heads fp32; (b) is fp32")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    pooling = args.pooling if args.pooling != "auto" else ("specified" if args.image_size >= 192 else "adaptive")
    precision = resolve_precision(args.precision, device)
    steps_needed = args.rounds * (args.warmup + args.iters) + 2 * args.workers + 2
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_linear_") as tmp:
        root = tiny_root(args.data_root, Path(tmp), args.jpeg_size)

        def loader(shuffle_by_sampler: bool) -> DataLoader:
            train = open_split("imagenet", root, "train", train_transform("imagenet", args.image_size), tiny=True)
            repeats = -(-steps_needed * args.batch // len(train.dataset))
            data = ConcatDataset([train.dataset] * repeats)  # one epoch covers every step (see the docstring)
            if shuffle_by_sampler:  # the runner's loader (benchmarks/linear/mhead.py run())
                sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
                return DataLoader(data, args.batch, sampler=sampler, num_workers=args.workers, pin_memory=cuda,
                                  persistent_workers=False)
            return DataLoader(data, args.batch, shuffle=True, drop_last=True, num_workers=args.workers)

        # ---- (a) and (c): the runner's own objects and train_step
        torch.manual_seed(0)
        backbone = build_resnet(args.arch).eval().requires_grad_(False)
        dims = head_dims(backbone, args.image_size, pooling)
        extractor = MultiLayerFeatures(backbone, FEATURE_NAMES, pooled=False).to(device).eval()
        if cuda:
            extractor = extractor.to(memory_format=torch.channels_last)
        torch.manual_seed(0)
        heads = MultiHeads(feature_channels(backbone), dims, args.num_classes).to(device).train()
        optimizer = sgd(heads)
        batches = endless(loader(shuffle_by_sampler=True))

        def ours() -> float:
            images, labels = next(batches)
            loss, losses = train_step(extractor, heads, optimizer, images, labels, pooling, precision, device)
            for v in losses.values():  # the runner logs the loss and the five head losses every step
                v.item()
            return loss.item()

        fixed_images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
        if cuda:
            fixed_images = fixed_images.contiguous(memory_format=torch.channels_last)
        fixed_labels = torch.randint(args.num_classes, (args.batch,), device=device)

        def compute_only() -> float:
            loss, _ = train_step(extractor, heads, optimizer, fixed_images, fixed_labels, pooling, precision, device)
            return loss.item()

        # ---- (b): the reference loop
        reference_step = reference_stepper(args.arch, dims, args.num_classes, pooling, loader(False), device,
                                           args.reference_backbone == "tracked")

        results: dict[str, list[float]] = {"compute": [], "ours": [], "reference": []}
        for _ in range(args.rounds):
            for name, step in (("compute", compute_only), ("ours", ours), ("reference", reference_step)):
                results[name].append(measure(step, device, args.warmup, args.iters, args.batch))
    best = {name: max(values) for name, values in results.items()}
    machine = (torch.cuda.get_device_name(device) if cuda else
               f"{cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    figures = {
        "device": machine, "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "arch": args.arch, "image_size": args.image_size, "batch": args.batch, "num_classes": args.num_classes,
        "pooling": pooling, "head_dims": dims, "workers": args.workers, "jpeg_size": args.jpeg_size,
        "precision": "bf16 autocast backbone (a, c), heads fp32; fp32 (b)" if precision == "bf16" else "fp32",
        "reference_backbone": args.reference_backbone,
        "ours_img_per_s": best["ours"], "reference_img_per_s": best["reference"],
        "compute_bound_img_per_s": best["compute"],
        "speedup_vs_reference": best["ours"] / best["reference"],
        "fraction_of_compute_bound": best["ours"] / best["compute"],
        "iters": args.iters, "warmup": args.warmup,
        "rounds": results, "load_avg_before": list(load_before), "load_avg_after": list(os.getloadavg()),
    }
    rows = [("(a) this runner", best["ours"]), (f"(b) reference ({args.reference_backbone})", best["reference"]),
            ("(c) compute-only bound", best["compute"])]
    print(f"{machine}, torch {torch.__version__}; {args.arch} @ {args.image_size}px, batch {args.batch}, "
          f"{args.num_classes} classes, {pooling} pooling, workers {args.workers}, {figures['precision']}; "
          f"best of {args.rounds} rounds x {args.iters} steps")
    print(f"| {'run':<26} | {'img/s':>8} | {'s/step':>7} | {'vs (b)':>6} | {'vs (c)':>6} |")
    print(f"|{'-' * 28}|{'-' * 9}:|{'-' * 8}:|{'-' * 7}:|{'-' * 7}:|")
    for label, value in rows:
        print(f"| {label:<26} | {value:8.1f} | {args.batch / value:7.3f} | {value / best['reference']:6.2f} | "
              f"{value / best['compute']:6.2f} |")
    print(f"speedup_vs_reference = {figures['speedup_vs_reference']:.2f}, fraction_of_compute_bound = "
          f"{figures['fraction_of_compute_bound']:.2f}; load average {load_before[0]:.1f} -> "
          f"{figures['load_avg_after'][0]:.1f}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main_guard(main)
