#!/usr/bin/env python
"""FCN R50-D8 throughput: the native runner's training step (vs mmsegmentation's, when importable) and its
sliding-window inference.

Measured in one process on the same model size, crop, batch and random inputs:

(a) **native training**: ``benchmarks.segmentation.fcn.train_step`` (what ``run()`` calls once per batch: forward of
    the dilated ResNet + FCN and auxiliary heads, both CE losses on logits resized to the labels, backward, SGD),
    bf16 autocast + channels_last on CUDA as the runner, on pre-made batches (``--crop`` px, ``--batch`` images);
(b) **mmseg training** (only when ``mmseg`` imports): its ``EncoderDecoder`` built from the same FCN R50-D8 model
    config (``arch`` depth, 512 / 256 head channels, SyncBN replaced by BN in one process) and its
    ``train_step`` with the same SGD and batch; ``ratio_vs_mmseg`` = (a) / (b). Without mmseg the ratio is null;
(c) **sliding-window inference**: ``benchmarks.segmentation.fcn.predict`` on one ``--image`` (W x H) uint8 image with
    the Cityscapes test settings (test scale = the image size, crop ``--test-crop``, stride ``--test-stride``),
    images/s.

    python scripts/bench_seg.py                                    # CPU: ResNet-18, crop 128, batch 2
    python scripts/bench_seg.py --device cuda --arch resnet50 --crop 512 --batch 4 --image 2048x1024 \\
        --test-crop 769 --test-stride 513                          # one GPU, the recipe's sizes
    python scripts/bench_seg.py --json                             # last line: one JSON object

Each measurement runs ``--warmup`` untimed steps, then ``--iters`` timed ones; ``--rounds`` repeats them and keeps
each one's best round (the load average is printed: the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.segmentation.fcn import FCN, predict, train_step
from benchmarks.segmentation.mmseg import import_mmseg, mmseg_fcn_config
from benchmarks.segmentation.runner import SegmentationConfig
from byol_bench.backbone import build_resnet
from byol_bench.cli import main_guard
from byol_bench.runlog import steps_per_second
from byol_bench.training import resolve_precision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_linear import cpu_model  # one CPU-name helper for the bench scripts

NUM_CLASSES = 19


def measure(step: Callable[[], object], device: torch.device, warmup: int, iters: int, rounds: int) -> float:
    """Best-round rate of ``step`` in calls per second (the warm-up runs once, before the first round)."""
    return max(steps_per_second(step, device, warmup if r == 0 else 0, iters) for r in range(rounds))


def mmseg_stepper(arch: str, batch: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Callable | None:
    """mmseg's FCN R50-D8 ``train_step`` on the same batch, or None when mmseg is not importable."""
    if not import_mmseg():
        return None
    from mmengine.optim import OptimWrapper
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    model = MODELS.build(mmseg_fcn_config(arch, NUM_CLASSES, False, dict(mode="whole"))).to(device)
    model.train()
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4))
    samples = []
    for y in labels:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=y[None])
        samples.append(sample)
    data = {"inputs": list(batch), "data_samples": samples}
    return lambda: model.train_step(data, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image", default="256x128", help="W x H of the sliding-window test image")
    parser.add_argument("--test-crop", type=int, default=96)
    parser.add_argument("--test-stride", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = resolve_precision("auto", device)
    torch.manual_seed(0)
    model = FCN(build_resnet(args.arch), NUM_CLASSES).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    batch = torch.randn(args.batch, 3, args.crop, args.crop)
    labels = torch.randint(0, NUM_CLASSES, (args.batch, args.crop, args.crop))
    labels[:, : args.crop // 8] = 255

    def ours() -> None:
        train_step(model, optimizer, batch, labels, False, precision, device)

    native = measure(ours, device, args.warmup, args.iters, args.rounds)
    reference = mmseg_stepper(args.arch, batch.to(device), labels.to(device), device)
    mmseg = measure(reference, device, args.warmup, args.iters, args.rounds) if reference else None

    w, h = (int(v) for v in args.image.lower().split("x"))
    cfg = SegmentationConfig(test_scale=(max(w, h), min(w, h)), test_mode="slide", test_crop=args.test_crop,
                             test_stride=args.test_stride, align_corners=True)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    model.eval()
    slide = measure(lambda: predict(model, image, cfg, precision), device, 1, max(args.iters // 2, 1), args.rounds)

    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    result = {
        "device": machine, "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "arch": args.arch, "crop": args.crop, "batch": args.batch, "precision": precision,
        "train_iters_per_s_native": round(native, 3),
        "train_iters_per_s_mmseg": None if mmseg is None else round(mmseg, 3),
        "ratio_vs_mmseg": None if mmseg is None else round(native / mmseg, 3),
        "slide_image": f"{w}x{h}", "slide_crop": args.test_crop, "slide_stride": args.test_stride,
        "slide_images_per_s": round(slide, 3),
    }
    print(f"{machine}; load average {os.getloadavg()[0]:.2f}")
    print(f"training ({args.arch}, crop {args.crop}, batch {args.batch}, {precision}): native {native:.3f} it/s, "
          f"mmseg {'not importable' if mmseg is None else f'{mmseg:.3f} it/s'}"
          + ("" if mmseg is None else f", ratio {native / mmseg:.2f}"))
    print(f"sliding-window inference ({w}x{h}, crop {args.test_crop}, stride {args.test_stride}): "
          f"{slide:.3f} images/s")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main_guard(main)
