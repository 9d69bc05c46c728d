"""Schedules at known steps (B §1.4, §1.6), the resolved values, and every preset parses and resolves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from byol_bench.config import load_config
from pretrain.config import PRESET_DIR, PretrainConfig, resolve
from pretrain.schedules import lr_schedule, momentum_schedule

PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def mmcv_lr(it: int, *, peak: float, iters_per_epoch: int, epochs: int, warmup_iters: int, ratio: float) -> float:
    """mmcv 1.4 CosineAnnealingLrUpdaterHook(by_epoch) + linear warm-up, evaluated at data iteration ``it``."""
    regular = peak * (1 + math.cos(math.pi * (it // iters_per_epoch) / epochs)) / 2
    if it < warmup_iters:
        return regular * (1 - (1 - it / warmup_iters) * (1 - ratio))
    return regular


def test_per_epoch_schedule_is_mmcv_at_the_window_end() -> None:
    kwargs = {"iters_per_epoch": 100, "epochs": 20, "warmup_iters": 200}
    lrs = lr_schedule(peak_lr=4.8, total_steps=20 * 100 // 16, accum_steps=16, warmup_ratio=1e-4, min_lr=0.0,
                      cosine="per_epoch", **kwargs)
    for step in (0, 5, 11, 12, 13, 50, 100, len(lrs) - 1):
        it = (step + 1) * 16 - 1
        assert lrs[step] == pytest.approx(mmcv_lr(it, peak=4.8, ratio=1e-4, **kwargs), rel=1e-12)
    # Step 0 is at iteration 15: 4.8 * (1 - (1 - 15/200)(1 - 1e-4)).
    assert lrs[0] == pytest.approx(4.8 * (1 - (1 - 15 / 200) * (1 - 1e-4)))
    # After warm-up the value only changes at epoch boundaries: iterations 223 and 239 are both in epoch 2.
    assert lrs[13] == lrs[14] == pytest.approx(4.8 * (1 + math.cos(math.pi * 2 / 20)) / 2)


def test_per_step_schedule_warms_up_then_cosines() -> None:
    lrs = lr_schedule(peak_lr=2.0, total_steps=110, accum_steps=1, iters_per_epoch=10, epochs=11,
                      warmup_iters=10, warmup_ratio=0.0, min_lr=0.0, cosine="per_step")
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(2.0)  # warm-up done: the cosine starts at the peak
    assert lrs[60] == pytest.approx(1.0)  # half-way through the 100 cosine steps
    assert np.all(np.diff(lrs[10:]) <= 0)


def test_unknown_cosine_name_lists_valid() -> None:
    with pytest.raises(ValueError, match="per_epoch, per_step"):
        lr_schedule(peak_lr=1, total_steps=1, accum_steps=1, iters_per_epoch=1, epochs=1, warmup_iters=0,
                    warmup_ratio=0, min_lr=0, cosine="linear")


def test_momentum_schedule() -> None:
    m = momentum_schedule(base=0.99, end=1.0, total_steps=1000)
    assert m[0] == pytest.approx(0.99)
    assert m[500] == pytest.approx(0.995)
    assert m[-1] == pytest.approx(1 - 0.01 * (math.cos(math.pi * 999 / 1000) + 1) / 2)
    assert np.all(np.diff(m) >= 0) and m[-1] < 1.0


def test_resolved_values_for_the_mmselfsup_preset() -> None:
    cfg = load_config(PretrainConfig, "byol_resnet50_8xb32-accum16-coslr-200e_in1k", preset_dir=PRESET_DIR)
    res = resolve(cfg, world_size=8, train_images=1_281_167, device=torch.device("cpu"))
    assert res.global_batch_size == 4096 and res.lr == pytest.approx(4.8)
    assert res.iters_per_epoch == 5004  # 160,145 images per rank, last short batch dropped (B §1.1: 5,005)
    assert res.total_steps == 5004 * 200 // 16
    assert res.warmup_iters == 50_040
    assert res.precision == "fp32" and res.channels_last  # on CPU too (faster at >= 112 px)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_parses_and_resolves(preset: str) -> None:
    cfg = load_config(PretrainConfig, preset, preset_dir=PRESET_DIR)
    assert cfg.name == preset or (preset == "tiny" and cfg.name == "byol_resnet18_tiny")
    res = resolve(cfg, world_size=16, train_images=1_281_167, device=torch.device("cuda", 0))
    assert res.precision == "bf16" and res.channels_last == (preset != "tiny")  # tiny: off (slower at 64 px on CPU)
    assert res.global_batch_size == cfg.batch_size_per_device * 16 * cfg.accum_steps


def test_presets_are_the_four_documented() -> None:
    assert PRESETS == ["byol_resnet50_16xb256-coslr-200e_in1k", "byol_resnet50_16xb256-paper-1000e_in1k",
                       "byol_resnet50_8xb32-accum16-coslr-200e_in1k", "tiny"]
    paper = load_config(PretrainConfig, "byol_resnet50_16xb256-paper-1000e_in1k", preset_dir=PRESET_DIR)
    assert (paper.base_lr, paper.weight_decay, paper.target_momentum, paper.epochs) == (0.2, 1.5e-6, 0.996, 1000)


def test_too_few_images_is_a_clear_error() -> None:
    cfg = PretrainConfig(batch_size_per_device=64)
    with pytest.raises(ValueError, match="fewer than one batch"):
        resolve(cfg, world_size=2, train_images=100, device=torch.device("cpu"))
