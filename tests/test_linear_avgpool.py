"""The AvgPool linear probe (benchmarks.linear_avgpool): head, settings, end-to-end record, resume, frozenness, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_support import run_module  # tests/ is on sys.path
from kill_support import kill_mid_run, per_write, temp_files, unequal_tensors
from overfit_support import FrozenTrunkOncePerBatch
from PIL import Image
from torchvision import transforms as T

import benchmarks.linear.avgpool as avgpool
from benchmarks.linear.avgpool import PRESET_DIR, AvgPoolHead, LinearAvgpoolConfig, build_optimizer, lr_schedule, run
from byol_bench import rehearsal
from byol_bench.backbone import IMAGENET_MEAN, IMAGENET_STD
from byol_bench.checkpoint import safe_load
from byol_bench.classification import crop_flip_transform, open_split, test_transform
from byol_bench.config import load_config
from byol_bench.lars import LARS
from byol_bench.records import load_records
from byol_bench.tables import render_markdown

MOCO = "linear-avgpool_resnet50_8xb32-steplr-100e_in1k"
SIMSIAM = "linear-avgpool_resnet50_8xb512-coslr-90e_in1k"


def _cfg(preset: str, ckpt: Path, data: Path, out: Path, *extra: str) -> LinearAvgpoolConfig:
    return load_config(LinearAvgpoolConfig, preset, [f"ckpt={ckpt}", f"data_root={data}", f"out_dir={out}", *extra],
                       preset_dir=PRESET_DIR)


# ---------------------------------------------------------------- head, settings, augmentation


def test_head_is_global_average_pool_then_linear() -> None:
    torch.manual_seed(0)
    head = AvgPoolHead(6, 4)
    with torch.no_grad():
        head.fc.bias.copy_(torch.arange(4.0))  # a non-zero bias, so a missing bias term shows
    x = torch.randn(3, 6, 5, 7)
    expected = torch.empty(3, 4, dtype=torch.float64)
    w, b = head.fc.weight.double(), head.fc.bias.double()
    for n in range(3):
        pooled = [sum(float(x[n, c, i, j]) for i in range(5) for j in range(7)) / 35 for c in range(6)]
        for k in range(4):
            expected[n, k] = sum(pooled[c] * w[k, c] for c in range(6)) + b[k]
    assert torch.allclose(head(x).double(), expected, atol=1e-5)
    assert head(x.bfloat16()).dtype == torch.float32  # the head runs in fp32 whatever the backbone gave


def test_head_init_and_no_bn() -> None:
    torch.manual_seed(0)
    head = AvgPoolHead(2048, 1000)
    assert [name for name, _ in head.named_parameters()] == ["fc.weight", "fc.bias"]  # no BN, nothing else
    assert not any(isinstance(m, torch.nn.modules.batchnorm._NormBase) for m in head.modules())
    assert torch.count_nonzero(head.fc.bias) == 0
    assert head.fc.weight.std().item() == pytest.approx(0.01, rel=0.01)
    assert abs(head.fc.weight.mean().item()) < 1e-4


def test_moco_setting_is_sgd_with_steps_at_60_and_80() -> None:
    cfg = load_config(LinearAvgpoolConfig, MOCO, preset_dir=PRESET_DIR)
    assert (cfg.setting, cfg.epochs, cfg.global_batch_size, cfg.weight_decay) == ("moco", 100, 256, 0.0)
    lr = cfg.lr * cfg.global_batch_size / cfg.lr_reference_batch
    lrs = lr_schedule(cfg, lr, iters_per_epoch=4)
    assert lrs.shape == (400,)
    assert lrs[0] == 30.0 and lrs[60 * 4 - 1] == 30.0
    assert lrs[60 * 4] == pytest.approx(3.0) and lrs[80 * 4 - 1] == pytest.approx(3.0)
    assert lrs[80 * 4] == pytest.approx(0.3) and lrs[-1] == pytest.approx(0.3)
    opt = build_optimizer(cfg.setting, AvgPoolHead(8, 3), lr, cfg.momentum, cfg.weight_decay)
    assert type(opt) is torch.optim.SGD
    (group,) = opt.param_groups
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (30.0, 0.9, 0.0, False)


def test_simsiam_setting_is_lars_without_exclusions_and_per_epoch_cosine() -> None:
    cfg = load_config(LinearAvgpoolConfig, SIMSIAM, preset_dir=PRESET_DIR)
    assert (cfg.setting, cfg.epochs, cfg.global_batch_size, cfg.weight_decay) == ("simsiam", 90, 4096, 0.0)
    lr = cfg.lr * cfg.global_batch_size / cfg.lr_reference_batch
    assert lr == 1.6
    lrs = lr_schedule(cfg, lr, iters_per_epoch=3)
    assert lrs.shape == (270,)
    for epoch in (0, 1, 45, 89):
        expected = 1.6 * 0.5 * (1 + math.cos(math.pi * epoch / 90))
        assert lrs[epoch * 3: epoch * 3 + 3] == pytest.approx([expected] * 3)  # constant within the epoch
    assert lrs[45 * 3] == pytest.approx(0.8)
    head = AvgPoolHead(8, 3)
    opt = build_optimizer(cfg.setting, head, lr, cfg.momentum, cfg.weight_decay)
    assert isinstance(opt, LARS)
    (group,) = opt.param_groups  # one group: the bias is adapted too (no exclusions, B §3.3)
    assert group["lars_adapt"] and group["weight_decay"] == 0.0 and group["lr"] == 1.6 and group["momentum"] == 0.9
    assert {id(p) for p in group["params"]} == {id(p) for p in head.parameters()}


def test_crop_flip_transform_matches_the_torchvision_chain() -> None:
    image = Image.fromarray(torch.randint(0, 256, (70, 90, 3), dtype=torch.uint8).numpy())
    reference = T.Compose([T.RandomResizedCrop(32, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BILINEAR),
                           T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    for seed in range(5):
        torch.manual_seed(seed)
        ours = crop_flip_transform(32)(image)
        torch.manual_seed(seed)
        assert torch.equal(ours, reference(image))


# ---------------------------------------------------------------- end to end on the embedded data


def test_tiny_imagenet_end_to_end_record_table_learning_and_rerun(ckpt, tiny_data, tmp_path, capsys,
                                                                  trained_steps) -> None:
    cfg = _cfg("tiny", ckpt, tiny_data, tmp_path)
    metrics = run(cfg)
    (record,) = load_records(tmp_path / "records")
    assert record["protocol"] == "linear_avgpool" and record["dataset"] == "imagenet" and record["tiny"]
    assert metrics == record["metrics"] and set(metrics) == {"top1", "top5"}
    details = record["details"]
    assert details["setting"] == "moco" and details["optimizer"] == "SGD"
    assert details["global_batch_size"] == 64 and details["batch_size_per_device"] == 64
    assert details["world_size"] == 1 and record["batch_size_per_device"] == 64
    assert details["encoder"] == "online" and record["checkpoint"]["encoder"] == "online"
    # Evaluated every 2 epochs and at the final one (3); the table's number is the final epoch's.
    assert [e["epoch"] for e in details["val_curve"]] == [2, 3] and details["evaluated_epoch"] == 3
    assert metrics["top1"] == details["val_curve"][-1]["top1"] and metrics["top5"] >= metrics["top1"]
    assert details["frozen_backbone"]["checked"] and details["frozen_backbone"]["tensors"] == 122
    assert Path(details["val_curve_plot"]).is_file()
    # Learning signal: 10 classes (chance 10 %); measured 23.6 % for this seed and preset (seeds 1-3: 26.8, 23.6, 30.0).
    assert metrics["top1"] > 20.0
    # The record fills the AvgPool cell of the ImageNet table, naming its setting (the tiny preset keeps MoCo's).
    table = render_markdown([record]).split("## ImageNet Linear Evaluation")[1].split("##")[0]
    row = next(line for line in table.splitlines() if line.startswith("| random-init_resnet18"))
    assert row.endswith(f"| {metrics['top1']:.2f} (MoCo) |")  # the last column is AvgPool

    capsys.readouterr()
    assert run(cfg) == metrics  # skipped: the record exists
    assert "skip linear_avgpool" in capsys.readouterr().out
    (log_file,) = (tmp_path / "runs" / "linear_avgpool").glob("*/log.jsonl")
    assert len(trained_steps(log_file, "train_loss")) == 3
    # --force: test_interrupted_run_resumes_to_the_same_final_weights (a 16 px run, not a second one of these)


def test_rehearsal_is_one_reference_process_two_steps_and_the_first_val_images(ckpt, tiny_data, tmp_path,
                                                                                monkeypatch, trained_steps) -> None:
    # the tiny preset named for a world of 8: one process's share of its global batch 64 is 8 images a step
    cfg = dataclasses.replace(_cfg("tiny", ckpt, tiny_data, tmp_path, "rehearsal=true"), preset="tiny_8xb8")
    batches, scored = [], []
    real_step, real_evaluate = avgpool.train_step, avgpool.evaluate

    def counting_step(trunk, head, optimizer, images, labels, *args):
        batches.append(len(labels))
        return real_step(trunk, head, optimizer, images, labels, *args)

    def recording_evaluate(trunk, head, loader, *args):
        scored.extend(images for images, _ in loader)
        return real_evaluate(trunk, head, loader, *args)

    monkeypatch.setattr(avgpool, "train_step", counting_step)
    monkeypatch.setattr(avgpool, "evaluate", recording_evaluate)
    run(cfg)
    (record,) = load_records(tmp_path / "records")
    details, summary = record["details"], record["details"]["rehearsal"]
    assert record["rehearsal"] is True and record["preset"] == "tiny_8xb8"
    assert batches == [8] * rehearsal.STEPS and record["batch_size_per_device"] == 8  # two steps of one process
    (log_file,) = (tmp_path / "runs" / "linear_avgpool").glob("*/log.jsonl")
    assert trained_steps(log_file, "train_loss") == [rehearsal.STEPS]  # one epoch of two steps
    assert details["train_images"] == 16 and details["val_images"] == rehearsal.EVAL_IMAGES
    # scored: the first 8 val images, in order, once (one evaluation, at the end of the one epoch)
    val = open_split("imagenet", tiny_data, "val", test_transform(cfg.test_resize, cfg.image_size), tiny=True)
    assert torch.equal(torch.cat(scored), torch.stack([val.dataset[i][0] for i in range(rehearsal.EVAL_IMAGES)]))
    assert [e["epoch"] for e in details["val_curve"]] == [1] and record["metrics"]["top1"] in (
        100.0 * k / 8 for k in range(9))
    assert Path(details["val_curve_plot"]).is_file()
    assert summary["steps"] == rehearsal.STEPS == len(summary["step_times_s"])
    assert (summary["images_per_step"], summary["reference_world"], summary["eval_images"]) == (8, 8, 8)
    # the full run: 3 epochs of ImageNet at global batch 64; evaluations after epochs 2 and 3 of 50,000 / 8 images
    assert summary["full_steps"] == 3 * math.ceil(1_281_167 / 64)
    assert summary["full_eval_images"] == 2 * 50_000 // 8 and summary["full_run_s"] > 0
    assert "1 rehearsal record(s) left out" in render_markdown([record])


def test_killed_run_resumes_to_the_final_weights_of_an_uninterrupted_one(ckpt, tiny_data, tmp_path, capsys,
                                                                         trained_steps) -> None:
    """SIGKILL at a random point of the last epoch (a checkpoint every epoch), then the same config again
    (resume=auto): the head, the record and the log are those of an uninterrupted run, which --force then trains
    from scratch."""
    # The SimSiam setting (LARS momentum buffers in the state) on the small Places205 set, 3 epochs, cosine;
    # 16 px crops keep it quick (the sizes do not matter here, the state handling does).
    extra = ("setting=simsiam", "lr=1.6", "lr_reference_batch=4096", "ckpt_every_epochs=1", "image_size=16",
             "test_resize=18")
    overrides = [f"ckpt={ckpt}", f"data_root={tiny_data}", f"out_dir={tmp_path}", *extra]
    runs = tmp_path / "runs" / "linear_avgpool"
    kill = kill_mid_run([sys.executable, "-m", "benchmarks.linear_avgpool", "--preset", "tiny-places205", *overrides],
                        runs, "*/latest.pth", writes=2, window=per_write(1))  # epoch 3: as long as epoch 2
    resumed = run(_cfg("tiny-places205", ckpt, tiny_data, tmp_path, *extra))  # resume=auto
    assert not temp_files(runs), kill  # a write the kill cut short is cleaned up
    (state_file,) = runs.glob("*/latest.pth")
    head = safe_load(state_file)["modules"]["head"]
    (record,) = load_records(tmp_path / "records")
    assert record["details"]["optimizer"] == "LARS"
    log_file = state_file.with_name("log.jsonl")
    assert [json.loads(line)["epoch"] for line in log_file.read_text().splitlines()] == [1, 2, 3], kill  # none twice
    # --force on the finished run trains every epoch again (the finished latest.pth is not resumed from): the
    # uninterrupted run to match; the log then holds this run only
    epochs = trained_steps(log_file, "train_loss")
    capsys.readouterr()
    started = time.time()
    whole = run(_cfg("tiny-places205", ckpt, tiny_data, tmp_path, *extra, "ckpt_every_epochs=5", "force=true"))
    assert whole == resumed, kill
    assert not unequal_tensors(safe_load(state_file)["modules"]["head"], head), kill
    (forced,) = load_records(tmp_path / "records")
    assert forced["details"]["val_curve"] == record["details"]["val_curve"], kill
    assert trained_steps(log_file, "train_loss", since=started) == trained_steps(log_file, "train_loss") == epochs
    assert "resumed from" not in capsys.readouterr().out


def test_frozenness_proof_catches_a_backbone_that_changes_during_the_run(ckpt, tiny_data, tmp_path,
                                                                         monkeypatch) -> None:
    real_load = avgpool.load_backbone

    def load_with_bn_left_in_train_mode(*args, **kwargs):
        model, report = real_load(*args, **kwargs)
        model.eval = lambda: model  # the bug: BN stays in train mode, its running statistics move
        return model, report

    monkeypatch.setattr(avgpool, "load_backbone", load_with_bn_left_in_train_mode)
    with pytest.raises(RuntimeError, match="frozen backbone changed"):
        run(_cfg("tiny-places205", ckpt, tiny_data, tmp_path, "epochs=1", "milestones=[]",
                 "image_size=16", "test_resize=18"))
    assert not (tmp_path / "records").exists()


def test_cli_errors_are_one_line(ckpt, tiny_data, tmp_path) -> None:
    # A truncated image, read in a DataLoader worker: the error names the file, not the worker's traceback.
    bad_root = tmp_path / "bad"
    shutil.copytree(tiny_data / "places205", bad_root / "places205")
    rel = (bad_root / "places205" / "trainvalsplit_places205" / "train_places205.csv").read_text().split()[0]
    bad_image = bad_root / "places205" / "data/vision/torralba/deeplearning/images256" / rel
    bad_image.write_bytes(bad_image.read_bytes()[:100])
    base = [sys.executable, "-m", "benchmarks.linear_avgpool", "--preset", "tiny", "--out-dir", str(tmp_path)]
    cases = (
            (["--data-root", str(tiny_data), "--ckpt", str(tmp_path / "missing.pth")], "checkpoint file not found"),
            (["--data-root", str(tiny_data), "--ckpt", str(ckpt), "setting=adam"], "is not one of 'moco', 'simsiam'"),
            (["--data-root", str(tmp_path / "nodata"), "--ckpt", str(ckpt)], "nodata/imagenet"),
            (["--data-root", str(bad_root), "--ckpt", str(ckpt), "dataset=places205", "num_workers=1", "epochs=1",
              "image_size=16", "test_resize=18"], f"{bad_image}: image is corrupt or not an image"))
    for extra, needle in cases:  # in this process (cli_support: the real interpreter's path is tested elsewhere)
        proc = run_module([*base, *extra])
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
        assert "Traceback" not in lines[0] and len(lines[0]) < 400, lines[0]


@pytest.mark.parametrize("setting", ["moco", "simsiam"])
def test_overfit_a_few_images(ckpt, tiny_data, setting):
    """Train -> predict -> score on the same 16 images with the runner's train_step, optimizer and evaluate: the
    AvgPool head must fit them (fails if the step does not learn)."""
    from torch.utils.data import DataLoader, Subset

    from adapters import load_backbone
    from byol_bench.backbone import MultiLayerFeatures, feature_channels
    from byol_bench.classification import open_split, test_transform

    split = open_split("imagenet", tiny_data, "train", test_transform(73, 64), tiny=True)
    images = Subset(split.dataset, range(0, len(split.dataset), len(split.dataset) // 16)[:16])
    loader = DataLoader(images, batch_size=16)
    backbone, _ = load_backbone(ckpt)
    trunk = FrozenTrunkOncePerBatch(MultiLayerFeatures(backbone.eval().requires_grad_(False), ("feat5",),
                                                       pooled=False).eval())
    torch.manual_seed(0)
    head = AvgPoolHead(feature_channels(backbone)["feat5"], split.num_classes)
    lr = {"moco": 30.0, "simsiam": 1.6}[setting]  # each setting's own learning rate and optimizer
    optimizer = build_optimizer(setting, head, lr, 0.9, 0.0)
    batch, labels = next(iter(loader))
    for _ in range(300):  # LARS (simsiam) reaches 87.5 % after 100 steps, 100 % after 300
        avgpool.train_step(trunk, head, optimizer, batch, labels, torch.device("cpu"), "fp32")
    scores = avgpool.evaluate(trunk, head, loader, torch.device("cpu"), "fp32")
    assert scores["top1"] == 100.0, scores
    assert trunk.checked  # the features were recomputed once and compared (FrozenTrunkOncePerBatch)
