"""The multi-head linear probe (benchmarks.linear_mhead): head shapes, the head math, the schedule, the run's
record (final-epoch evaluation, frozenness proof, learning signal), resume exactness and one-line CLI errors."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_support import run_module  # tests/ is on sys.path
from kill_support import kill_mid_run, seconds_per_step, temp_files, unequal_tensors
from overfit_support import FrozenTrunkOncePerBatch
from torch import nn

import benchmarks.linear.mhead as mhead
from byol_bench import training
from byol_bench.backbone import FEATURE_NAMES, build_resnet, feature_channels
from byol_bench.checkpoint import atomic_save, safe_load
from byol_bench.config import load_config
from byol_bench.records import load_records
from byol_bench.tables import render_markdown


def _cfg(ckpt: Path, data: Path, out: Path, *extra: str, preset: str = "tiny") -> mhead.LinearMheadConfig:
    return load_config(mhead.LinearMheadConfig, preset,
                       [f"ckpt={ckpt}", f"data_root={data}", f"out_dir={out}", *extra], preset_dir=mhead.PRESET_DIR)


@pytest.fixture(scope="module")
def tiny_run(ckpt, tiny_data, tmp_path_factory):
    """One tiny ImageNet run (the preset as shipped), shared by the record tests."""
    out = tmp_path_factory.mktemp("mhead")
    metrics = mhead.run(_cfg(ckpt, tiny_data, out))
    (record,) = load_records(out / "records")
    return metrics, record, out


@pytest.mark.parametrize(("arch", "dims"), [("resnet50", [9216, 9216, 8192, 9216, 8192]),
                                            ("resnet18", [9216, 2304, 2048, 2304, 2048])])
def test_head_dims_per_layer(arch, dims):
    backbone = build_resnet(arch)
    assert list(mhead.head_dims(backbone, 224, "specified").values()) == dims
    # tiny presets: adaptive pooling to the same grids keeps the dims at the tiny presets' 48 px
    assert list(mhead.head_dims(backbone, 48, "adaptive").values()) == dims
    heads = mhead.MultiHeads(feature_channels(backbone), mhead.head_dims(backbone, 224, "specified"), 1000)
    assert [heads.fcs[k].in_features for k in FEATURE_NAMES] == dims
    assert all(not any(p.requires_grad for p in n.parameters()) and n.running_mean is not None
               for n in heads.norms.values())  # BN(affine=False), running statistics kept


def test_head_equals_hand_computation():
    torch.manual_seed(1)
    heads = mhead.MultiHeads({"feat5": 3}, {"feat5": 12}, 4)
    assert heads.norms["feat5"].momentum == 0.1 and not heads.norms["feat5"].affine
    w = heads.fcs["feat5"].weight
    assert abs(float(w.detach().std()) - 0.01) < 0.005 and torch.all(heads.fcs["feat5"].bias == 0)
    nn.init.normal_(heads.fcs["feat5"].bias)
    x = torch.randn(5, 3, 2, 2, dtype=torch.float32)
    out = heads({"feat5": x})["feat5"]
    # train mode: per channel, mean and biased variance over (N, H, W), eps 1e-5, no scale/shift; then x W^T + b
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    expected = ((x - mean) / torch.sqrt(var + 1e-5)).reshape(5, 12) @ w.T + heads.fcs["feat5"].bias
    torch.testing.assert_close(out, expected)
    # the running statistics move by momentum 0.1 (unbiased variance), and eval mode uses them
    bn = heads.norms["feat5"]
    torch.testing.assert_close(bn.running_mean, 0.1 * mean.flatten())
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * x.var(dim=(0, 2, 3), unbiased=True))
    heads.eval()
    expected_eval = ((x - bn.running_mean.view(1, 3, 1, 1)) / torch.sqrt(bn.running_var.view(1, 3, 1, 1) + 1e-5))
    bias = heads.fcs["feat5"].bias
    torch.testing.assert_close(heads({"feat5": x})["feat5"], expected_eval.reshape(5, 12) @ w.T + bias)


@pytest.mark.parametrize(("preset", "expect"), [
    ("linear-mhead_resnet50_8xb32-steplr-90e_in1k", {0: 0.01, 29: 0.01, 30: 0.001, 59: 0.001, 60: 1e-4, 89: 1e-4}),
    ("linear-mhead_resnet50_8xb32-steplr-84e_inat18", {23: 0.01, 24: 0.001, 48: 1e-4, 72: 1e-5, 83: 1e-5}),
    ("linear-mhead_resnet50_8xb32-steplr-28e_places205", {6: 0.01, 7: 0.001, 14: 1e-4, 21: 1e-5, 27: 1e-5}),
])
def test_step_schedule_at_known_epochs(preset, expect):
    cfg = load_config(mhead.LinearMheadConfig, preset, preset_dir=mhead.PRESET_DIR)
    lrs = training.step_lr(cfg.lr, cfg.epochs, 5, cfg.milestones)
    assert len(lrs) == cfg.epochs * 5
    for epoch, lr in expect.items():
        assert lrs[epoch * 5] == pytest.approx(lr) and lrs[epoch * 5 + 4] == pytest.approx(lr)
    assert cfg.eval_every_epochs == 10 and cfg.global_batch_size == 256 and cfg.pooling == "specified"


def test_tiny_run_record_final_eval_and_table_row(tiny_run):
    metrics, record, _ = tiny_run
    details = record["details"]
    assert set(metrics) == set(FEATURE_NAMES) and record["dataset"] == "imagenet" and record["tiny"]
    assert details["final_epoch"] == 3 and details["eval_epochs"] == [2, 3]  # 3 is not a multiple of 2: still scored
    assert [metrics[k] for k in FEATURE_NAMES] == [details["val_curve"][-1][f"top1_{k}"] for k in FEATURE_NAMES]
    assert all(details["top5"][k] >= metrics[k] for k in FEATURE_NAMES)
    assert details["frozen_backbone"]["checked"] and details["encoder_evaluated"] == "online"
    assert details["global_batch_size"] == 64 and details["world_size"] == 1
    assert Path(details["val_curve_plot"]).is_file()
    rendered = render_markdown([record])
    cells = " | ".join(f"{metrics[k]:.2f}" for k in FEATURE_NAMES)
    imagenet_table = rendered[rendered.index("ImageNet Linear Evaluation"):]
    assert f"| random-init_resnet18 † | tiny | {cells} |  |" in imagenet_table.split("\n\n#")[0]


def test_random_init_feature5_beats_chance_clearly(tiny_run):
    # Embedded ImageNet: 10 classes, chance 10 %. Measured: the random-init ResNet-18's feat5 head reaches 51.6 %
    # after the 3 tiny epochs at 48 px (docs/LINEAR.md); with shuffled labels the test fails (seen).
    metrics, _, _ = tiny_run
    assert metrics["feat5"] > 25.0
    assert max(metrics.values()) > 30.0


def test_rerun_is_skipped(tiny_run, ckpt, tiny_data, capsys):
    metrics, _, out = tiny_run
    capsys.readouterr()
    assert mhead.run(_cfg(ckpt, tiny_data, out)) == pytest.approx(metrics)
    assert "skip linear_mhead" in capsys.readouterr().out


# the Places205 tiny set at 16 px: a short run for the flow tests (the sizes do not matter there, the state handling
# does; 16 px costs a quarter of 32 px's backbone passes, and adaptive pooling still gives every grid)
SMALL = ("image_size=16", "test_resize=18", "epochs=2", "milestones=1", "eval_every_epochs=1", "ckpt_every_epochs=5")


def _small(ckpt, data, out, *extra):
    return _cfg(ckpt, data, out, *SMALL, *extra, preset="tiny-places205")


def test_killed_run_resumes_to_the_final_weights_of_an_uninterrupted_one(ckpt, tiny_data, tmp_path, capsys,
                                                                         trained_steps):
    """SIGKILL at a random point of epoch 2 (a checkpoint every epoch), then the same config again (resume=auto):
    the heads, the record and the log are those of an uninterrupted run, which --force then trains from scratch."""
    runs = tmp_path / "runs" / "linear_mhead"

    def one_more_epoch(_: object) -> float:  # epoch 1's logged steps, at epoch 1's measured step time
        (log_file,) = runs.glob("*/log.jsonl")
        return len(trained_steps(log_file, "loss")) * seconds_per_step(log_file, "loss")

    overrides = [f"ckpt={ckpt}", f"data_root={tiny_data}", f"out_dir={tmp_path}", *SMALL, "ckpt_every_epochs=1"]
    kill = kill_mid_run([sys.executable, "-m", "benchmarks.linear_mhead", "--preset", "tiny-places205", *overrides],
                        runs, "*/latest.pth", window=one_more_epoch)
    resumed = mhead.run(_small(ckpt, tiny_data, tmp_path, "ckpt_every_epochs=1"))  # resume=auto
    assert not temp_files(runs), kill  # a write the kill cut short is cleaned up
    (state_file,) = runs.glob("*/latest.pth")
    resumed_heads = safe_load(state_file)["modules"]["heads"]
    (record,) = load_records(tmp_path / "records")
    assert record["details"]["eval_epochs"] == [1, 2], kill  # the evaluation before the kill came back with the state
    log_file = state_file.with_name("log.jsonl")
    steps = trained_steps(log_file, "loss")
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2, kill  # each step logged once
    # --force retrains from scratch (the finished latest.pth is not resumed from): the uninterrupted run to match
    capsys.readouterr()
    started = time.time()
    assert mhead.run(_small(ckpt, tiny_data, tmp_path, "force=true")) == resumed, kill
    assert not unequal_tensors(safe_load(state_file)["modules"]["heads"], resumed_heads), kill
    (whole,) = load_records(tmp_path / "records")
    assert whole["details"]["val_curve"] == record["details"]["val_curve"], kill
    # every step trained again, and the log holds this run's steps only
    assert trained_steps(log_file, "loss", since=started) == trained_steps(log_file, "loss") == steps
    assert "resumed from" not in capsys.readouterr().out


def test_frozenness_proof_catches_a_modified_backbone(ckpt, tiny_data, tmp_path, monkeypatch):
    real = mhead.pooled_features

    def bn_left_in_train_mode(extractor, images, *args):
        if len(images) > 1:  # (not the one-image shape probe of head_dims)
            extractor.train()  # the classic bug: BN running statistics drift during the probe
        return real(extractor, images, *args)

    monkeypatch.setattr(mhead, "pooled_features", bn_left_in_train_mode)
    with pytest.raises(RuntimeError, match=r"frozen backbone changed during the run: \[.*running_mean"):
        mhead.run(_small(ckpt, tiny_data, tmp_path, "epochs=1", "milestones=5"))
    assert not list((tmp_path / "records").glob("*.json"))


def test_cli_errors_are_one_line(ckpt, tiny_data, tmp_path):
    base = [sys.executable, "-m", "benchmarks.linear_mhead", "--preset", "tiny", "--data-root", str(tiny_data),
            "--out-dir", str(tmp_path)]
    wrong_arch = tmp_path / "r50.pth"
    atomic_save({k: v for k, v in build_resnet("resnet50").state_dict().items() if not k.startswith("fc.")},
                wrong_arch)

    def broken_root(name, damage):  # a copy of the tiny ImageNet, damaged
        root = tmp_path / name
        root.mkdir()
        shutil.copytree(tiny_data / "imagenet", root / "imagenet")
        damage(root / "imagenet")
        return str(root)

    def drop_lists_and_a_val_class(imagenet):
        shutil.rmtree(imagenet / "meta")
        shutil.rmtree(imagenet / "val" / "n01440764")

    cases = [
        (["--ckpt", str(tmp_path / "missing.pth")], "checkpoint file not found"),
        (["--ckpt", str(ckpt), "dataset=cifar"], "cifar"),
        (["--ckpt", str(wrong_arch), "arch=resnet18"], "r50.pth"),
        (["--ckpt", str(ckpt), "--data-root", broken_root(
            "label", lambda d: (d / "meta" / "val.txt").write_text("n01440764/x.JPEG 12\n"))],
         "val.txt:1: label 12 out of range"),
        (["--ckpt", str(ckpt), "--data-root", broken_root(
            "empty", lambda d: (d / "meta" / "train.txt").write_text("\n"))], "train.txt: list is empty"),
        (["--ckpt", str(ckpt), "--data-root", broken_root("folders", drop_lists_and_a_val_class)],
         "class folders differ"),
        (["--ckpt", str(ckpt), "--preset", "linear-mhead_resnet50_8xb32-steplr-90e_in1k"], "use a tiny preset"),
    ]
    for extra, needle in cases:  # in this process (cli_support: the real interpreter's path is tested elsewhere)
        result = run_module(base + extra)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and needle in result.stderr, result.stderr
        assert result.stderr.strip().count("\n") == 0


def test_overfit_a_few_images(ckpt, tiny_data):
    """Train -> predict -> score on the same 16 images: the heads must fit them (fails if train_step does not learn)."""
    from torch.utils.data import DataLoader, Subset

    from adapters import load_backbone
    from byol_bench.backbone import MultiLayerFeatures
    from byol_bench.classification import open_split, test_transform

    split = open_split("imagenet", tiny_data, "train", test_transform(73, 64), tiny=True)
    images = Subset(split.dataset, range(0, len(split.dataset), len(split.dataset) // 16)[:16])
    loader = DataLoader(images, batch_size=16)
    backbone, _ = load_backbone(ckpt)
    extractor = FrozenTrunkOncePerBatch(MultiLayerFeatures(backbone.eval().requires_grad_(False), FEATURE_NAMES,
                                                           pooled=False).eval())
    torch.manual_seed(0)
    heads = mhead.MultiHeads(feature_channels(backbone), mhead.head_dims(backbone, 64, "adaptive"), split.num_classes)
    optimizer = torch.optim.SGD(heads.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    batch, labels = next(iter(loader))
    for _ in range(200):
        mhead.train_step(extractor, heads, optimizer, batch, labels, "adaptive", "fp32", torch.device("cpu"))
    heads.eval()
    scores = mhead.evaluate(extractor, heads, loader, "adaptive", "fp32", torch.device("cpu"))
    assert min(scores[f"top1_{k}"] for k in FEATURE_NAMES) == 100.0, scores
    assert extractor.checked  # the features were recomputed once and compared (FrozenTrunkOncePerBatch)
