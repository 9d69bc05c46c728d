"""The mmsegmentation engine of ``segmentation`` (``engine=mmseg``): mmseg 1.2.x's own FCN R50-D8, transforms and
mmengine ``Runner`` on a config generated from our preset; its val predictions are written as our PNG files and
scored by our metric (``benchmarks.segmentation``), so the record has the native engine's shape.

Install: the project's ``engines`` extra (``make`` installs it; docs/SEGMENTATION.md)::

    pip install -e '.[engines]'     # mmsegmentation 1.2.2, mmengine 0.10.7, mmcv-lite 2.1.0, ftfy, regex

What it does (one process; BN, as a one-GPU mmseg run):

1. the backbone trunk from ``adapters.load_backbone`` goes through the adapters' mmseg export
   (``adapters.export.to_mm``: ``{"state_dict", "meta"}``, torchvision names = mmseg ``ResNet`` names) and is the
   backbone's ``Pretrained`` init;
2. :func:`mmseg_config` writes the config: B §6.1's model (:func:`mmseg_fcn_config`, our classes and
   ``align_corners``), SGD + ``PolyLR`` per iteration, ``IterBasedTrainLoop`` of ``max_iters``, the train pipeline
   ``RandomResize`` (ratio 0.5-2.0) -> ``RandomCrop`` (cat_max_ratio) -> ``RandomFlip`` 0.5 ->
   ``PhotoMetricDistortion`` (mmseg's defaults) -> ``SegDataPreProcessor`` (RGB mean/std, pad to the crop with 0 /
   255), the test resize and whole/slide inference of the preset;
3. the file lists are our dataset classes' (``byol_bench.datasets``: the same checks and bad-input errors), handed to
   mmseg through a ``BaseSegDataset`` that reads them from the run folder's ``mmseg/train_list.json`` (a file, not
   the config: mmengine formats the config with yapf for its log, its dump and every checkpoint, which takes seconds
   per hundred samples); Cityscapes labelIds are mapped to trainIds with mmseg's ``label_map`` (its stock dataset
   wants pre-converted ``*_labelTrainIds.png``);
4. ``Runner.train()``; ``resume=auto`` continues from the run folder's ``mmseg/`` checkpoints (mmengine's
   ``last_checkpoint``; the runners' rule, ``training.resume_point``: ``force=true`` trains afresh). Their files hold
   mmengine objects that torch >= 2.6's ``weights_only`` loading rejects, so this sets
   ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (our own files, written by this run);
5. the trained model's ``test_step`` on each val image gives the class map at the original size, written as the
   native engine's PNG; mmseg's losses (``vis_data/scalars.json``) go into our training log.

NOTE: ``stop_after_iters`` is native-only; ``precision`` is fp32 (mmseg's ``OptimWrapper``); the loss is mmseg's own
CE (the same arithmetic as ours, ``tests/test_segmentation_mmseg.py``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapters.export import to_mm
from adapters.intake import ConversionReport
from byol_bench import training
from byol_bench.backbone import trunk_state_dict
from byol_bench.checkpoint import atomic_save
from byol_bench.datasets.cityscapes import LABELS

INSTALL_HINT = ("engine=mmseg needs mmsegmentation: pip install -e '.[engines]' (mmsegmentation 1.2.2, mmengine, "
                "mmcv-lite; docs/SEGMENTATION.md), or use engine=native")
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]  # B §6.1, RGB
AUX_WEIGHT = 0.4


def import_mmseg() -> bool:
    """Make ``mmseg.models`` importable; False when mmseg is not installed.

    mmseg 1.2.x installs with mmcv-lite, which lacks ``mmcv.ops`` (compiled ops); ``mmseg.models`` imports it, so a
    stub module stands in for it (FCN uses none of its ops). The stub's names are empty classes.
    """
    try:
        import mmseg  # noqa: F401
    except ImportError:
        return False
    try:
        import mmcv.ops  # noqa: F401 - full mmcv has it
    except ImportError:
        def missing(name: str) -> type:
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {})

        stub = types.ModuleType("mmcv.ops")
        stub.__getattr__ = missing
        sys.modules["mmcv.ops"] = stub
    from mmseg.utils import register_all_modules

    register_all_modules()
    return True


def mmseg_fcn_config(arch: str, num_classes: int, align_corners: bool, test_cfg: dict) -> dict:
    """B §6.1's FCN R50-D8 as an mmseg model config (``arch`` depth; BN instead of SyncBN: one process).

    The data preprocessor only pads (mean 0, std 1): :func:`mmseg_config` puts the normalisation in.
    """
    depth = int(arch.removeprefix("resnet"))
    c4, c3 = (2048, 1024) if depth >= 50 else (512, 256)
    norm = dict(type="BN", requires_grad=True)
    head = dict(type="FCNHead", channels=512, num_convs=2, concat_input=True, dropout_ratio=0.1,
                num_classes=num_classes, norm_cfg=norm, align_corners=align_corners,
                loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[0.0] * 3, std=[1.0] * 3, size_divisor=8, pad_val=0,
                               seg_pad_val=255),
        backbone=dict(type="ResNet", depth=depth, num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                      strides=(1, 2, 1, 1), norm_cfg=norm, norm_eval=False, style="pytorch", contract_dilation=True),
        decode_head={**head, "in_channels": c4, "in_index": 3},
        auxiliary_head={**head, "in_channels": c3, "in_index": 2, "channels": 256, "num_convs": 1,
                        "concat_input": False,
                        "loss_decode": dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=AUX_WEIGHT)},
        train_cfg=dict(), test_cfg=test_cfg)


def check_engine(cfg: Any) -> None:
    """One-line errors for engine=mmseg, before anything is written."""
    if not import_mmseg():
        raise ValueError(INSTALL_HINT)
    if cfg.stop_after_iters:
        raise ValueError("stop_after_iters is for engine=native; with engine=mmseg set max_iters")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("engine=mmseg runs as one process (no torchrun)")


def data_list(dataset: Any, name: str) -> list[dict]:
    """mmseg data infos of one of our datasets (its checked ``samples``); Cityscapes labelIds -> trainIds."""
    label_map = {lb.id: lb.train_id if 0 <= lb.train_id < 255 else 255 for lb in LABELS if lb.id >= 0} \
        if name == "cityscapes" else None
    return [dict(img_path=str(image), seg_map_path=str(label), label_map=label_map, reduce_zero_label=False,
                 seg_fields=[]) for image, label in dataset.samples]


def write_data_list(samples: list[dict], path: Path) -> Path:
    """:func:`data_list`'s infos as the JSON file ``ByolBenchSegDataset`` reads (``label_map`` keys become strings)."""
    path.write_text(json.dumps(samples))
    return path


def read_data_list(path: str | Path) -> list[dict]:
    """The infos of :func:`write_data_list`'s file, ``label_map`` keys back to ints (mmseg compares them to pixels)."""
    samples = json.loads(Path(path).read_text())
    for info in samples:
        if info.get("label_map") is not None:
            info["label_map"] = {int(k): v for k, v in info["label_map"].items()}
    return samples


def _register_dataset() -> str:
    """``ByolBenchSegDataset``: an mmseg ``BaseSegDataset`` over a data list file (our files, :func:`data_list`)."""
    from mmseg.datasets import BaseSegDataset
    from mmseg.registry import DATASETS

    name = "ByolBenchSegDataset"
    if name not in DATASETS.module_dict:
        class ByolBenchSegDataset(BaseSegDataset):
            def __init__(self, data_list_file: str, **kwargs: Any) -> None:
                self.data_list_file = data_list_file
                super().__init__(**kwargs)

            def load_data_list(self) -> list[dict]:
                return read_data_list(self.data_list_file)

        DATASETS.register_module(name=name, module=ByolBenchSegDataset)
    return name


def mmseg_config(cfg: Any, arch: str, num_classes: int, pretrained: Path, work_dir: Path,
                 train_list: Path, class_names: tuple[str, ...]) -> dict:
    """The mmseg/mmengine config of our preset (``cfg``: a ``SegmentationConfig``); ``train_list``: the train
    set's :func:`write_data_list` file."""
    if cfg.test_mode == "slide":
        test_cfg = dict(mode="slide", crop_size=(cfg.test_crop, cfg.test_crop),
                        stride=(cfg.test_stride, cfg.test_stride))
    else:
        test_cfg = dict(mode="whole")
    model = mmseg_fcn_config(arch, num_classes, cfg.align_corners, test_cfg)
    crop = (cfg.crop_size, cfg.crop_size)
    model["data_preprocessor"] = dict(type="SegDataPreProcessor", mean=MEAN, std=STD, bgr_to_rgb=True, pad_val=0,
                                      seg_pad_val=255, size=crop)
    model["backbone"]["init_cfg"] = dict(type="Pretrained", checkpoint=str(pretrained))
    train_pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations"),
        dict(type="RandomResize", scale=tuple(cfg.scale), ratio_range=tuple(cfg.ratio_range), keep_ratio=True),
        dict(type="RandomCrop", crop_size=crop, cat_max_ratio=cfg.cat_max_ratio),
        dict(type="RandomFlip", prob=0.5),
        dict(type="PhotoMetricDistortion"),
        dict(type="PackSegInputs"),
    ]
    log_every = min(50, cfg.max_iters)
    return dict(
        model=model,
        work_dir=str(work_dir),
        train_dataloader=dict(
            batch_size=cfg.batch_size_per_device, num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0, sampler=dict(type="InfiniteSampler", shuffle=True),
            dataset=dict(type=_register_dataset(), data_list_file=str(train_list), metainfo=dict(classes=class_names),
                         pipeline=train_pipeline, serialize_data=False)),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=cfg.max_iters),
        optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=cfg.lr, momentum=cfg.momentum,
                                                                weight_decay=cfg.weight_decay)),
        param_scheduler=[dict(type="PolyLR", eta_min=cfg.min_lr, power=cfg.poly_power, begin=0, end=cfg.max_iters,
                              by_epoch=False)],
        default_hooks=dict(
            timer=dict(type="IterTimerHook"), param_scheduler=dict(type="ParamSchedulerHook"),
            logger=dict(type="LoggerHook", interval=log_every, log_metric_by_epoch=False),
            checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=cfg.ckpt_every_iters),
            sampler_seed=dict(type="DistSamplerSeedHook")),
        test_pipeline=[dict(type="LoadImageFromFile"),
                       dict(type="Resize", scale=tuple(cfg.test_scale), keep_ratio=True),
                       dict(type="PackSegInputs")],
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend="nccl")),
        log_processor=dict(by_epoch=False),
        randomness=dict(seed=cfg.seed),
        launcher="none",
        default_scope="mmseg",
    )


def train_and_predict(cfg: Any, run: Any, log: Any, backbone: nn.Module, report: ConversionReport, train_set: Any,
                      val_set: Any, pred_dir: Path) -> tuple[list[int], dict, dict]:
    """Train with mmseg's Runner, write the val prediction PNGs; returns (val indices, state, record details)."""
    import mmseg
    from mmengine.config import Config
    from mmengine.dataset import Compose
    from mmengine.runner import Runner

    from benchmarks.segmentation.evaluation import CLASS_NAMES, prediction_name, save_prediction

    work_dir = run.run_dir / "mmseg"
    work_dir.mkdir(parents=True, exist_ok=True)
    trunk = trunk_state_dict(backbone)
    meta = {"converted_by": "byol-bench adapters", "source": report.source, "source_sha256": report.sha256,
            "encoder": report.encoder, "arch": report.arch}
    pretrained = atomic_save(to_mm(trunk, meta), work_dir / "pretrained_mm.pth")
    classes = CLASS_NAMES[cfg.dataset]
    train_list = write_data_list(data_list(train_set, cfg.dataset), work_dir / "train_list.json")
    config = mmseg_config(cfg, report.arch, len(classes), pretrained, work_dir, train_list, classes)
    # the runners' resume rule on mmengine's pointer to its newest checkpoint (--force: from the pretrained weights)
    resume_from = training.resume_point(work_dir, cfg, name="last_checkpoint")
    if resume_from is not None:
        if resume_from == work_dir / "last_checkpoint":
            resume_from = Path(resume_from.read_text().strip())
        config.update(resume=True, load_from=str(resume_from))
    # mmengine checkpoints hold its message hub and numpy state; torch >= 2.6 loads weights only by default.
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    # mmengine prints its config with yapf at the log, the dump and every checkpoint (seconds each on a CPU): plain
    runner = Runner.from_cfg(Config(config, format_python_code=False))
    started = time.time()
    model = runner.train()
    train_time = time.time() - started

    # val predictions: mmseg's test pipeline and inference, one image at a time, written as our PNGs
    model.eval()
    pipeline = Compose(config["test_pipeline"])
    pred_dir.mkdir(parents=True, exist_ok=True)
    for index, (image, _) in enumerate(val_set.samples):
        data = pipeline(dict(img_path=str(image)))
        with torch.no_grad():
            out = model.test_step({"inputs": [data["inputs"]], "data_samples": [data["data_samples"]]})[0]
        pred = out.pred_sem_seg.data[0].cpu().numpy().astype("uint8")
        save_prediction(pred, cfg.dataset, pred_dir / prediction_name(val_set, index))

    _copy_losses(work_dir, log)
    details = {"mmseg_version": mmseg.__version__, "precision": "fp32",
               "mmseg_config": str(work_dir / "config.py"), "mmseg_pretrained": str(pretrained)}
    Config(config, format_python_code=False).dump(work_dir / "config.py")
    return list(range(len(val_set))), {"train_time_s": train_time}, details


def _copy_losses(work_dir: Path, log: Any) -> None:
    """mmseg's logged losses (every run's ``vis_data/scalars.json``, later runs win) into our training log."""
    rows: dict[int, dict] = {}
    for path in sorted(work_dir.glob("*/vis_data/scalars.json")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "decode.loss_ce" in row:
                rows[int(row["step"])] = dict(
                    step=int(row["step"]), lr=row["lr"], loss=row["loss"], loss_decode=row["decode.loss_ce"],
                    loss_aux=row["aux.loss_ce"] / AUX_WEIGHT)  # mmseg logs the weighted aux loss
    log.drop_after_step(0)
    for step in sorted(rows):
        log.log(**rows[step])

