#!/usr/bin/env python
"""Pretraining throughput: this trainer vs a straightforward reference BYOL loop vs the compute-only bound.

Measured in one process, same backbone, resolution, batch and images:

(a) **this trainer**: ``pretrain.train.train_step`` fed by the trainer's own data path (workers decode + crop to
    uint8; photometric ops batched with per-sample parameters, on the GPU, or in the workers on a CPU-only
    machine; fused LARS and EMA);
(b) **reference**: the loop of mmselfsup's and lightly's examples: PIL per-image augmentations (torchvision
    ``ColorJitter`` etc. plus mmselfsup-style PIL blur/solarize) in DataLoader workers, separate forwards, a
    per-parameter LARS and a per-parameter EMA loop (lightly's heads and ``update_momentum`` if lightly is
    installed), fp32 as those examples run;
(c) **compute-only bound**: (a)'s forwards/backwards, LARS step and EMA on pre-made device tensors, no data.

    python scripts/bench_pretrain.py                                   # CPU: ResNet-18, 112 px, batch 64
    python scripts/bench_pretrain.py --device cuda --arch resnet50 --image-size 224 --batch 256 --workers 12
    python scripts/bench_pretrain.py --json                            # last line: one JSON object

Each method runs ``--warmup`` untimed steps, then ``--steps`` timed ones; ``--rounds`` repeats (c), (a), (b) in
turn and keeps each method's best round, which damps noise from other processes on a shared machine (the load
average is printed). Images are the embedded tiny ImageNet (``data/tiny``, generated into a temporary folder
when missing); ``--jpeg-size N`` re-encodes them with an N-pixel short side to mimic ImageNet decode cost.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter
from torch import nn
from torch.utils.data import DataLoader

from byol_bench.backbone import build_resnet
from byol_bench.cli import main_guard
from byol_bench.datasets.imagenet import ImageFolderList
from byol_bench.lars import LARS, param_groups
from byol_bench.runlog import cpu_model, steps_per_second
from byol_bench.training import resolve_precision
from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD, BatchAugmenter
from pretrain.data import EpochBatchSampler, TwoViewDataset, iterate_batches, make_loader
from pretrain.model import BYOL
from pretrain.train import train_step

LR, MOMENTUM, WD, EMA = 0.3, 0.9, 1e-6, 0.99


# -------------------------------------------------------------------- (b) the reference loop -------------------


class PILGaussianBlur:
    """mmselfsup's ``GaussianBlur``: PIL blur with radius σ ~ U(0.1, 2) applied with probability p."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if np.random.rand() > self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=np.random.uniform(0.1, 2.0)))


class PILSolarize:
    """mmselfsup's ``Solarization``: v -> 255 - v for v >= 128, with probability p."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if np.random.rand() > self.p:
            return img
        arr = np.asarray(img)
        return Image.fromarray(np.where(arr < 128, arr, 255 - arr).astype(np.uint8))


def reference_pipeline(size: int, blur_p: float, solarize_p: float) -> T.Compose:
    return T.Compose([
        T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        PILGaussianBlur(blur_p),
        PILSolarize(solarize_p),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class ReferenceTwoViews:
    def __init__(self, size: int) -> None:
        self.view1, self.view2 = reference_pipeline(size, 1.0, 0.0), reference_pipeline(size, 0.1, 0.2)

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view1(img), self.view2(img)


class ReferenceLARS(torch.optim.Optimizer):
    """mmselfsup's LARS as written there: a Python loop over parameter tensors."""

    def __init__(self, params: list[dict], lr: float) -> None:
        super().__init__(params, {"lr": lr, "momentum": MOMENTUM, "weight_decay": WD, "lars_exclude": False})

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad.add(p, alpha=group["weight_decay"])
                local_lr = 1.0
                if not group["lars_exclude"]:
                    w_norm, g_norm = torch.norm(p), torch.norm(p.grad)
                    if w_norm != 0 and g_norm != 0:
                        local_lr = 1e-3 * w_norm / (g_norm + w_norm * group["weight_decay"] + 1e-8)
                d_p = d_p.mul(local_lr * group["lr"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d_p.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d_p)
                p.add_(-state["momentum_buffer"])


def reference_heads(feat_dim: int) -> tuple[nn.Module, nn.Module, Callable[[nn.Module, nn.Module, float], None]]:
    """Projector, predictor and EMA function: lightly's if installed, else the same written out."""
    if importlib.util.find_spec("lightly") is not None:
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import update_momentum

        return BYOLProjectionHead(feat_dim, 4096, 256), BYOLPredictionHead(256, 4096, 256), update_momentum

    def mlp(in_dim: int) -> nn.Module:
        return nn.Sequential(nn.Linear(in_dim, 4096), nn.BatchNorm1d(4096), nn.ReLU(), nn.Linear(4096, 256, bias=False))

    def update_momentum(model: nn.Module, model_ema: nn.Module, m: float) -> None:
        for online, target in zip(model.parameters(), model_ema.parameters(), strict=True):
            target.data = target.data * m + online.data * (1.0 - m)

    return mlp(feat_dim), mlp(256), update_momentum


class ReferenceBYOL(nn.Module):
    def __init__(self, arch: str) -> None:
        super().__init__()
        self.backbone = build_resnet(arch)
        feat_dim = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        self.projection_head, self.prediction_head, self.update_momentum = reference_heads(feat_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone).requires_grad_(False)
        self.projection_head_momentum = copy.deepcopy(self.projection_head).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x)))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x)).detach()


def cosine_term(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return 2 - 2 * nn.functional.cosine_similarity(p, z.detach(), dim=1).mean()


def reference_stepper(model: ReferenceBYOL, loader: DataLoader, device: torch.device) -> Callable[[], None]:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    # mmselfsup's regex rules (B §1.5): norm layers named bn* and every bias
    excluded = [n for n in names if re.search(r"(bn|gn)(\d+)?.(weight|bias)", n) or "bias" in n]
    optimizer = ReferenceLARS([{"params": [params[n] for n in names if n not in excluded]},
                               {"params": [params[n] for n in excluded], "weight_decay": 0.0, "lars_exclude": True}],
                              lr=LR)
    batches = endless(loader)

    def step() -> None:
        (x0, x1), _ = next(batches)
        x0, x1 = x0.to(device), x1.to(device)
        p0, z0 = model(x0), model.forward_momentum(x0)
        p1, z1 = model(x1), model.forward_momentum(x1)
        loss = cosine_term(p0, z1) + cosine_term(p1, z0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.update_momentum(model.backbone, model.backbone_momentum, EMA)
        model.update_momentum(model.projection_head, model.projection_head_momentum, EMA)

    return step


def endless(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


# -------------------------------------------------------------------- measurement ------------------------------


def measure(step: Callable[[], object], device: torch.device, warmup: int, steps: int, batch: int) -> float:
    """Images per second over ``steps`` timed steps after ``warmup`` untimed ones."""
    return steps_per_second(step, device, warmup, steps) * batch


def tiny_images(data_root: Path, jpeg_size: int, workdir: Path) -> Path:
    """The ``imagenet`` folder to read: given, generated (embedded tiny set), and optionally re-encoded larger."""
    root = data_root / "imagenet"
    if not (root / "train").is_dir():
        from byol_bench.tinydata import make_tiny_data

        make_tiny_data(workdir / "tiny", seed=0, only=["imagenet"], workers=1)
        root = workdir / "tiny" / "imagenet"
    if jpeg_size <= 0:
        return root
    big = workdir / "imagenet_big"
    for src in sorted((root / "train").rglob("*.JPEG")):
        dst = big / "train" / src.relative_to(root / "train")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as img:
            scale = jpeg_size / min(img.size)
            img.convert("RGB").resize((round(img.width * scale), round(img.height * scale)),
                                      Image.Resampling.BICUBIC).save(dst, quality=90)
    return big


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18", help="backbone for all three methods")
    parser.add_argument("--image-size", type=int, default=112, help="crop side in pixels")
    parser.add_argument("--batch", type=int, default=64, help="images per step (each gives two views)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for (a) and (b)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method and round")
    parser.add_argument("--rounds", type=int, default=2, help="repeat (c), (a), (b) in turn; keep the best")
    parser.add_argument("--data-root", type=Path, default=Path("data/tiny"),
                        help="folder holding imagenet/train; the embedded set is generated when it is missing")
    parser.add_argument("--jpeg-size", type=int, default=0, help="re-encode images with this short side (0: as is)")
    parser.add_argument("--compile", action="store_true", help="torch.compile (a) and (c)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="(a) and (c), as the trainer's precision= (auto: bf16 on CUDA, fp32 on CPU); (b) is fp32")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        root = tiny_images(args.data_root, args.jpeg_size, Path(tmp))
        images = ImageFolderList(root, "train")

        # ---- (a) and (c): the trainer's own objects
        torch.manual_seed(0)
        # channels_last as the trainer's default (pretrain/config.py): faster on GPU and on CPU at >= 112 px.
        byol = BYOL(build_resnet(args.arch)).to(device, memory_format=torch.channels_last)
        model = torch.compile(byol) if args.compile else byol
        optimizer = LARS(param_groups(byol, WD), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        bf16 = resolve_precision(args.precision, device) == "bf16"
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
        augmenter = BatchAugmenter(device, channels_last=True)
        sampler = EpochBatchSampler(len(images), args.batch, rank=0, world_size=1, seed=0)
        loader = make_loader(TwoViewDataset(images, args.image_size, (0.08, 1.0)), sampler, args.workers, device)
        batches = iterate_batches(loader, sampler, 0)
        fixed = augmenter(next(batches)[1])  # one real batch, reused: no data work in (c)

        def ours() -> torch.Tensor:
            return train_step(model, byol, None, optimizer, lambda: augmenter(next(batches)[1]), accum_steps=1,
                              lr=LR, momentum=EMA, autocast=autocast)

        def compute_only() -> torch.Tensor:
            return train_step(model, byol, None, optimizer, lambda: fixed, accum_steps=1, lr=LR, momentum=EMA,
                              autocast=autocast)

        # ---- (b): the reference loop
        torch.manual_seed(0)
        reference = ReferenceBYOL(args.arch).to(device)
        ref_set = ImageFolderList(root, "train", transform=ReferenceTwoViews(args.image_size))
        ref_loader = DataLoader(ref_set, batch_size=args.batch, shuffle=True, drop_last=True,
                                num_workers=args.workers, pin_memory=cuda, persistent_workers=args.workers > 0)
        reference_step = reference_stepper(reference, ref_loader, device)

        results: dict[str, list[float]] = {"compute": [], "ours": [], "reference": []}
        for _ in range(args.rounds):
            for name, step in (("compute", compute_only), ("ours", ours), ("reference", reference_step)):
                results[name].append(measure(step, device, args.warmup, args.steps, args.batch))
    best = {name: max(values) for name, values in results.items()}
    figures = {
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({os.cpu_count()} cores, "
                                                                  f"{torch.get_num_threads()} threads)",
        "cpu_model": cpu_model(),
        "arch": args.arch, "image_size": args.image_size, "batch": args.batch, "workers": args.workers,
        "precision": "bf16 autocast (a, c); fp32 (b)" if bf16 else "fp32",
        "lightly": importlib.util.find_spec("lightly") is not None,
        "ours_img_per_s": best["ours"], "reference_img_per_s": best["reference"],
        "compute_bound_img_per_s": best["compute"],
        "speedup_vs_reference": best["ours"] / best["reference"],
        "fraction_of_compute_bound": best["ours"] / best["compute"],
        "rounds": results, "load_avg_before": list(load_before), "load_avg_after": list(os.getloadavg()),
    }
    rows = [("(a) this trainer", best["ours"]), ("(b) reference loop", best["reference"]),
            ("(c) compute-only bound", best["compute"])]
    print(f"{figures['device']}, {args.arch} @ {args.image_size}px, batch {args.batch}, workers {args.workers}, "
          f"{figures['precision']}; best of {args.rounds} rounds x {args.steps} steps")
    print(f"| {'run':<24} | {'img/s':>8} | {'s/step':>7} | {'vs (b)':>6} | {'vs (c)':>6} |")
    print(f"|{'-' * 26}|{'-' * 9}:|{'-' * 8}:|{'-' * 7}:|{'-' * 7}:|")
    for label, value in rows:
        print(f"| {label:<24} | {value:8.1f} | {args.batch / value:7.2f} | {value / best['reference']:6.2f} | "
              f"{value / best['compute']:6.2f} |")
    print(f"speedup_vs_reference = {figures['speedup_vs_reference']:.2f}, fraction_of_compute_bound = "
          f"{figures['fraction_of_compute_bound']:.2f}; load average {load_before[0]:.1f} -> "
          f"{figures['load_avg_after'][0]:.1f}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main_guard(main)
