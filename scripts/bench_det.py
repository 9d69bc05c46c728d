"""Detection training speed: the native engine (``benchmarks.detection.trainer.train`` on ``det_voc``'s C4 model)
against a reference measured in the same run, on the same images and batch.

    python scripts/bench_det.py --json                        # CPU: small images, 64 RoIs, a few iterations
    python scripts/bench_det.py --device cuda --json          # GPU: the protocol's sizes (800 px, 512 RoIs)

(a) native: ``trainer.train`` itself (data stream, flips, reseeding, accumulation off, logging) on the C4 Faster
    R-CNN of ``benchmarks/detection/voc.py`` with a random-init ResNet-50; iterations/s from the per-iteration log
    timestamps after ``--warmup`` iterations;
(b) detectron2, when it is importable (no PyPI release; docs/DETECTION.md): the model its engine builds from the
    same preset (``config_values`` of ``benchmarks/detection/detectron2_voc.py`` / ``detectron2_coco.py``, random
    init) in the plain loop of (c) with detectron2's own optimizer (``build_optimizer``), on the same batches and
    precision, fed as detectron2 inputs (``Instances`` with boxes, classes and bitmasks): ``ratio_vs_detectron2`` =
    (a) / (b). detectron2 gets no data loading in that loop, the native engine does: the ratio is conservative;
(c) the floor check without detectron2: torchvision's stock ``fasterrcnn_resnet50_fpn`` (random init, BatchNorm,
    everything trainable) in a plain SGD loop over the same batches and precision: ``ratio_vs_torchvision_fpn`` =
    (a) / (c). The two models differ (C4's res5 runs once per RoI, FPN's box head is two small FC layers), so this is
    a floor ("the engine adds no large overhead to a torchvision detector"), not a like-for-like speed-up.

``--model mask_rcnn`` (issue 15) times ``det_coco``'s Mask R-CNN R50-FPN instead: (a) ``trainer.train`` on that model
and (c) torchvision's stock ``maskrcnn_resnet50_fpn_v2`` (the same FPN + 4conv1fc/BN box head + 4-conv/BN mask head
family; random init, everything trainable) in the plain loop, on the same images with box-shaped masks:
``ratio_vs_torchvision_maskrcnn_v2`` = (a) / (c).

Target (issue 14): native >= 0.9x detectron2 on a GPU. Prints one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.detection import c4, data, detectron2_coco, detectron2_engine, detectron2_voc, trainer  # noqa: E402
from benchmarks.detection import coco as det_coco  # noqa: E402
from benchmarks.detection import voc as det_voc  # noqa: E402
from byol_bench import training  # noqa: E402
from byol_bench.backbone import build_resnet  # noqa: E402
from byol_bench.config import load_config  # noqa: E402
from byol_bench.runlog import RunLog, cpu_model, steps_per_second  # noqa: E402


class SyntheticBoxes(torch.utils.data.Dataset):
    """``n`` random uint8 images of ``height x width`` with 1-4 random boxes each (classes 1..20), fixed by seed."""

    def __init__(self, n: int, height: int, width: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.samples = []
        for _ in range(n):
            k = int(torch.randint(1, 5, (1,), generator=g))
            xy = torch.rand(k, 2, generator=g) * torch.tensor([width * 0.6, height * 0.6])
            wh = (0.1 + 0.3 * torch.rand(k, 2, generator=g)) * torch.tensor([width, height])
            boxes = torch.cat([xy, xy + wh], dim=1)
            self.samples.append((torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g),
                                 {"boxes": boxes, "labels": torch.randint(1, 21, (k,), generator=g)}))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return self.samples[index]


def native_rate(ds: SyntheticBoxes, size: int, rois: int, iters: int, warmup: int, batch: int, precision: str,
                device: torch.device, model: torch.nn.Module | None = None) -> float:
    if model is None:  # det_voc's C4 model (model: another one, e.g. mask_rcnn_rates')
        cfg = load_config(det_voc.DetVocConfig, "faster-rcnn_resnet50-c4_8xb2-24k_voc0712",
                          ["ckpt=x", f"train_sizes=[{size}]", f"roi_batch_size_per_image={rois}"],
                          preset_dir=det_voc.PRESET_DIR)
        torch.manual_seed(0)
        model = c4.build_faster_rcnn_c4(build_resnet("resnet50"), cfg)
    model = trainer.prepare(model, device)
    settings = trainer.TrainSettings(max_iters=warmup + iters, base_lr=0.002, steps=(), warmup_iters=0,
                                     batch_size_per_device=batch, precision=precision, num_workers=2,
                                     ckpt_every_iters=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        log = RunLog(tmp)
        groups = data.orientation_groups([(im.shape[2], im.shape[1]) for im, _ in ds.samples])
        trainer.train(model, ds, groups, settings, device=device, run_dir=Path(tmp), config_hash="bench", log=log,
                      resume_from=None, desc="bench native")
        times = [json.loads(line)["time"] for line in log.path.read_text().splitlines()]
    return iters / (times[-1] - times[warmup - 1])


def torchvision_fpn_rate(ds: SyntheticBoxes, size: int, rois: int, iters: int, warmup: int, batch: int,
                         precision: str, device: torch.device, model: torch.nn.Module | None = None) -> float:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    if model is None:  # the stock FPN Faster R-CNN (model: another torchvision detector, e.g. mask_rcnn_rates')
        torch.manual_seed(0)
        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=21, min_size=size,
                                        max_size=1333, box_batch_size_per_image=rois)
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9, weight_decay=1e-4)
    batches = [data.collate([ds[(i * batch + j) % len(ds)] for j in range(batch)]) for i in range(warmup + iters)]
    return plain_loop_rate(lambda b: model(*data.to_device(*b, device)), optimizer, batches, warmup, iters,
                           precision, device)


def plain_loop_rate(forward: Callable[[Any], dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                    batches: list, warmup: int, iters: int, precision: str, device: torch.device) -> float:
    """Iterations/s of the references' plain loop over ``batches`` (``warmup + iters`` of them): ``forward(batch)``
    -> summed losses -> backward -> step, one sync per step (as the engine's loss check)."""
    stream = iter(batches)

    def step() -> None:
        with training.autocast(device, precision):
            losses = forward(next(stream))
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        float(sum(v.detach() for v in losses.values()))

    return steps_per_second(step, device, warmup, iters)


def detectron2_rate(ds: SyntheticBoxes, size: int, rois: int, iters: int, warmup: int, batch: int, precision: str,
                    device: torch.device, model: str) -> float:
    """detectron2's ``model`` (``c4`` or ``mask_rcnn``) from its engine's config for the same sizes, iterations/s in
    the plain loop (``ds`` targets with ``masks`` for ``mask_rcnn``)."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    gpus = 1 if device.type == "cuda" else 0  # one process: plain BN, as the native engine here
    with tempfile.TemporaryDirectory() as tmp:
        if model == "c4":
            cfg = load_config(det_voc.DetVocConfig, "faster-rcnn_resnet50-c4_8xb2-24k_voc0712",
                              ["ckpt=x", f"train_sizes=[{size}]", f"roi_batch_size_per_image={rois}"],
                              preset_dir=det_voc.PRESET_DIR)
            detectron2_voc.register_head()
            values = detectron2_voc.config_values(cfg, "resnet50", Path(tmp, "w.pkl"), Path(tmp), 0, gpus)
        else:
            cfg = load_config(det_coco.DetCocoConfig, "mask-rcnn_resnet50-fpn_8xb2-ms-1x_coco",
                              ["ckpt=x", f"train_min_sizes=[{size}]", f"rois_per_image={rois}"],
                              preset_dir=det_coco.PRESET_DIR)
            values = detectron2_coco.config_values(cfg, "resnet50", Path(tmp, "w.pkl"), Path(tmp), gpus, 20,
                                                       len(ds))
        config = Path(tmp, "config.yaml")
        config.write_text(yaml.safe_dump(values))
        d2cfg = get_cfg()
        d2cfg.merge_from_file(str(config))
    torch.manual_seed(0)
    net = build_model(d2cfg).train()
    optimizer = build_optimizer(d2cfg, net)

    def as_input(image: torch.Tensor, target: dict) -> dict:
        fields = {"gt_boxes": Boxes(target["boxes"]), "gt_classes": target["labels"] - 1}
        if "masks" in target:
            fields["gt_masks"] = BitMasks(target["masks"].bool())
        return {"image": image, "instances": Instances(tuple(image.shape[1:]), **fields)}

    batches = [[as_input(*ds[(i * batch + j) % len(ds)]) for j in range(batch)] for i in range(warmup + iters)]
    with EventStorage(0):  # detectron2's models log training statistics into one
        return plain_loop_rate(net, optimizer, batches, warmup, iters, precision, device)


def with_box_masks(ds: SyntheticBoxes) -> SyntheticBoxes:
    """``ds`` with each box's rectangle as its instance mask (for the Mask R-CNN models)."""
    masked = copy.copy(ds)
    masked.samples = []
    for image, target in ds.samples:
        masks = torch.zeros(len(target["boxes"]), *image.shape[1:], dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, target["boxes"].round().int().tolist(), strict=True):
            mask[y0:y1, x0:x1] = 1
        masked.samples.append((image, {**target, "masks": masks}))
    return masked


def mask_rcnn_rates(ds: SyntheticBoxes, size: int, rois: int, iters: int, warmup: int, batch: int, precision: str,
                    device: torch.device) -> tuple[float, float]:
    """(issue 15) det_coco's Mask R-CNN R50-FPN in ``trainer.train`` and torchvision's ``maskrcnn_resnet50_fpn_v2``
    in the plain loop, iterations/s, on ``ds`` with masks (:func:`with_box_masks`)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    masked = ds
    cfg = load_config(det_coco.DetCocoConfig, "mask-rcnn_resnet50-fpn_8xb2-ms-1x_coco",
                      [f"train_min_sizes=[{size}]", f"test_min_size={size}", f"rois_per_image={rois}"],
                      preset_dir=det_coco.PRESET_DIR)
    torch.manual_seed(0)
    native = native_rate(masked, size, rois, iters, warmup, batch, precision, device,
                         model=det_coco.build_model(build_resnet("resnet50"), 20, cfg))
    torch.manual_seed(0)
    stock = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=21, min_size=size,
                                     max_size=1333, box_batch_size_per_image=rois, trainable_backbone_layers=5)
    return native, torchvision_fpn_rate(masked, size, rois, iters, warmup, batch, precision, device, model=stock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--size", type=int, default=0, help="train short side (default: 800 on GPU, 320 on CPU)")
    parser.add_argument("--rois", type=int, default=0, help="RoIs per image (default: 512 on GPU, 64 on CPU)")
    parser.add_argument("--iters", type=int, default=0, help="timed iterations (default: 20 on GPU, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--batch", type=int, default=2, help="images per iteration")
    parser.add_argument("--model", default="c4", choices=["c4", "mask_rcnn"],
                        help="c4: det_voc's Faster R-CNN C4; mask_rcnn: det_coco's Mask R-CNN R50-FPN (issue 15)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    use_cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    device = torch.device("cuda" if use_cuda else "cpu")
    size = args.size or (800 if use_cuda else 320)
    rois = args.rois or (512 if use_cuda else 64)
    iters = args.iters or (20 if use_cuda else 3)
    precision = training.resolve_precision("auto", device)
    ds = SyntheticBoxes(16, size, round(size * 4 / 3))  # 4:3 images already at the train short side
    timing = (size, rois, iters, args.warmup, args.batch, precision, device)
    if args.model == "mask_rcnn":
        ds = with_box_masks(ds)
        native, stock = mask_rcnn_rates(ds, *timing)
        names = ("native_mask_rcnn_fpn_iters_per_s", "torchvision_maskrcnn_v2_iters_per_s",
                 "ratio_vs_torchvision_maskrcnn_v2")
    else:
        native, stock = native_rate(ds, *timing), torchvision_fpn_rate(ds, *timing)
        names = ("native_c4_iters_per_s", "torchvision_fpn_iters_per_s", "ratio_vs_torchvision_fpn")
    reference = detectron2_rate(ds, *timing, model=args.model) if detectron2_engine.has_detectron2() else None
    out = {
        "device": torch.cuda.get_device_name(0) if use_cuda else "cpu", "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "precision": precision, "size": size, "rois_per_image": rois, "batch": args.batch, "iters": iters,
        names[0]: round(native, 4), names[1]: round(stock, 4), names[2]: round(native / stock, 3),
        "detectron2_iters_per_s": round(reference, 4) if reference else None,
        "ratio_vs_detectron2": round(native / reference, 3) if reference else None,
        "detectron2": "not importable" if reference is None else _detectron2_version(),
    }
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


def _detectron2_version() -> str:
    import detectron2

    return detectron2.__version__


if __name__ == "__main__":
    main()
