"""The VOC07+12 Faster R-CNN C4 runner (benchmarks.det_voc): the model's shapes and parameter groups, RoIAlign
aligned=True, anchors, the schedule and batch policy, bad input, an overfit check, and the tiny end-to-end run
(trials mean/std, kill and resume, skip, force, results files, table row)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_support import run_module  # tests/ is on sys.path
from kill_support import kill_mid_run, per_write, temp_files, unequal_tensors
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.resnet import BasicBlock
from torchvision.ops import roi_align

import benchmarks.detection.voc as det_voc
from benchmarks.detection import c4, data, rcnn, trainer, voc_eval
from byol_bench import rehearsal
from byol_bench.backbone import build_resnet
from byol_bench.checkpoint import safe_load
from byol_bench.config import load_config
from byol_bench.datasets import DatasetError
from byol_bench.datasets.voc_det import VOCDetection, detection_sample
from byol_bench.records import load_records
from byol_bench.runlog import RunLog
from byol_bench.tables import render_markdown

FULL = "faster-rcnn_resnet50-c4_8xb2-24k_voc0712"



def _cfg(*overrides: str, preset: str = FULL) -> det_voc.DetVocConfig:
    return load_config(det_voc.DetVocConfig, preset, ["ckpt=x.pth", *overrides], preset_dir=det_voc.PRESET_DIR)


@pytest.fixture(scope="module")
def r50_model():
    resnet = build_resnet("resnet50")
    return c4.build_faster_rcnn_c4(resnet, _cfg()), resnet


# ------------------------------------------------------------------ the C4 model


def test_c4_shapes_res5_from_layer4_and_extra_norm(r50_model):
    model, resnet = r50_model
    model.eval()
    with torch.no_grad():
        res4 = model.backbone(torch.zeros(1, 3, 224, 320))["0"]
        assert res4.shape == (1, 1024, 14, 20)  # stride 16
        head = model.roi_heads.box_head
        assert head.res5 is resnet.layer4  # res5 = the checkpoint's layer4 (same tensors)
        assert head.res5[0].conv2.stride == (2, 2) and head.res5[0].conv1.stride == (1, 1)  # stride on the 3x3
        assert isinstance(head.norm, nn.BatchNorm2d) and head.norm.num_features == 2048
        rois = torch.randn(3, 1024, 14, 14)
        head.norm.running_mean.normal_()  # eval mode: the extra norm applies its (non-trivial) statistics
        expected = head.norm(resnet.layer4(rois)).mean(dim=(2, 3))
        assert expected.shape == (3, 2048)
        torch.testing.assert_close(head(rois), expected)  # res5 -> extra norm -> average pooling
        assert not torch.allclose(expected, resnet.layer4(rois).mean(dim=(2, 3)), atol=1e-3)
        predictor = model.roi_heads.box_predictor.module
        assert (predictor.cls_score.out_features, predictor.bbox_pred.out_features) == (21, 84)
        assert predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.1)
        assert predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.1)
    rpn = model.rpn
    assert rpn.head.conv[0][0].in_channels == 1024 and rpn.head.cls_logits.out_channels == 15
    assert (rpn._pre_nms_top_n, rpn._post_nms_top_n) == ({"training": 12000, "testing": 6000},
                                                         {"training": 2000, "testing": 1000})
    assert rpn.nms_thresh == 0.7 and rpn.fg_bg_sampler.batch_size_per_image == 256
    rh = model.roi_heads
    assert rh.fg_bg_sampler.batch_size_per_image == 512 and rh.fg_bg_sampler.positive_fraction == 0.25
    assert (rh.score_thresh, rh.nms_thresh, rh.detections_per_img) == (0.05, 0.5, 100)
    assert rh.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    tf = model.transform
    assert tf.min_size == tuple(range(480, 801, 32)) and (tf.max_size, tf.test_size, tf.test_max_size) == (
        1333, 800, 1333)
    assert tf.image_mean == [0.485, 0.456, 0.406] and tf.image_std == [0.229, 0.224, 0.225]  # RGB, _moco stats


def test_nothing_frozen_and_no_weight_decay_on_norms(r50_model):
    model, _ = r50_model
    assert all(p.requires_grad for p in model.parameters())  # FREEZE_AT 0: the stem trains too
    groups = {g["name"]: g for g in trainer.param_groups(model, 1e-4, 0.0)}
    norm_params = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert {id(p) for p in groups["norm"]["params"]} == norm_params and groups["norm"]["weight_decay"] == 0.0
    assert id(model.roi_heads.box_head.norm.weight) in norm_params and id(model.backbone.body[1].bias) in norm_params
    assert len(groups["decay"]["params"]) + len(groups["norm"]["params"]) == len(list(model.parameters()))
    assert groups["decay"]["weight_decay"] == 1e-4


def test_roi_align_is_aligned_v2(r50_model):
    model, _ = r50_model
    pool = model.roi_heads.box_roi_pool
    assert (pool.output_size, pool.spatial_scale) == (14, 1 / 16)
    # by hand: a ramp f(x, y) = x, box [0, 4] at scale 1 into 2 bins (2 samples each): aligned=True shifts the box
    # by half a pixel, so the bins average f at 0, 1 and 2, 3 -> 0.5, 2.5 (aligned=False: 1.0, 3.0)
    ramp = torch.arange(8.0).expand(1, 1, 8, 8).contiguous()
    box = [torch.tensor([[0.0, 0.0, 4.0, 4.0]])]
    small = rcnn.AlignedRoIPool(2, 1.0)
    assert small({"0": ramp}, box, [(8, 8)])[0, 0, 0].tolist() == [0.5, 2.5]
    assert roi_align(ramp, box, 2, 1.0, sampling_ratio=0, aligned=False)[0, 0, 0].tolist() == [1.0, 3.0]
    feats = torch.randn(1, 1024, 20, 20)
    boxes = [torch.tensor([[10.0, 20.0, 200.0, 150.0], [0.0, 0.0, 319.0, 319.0]])]
    torch.testing.assert_close(pool({"0": feats}, boxes, [(320, 320)]),
                               roi_align(feats, boxes, 14, 1 / 16, sampling_ratio=0, aligned=True))


def test_anchors_32_to_512_three_ratios_stride_16(r50_model):
    model, _ = r50_model
    gen = model.rpn.anchor_generator
    cell = gen.cell_anchors[0]
    areas = ((cell[:, 2] - cell[:, 0]) * (cell[:, 3] - cell[:, 1])).reshape(3, 5)
    torch.testing.assert_close(areas, torch.tensor([[s * s for s in (32.0, 64, 128, 256, 512)]] * 3))
    ratios = ((cell[:, 3] - cell[:, 1]) / (cell[:, 2] - cell[:, 0])).reshape(3, 5)
    torch.testing.assert_close(ratios, torch.tensor([[0.5] * 5, [1.0] * 5, [2.0] * 5]))
    anchors = gen(ImageList(torch.zeros(1, 3, 32, 32), [(32, 32)]), [torch.zeros(1, 1024, 2, 2)])[0]
    assert anchors.shape == (4 * 15, 4)
    torch.testing.assert_close(anchors[15:30], cell + torch.tensor([16.0, 0.0, 16.0, 0.0]))  # next cell: +stride


# ------------------------------------------------------------------ schedule and batch policy


def test_schedule_at_known_iterations():
    cfg = _cfg()
    resolved = det_voc.resolve(cfg, 8, "bf16", "cuda:0")
    assert (resolved.accumulate, resolved.batch_policy, resolved.global_batch_size) == (1, "recipe", 16)
    lrs = det_voc.train_settings(cfg, resolved, 0).lrs()
    assert len(lrs) == 24000
    expect = {0: 0.02 * 0.001, 50: 0.02 * (0.001 * 0.5 + 0.5), 100: 0.02, 17999: 0.02, 18000: 0.002, 21999: 0.002,
              22000: 0.0002, 23999: 0.0002}
    for it, lr in expect.items():
        assert lrs[it] == pytest.approx(lr), it


def test_fewer_gpus_accumulate_or_scale():
    one_gpu = det_voc.resolve(_cfg(), 1, "bf16", "cuda:0")
    assert (one_gpu.accumulate, one_gpu.batch_policy, one_gpu.lr, one_gpu.max_iters) == (8, "accumulate", 0.02, 24000)
    big = det_voc.resolve(_cfg("batch_size_per_device=16"), 1, "bf16", "cuda:0")
    assert (big.accumulate, big.batch_policy) == (1, "recipe")
    scaled = det_voc.resolve(_cfg("small_world=scale"), 2, "bf16", "cuda:0")  # 4 images per step: 4x
    assert (scaled.lr, scaled.max_iters, scaled.steps, scaled.warmup_iters, scaled.global_batch_size) == (
        pytest.approx(0.005), 96000, (72000, 88000), 400, 4)
    with pytest.raises(ValueError, match="not a multiple"):
        det_voc.resolve(_cfg("batch_size_per_device=3"), 1, "fp32", "cpu")
    # detectron2 runs its IMS_PER_BATCH (16) per step over the GPUs it launches: never accumulated or scaled
    d2 = det_voc.resolve(_cfg("engine=detectron2", "small_world=scale"), 1, "fp32", "cpu")
    assert (d2.accumulate, d2.batch_policy, d2.global_batch_size, d2.lr, d2.max_iters) == (1, "recipe", 16, 0.02, 24000)


def test_trials_mean_and_sample_std():
    trials = [{"AP": 50.0, "AP50": 80.0, "AP75": 55.0}, {"AP": 52.0, "AP50": 80.0, "AP75": 56.0},
              {"AP": 54.0, "AP50": 83.0, "AP75": 57.0}]
    mean, std = det_voc.summarize_trials(trials)
    assert mean == pytest.approx({"AP": 52.0, "AP50": 81.0, "AP75": 56.0})
    assert std == pytest.approx({"AP": 2.0, "AP50": math.sqrt(3.0), "AP75": 1.0})  # n - 1 in the denominator
    assert det_voc.summarize_trials(trials[:1]) == ({"AP": 50.0, "AP50": 80.0, "AP75": 55.0},
                                                    {"AP": 0.0, "AP50": 0.0, "AP75": 0.0})


# ------------------------------------------------------------------ bad input


def _mini_devkit(tiny_data: Path, dest: Path, ids: int = 2) -> tuple[Path, list[str]]:
    """A VOC2007 folder with the first ``ids`` trainval images of the embedded data (to break)."""
    src = tiny_data / "VOCdevkit" / "VOC2007"
    root = dest / "VOCdevkit" / "VOC2007"
    chosen = (src / "ImageSets" / "Main" / "trainval.txt").read_text().split()[:ids]
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for i in chosen:
        shutil.copy(src / "Annotations" / f"{i}.xml", root / "Annotations")
        shutil.copy(src / "JPEGImages" / f"{i}.jpg", root / "JPEGImages")
    for split in ("trainval", "test"):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(chosen) + "\n")
    return root, chosen


def _swap_x(xml: str) -> str:
    """The first object's xmin and xmax exchanged (x2 < x1)."""
    xmin = xml.split("<xmin>", 1)[1].split("</xmin>", 1)[0]
    xmax = xml.split("<xmax>", 1)[1].split("</xmax>", 1)[0]
    xml = xml.replace(f"<xmin>{xmin}</xmin>", "<xmin>@</xmin>", 1)
    xml = xml.replace(f"<xmax>{xmax}</xmax>", f"<xmax>{xmin}</xmax>", 1)
    return xml.replace("<xmin>@</xmin>", f"<xmin>{xmax}</xmin>", 1)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda x: x.replace("<xmax>", "<xmax>9999", 1), r"Annotations/{id}\.xml: object 0 \(\w+\) box .* outside"),
    (_swap_x, r"Annotations/{id}\.xml: object 0 \(\w+\) box .* inverted"),
    (lambda x: x.replace("<name>", "<name>zebra", 1), r"Annotations/{id}\.xml: object 0 has unknown class 'zebra"),
])
def test_bad_annotations_name_the_file(tiny_data, tmp_path, edit, message):
    root, ids = _mini_devkit(tiny_data, tmp_path)
    xml = root / "Annotations" / f"{ids[1]}.xml"
    xml.write_text(edit(xml.read_text()))
    with pytest.raises(DatasetError, match=message.format(id=ids[1])):
        VOCDetection(root, "2007", "trainval")


def test_listed_image_without_xml_or_jpeg(tiny_data, tmp_path):
    root, ids = _mini_devkit(tiny_data, tmp_path)
    (root / "JPEGImages" / f"{ids[0]}.jpg").unlink()
    with pytest.raises(DatasetError, match=rf"JPEGImages/{ids[0]}\.jpg: image file not found \(listed in "):
        VOCDetection(root, "2007", "trainval")
    shutil.copy(tiny_data / "VOCdevkit" / "VOC2007" / "JPEGImages" / f"{ids[0]}.jpg", root / "JPEGImages")
    (root / "Annotations" / f"{ids[1]}.xml").unlink()
    with pytest.raises(DatasetError, match=rf"Annotations/{ids[1]}\.xml: annotation file not found"):
        VOCDetection(root, "2007", "trainval")


def _cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m benchmarks.det_voc args``, in this process (cli_support)."""
    return run_module([sys.executable, "-m", "benchmarks.det_voc", *args])


def test_cli_errors_are_one_line(tiny_data, tmp_path, ckpt):
    missing = _cli("--preset", "tiny", "--ckpt", str(tmp_path / "nope.pth"), "--data-root", str(tiny_data),
                   "--out-dir", str(tmp_path / "out"))
    assert missing.returncode == 2 and "nope.pth" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    unknown = _cli("--preset", "tiny", "--ckpt", str(ckpt), "roi_heads=3")
    assert unknown.returncode == 2 and "roi_heads" in unknown.stderr
    root, ids = _mini_devkit(tiny_data, tmp_path / "broken")
    xml = root / "Annotations" / f"{ids[0]}.xml"
    xml.write_text(xml.read_text().replace("<name>", "<name>zebra", 1))
    bad = _cli("--preset", "tiny", "--ckpt", str(ckpt), "--data-root", str(tmp_path / "broken"), "--out-dir",
               str(tmp_path / "out"))
    assert bad.returncode == 2 and f"{ids[0]}.xml" in bad.stderr and "zebra" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "out" / "records").exists()


# ------------------------------------------------------------------ learning: the overfit check


class MiniResNet(nn.Module):
    """torchvision's ResNet layout (``conv1, bn1, relu, maxpool, layer1..4`` of BasicBlocks) at widths 16..128: the
    C4 model of the runner at a size that trains in seconds on a CPU (res5 runs once per RoI)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1, self.relu, self.maxpool = nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        stages = zip((widths[0], *widths[:-1]), widths, (1, 2, 2, 2), strict=True)
        for k, (cin, cout, stride) in enumerate(stages, start=1):
            down = None if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                          nn.BatchNorm2d(cout))
            setattr(self, f"layer{k}", nn.Sequential(BasicBlock(cin, cout, stride, down)))


def test_overfit_ten_images(tiny_data, tmp_path):
    # The runner's model (C4, RoIAlignV2, res5 + extra norm), trainer and metric on the first 10 embedded VOC2007
    # trainval images, scored on the same images. Measured: AP50 61.0 (AP 30.3) after 200 iterations; random
    # predictions score ~0 (the untrained model: 0.0).
    cfg = _cfg("roi_batch_size_per_image=64", "rpn_topk_test=[600,50]", preset="tiny")
    images = VOCDetection(tiny_data / "VOCdevkit", "2007", "trainval", detection_sample, image_format="tensor",
                          first=10)
    torch.manual_seed(0)
    model = trainer.prepare(c4.build_faster_rcnn_c4(MiniResNet(), cfg), torch.device("cpu"))
    settings = trainer.TrainSettings(max_iters=200, base_lr=0.02, steps=(160,), warmup_iters=10,
                                     batch_size_per_device=2, num_workers=0, ckpt_every_iters=10**6)
    groups = data.orientation_groups([(a.width, a.height) for a in images.annotations])
    trainer.train(model, images, groups, settings, device=torch.device("cpu"), run_dir=tmp_path, config_hash="x",
                  log=RunLog(tmp_path), resume_from=None, desc="overfit")
    detections = trainer.predict(model, images, device=torch.device("cpu"), precision="fp32")
    voc_eval.write_results(tmp_path / "results", [a.image_id for a in images.annotations], detections)
    scores = voc_eval.evaluate(tmp_path / "results", images.annotations)
    assert scores.AP50 >= 50.0, scores


# ------------------------------------------------------------------ the tiny end-to-end run


RUN = ("max_iters=2", "trials=2", "test_images=4", "precise_bn_iters=1", "roi_batch_size_per_image=4", "device=cpu")


def _run_cfg(ckpt: Path, data_root: Path, out: Path, *extra: str) -> det_voc.DetVocConfig:
    # the tiny preset, shorter still: 2 trials of 2 iterations, 4 test images, 4 RoIs per train image instead of 16
    # (the res5 head runs once per RoI: most of an iteration's time; these tests check the run's plumbing)
    return load_config(det_voc.DetVocConfig, "tiny", [f"ckpt={ckpt}", f"data_root={data_root}", f"out_dir={out}",
                                                      *RUN, *extra], preset_dir=det_voc.PRESET_DIR)


@pytest.fixture(scope="module")
def tiny_run(ckpt, tiny_data, tmp_path_factory):
    """The tiny run killed (SIGKILL) at a random point after trial 1's first iteration (a checkpoint every
    iteration), mostly in its second one: the rerun (resume=auto) takes trial 0 from its scores file and continues
    trial 1 from its state. The --force rerun of :func:`test_tiny_run_table_row_skip_and_force` is the uninterrupted
    run it must equal."""
    out = tmp_path_factory.mktemp("det_voc")
    overrides = [f"ckpt={ckpt}", f"data_root={tiny_data}", f"out_dir={out}", *RUN, "ckpt_every_iters=1"]
    kill = kill_mid_run([sys.executable, "-m", "benchmarks.det_voc", "--preset", "tiny", *overrides],
                        out / "runs" / "det_voc", "*/trial*/latest.pth", writes=3,
                        window=per_write(0.75))  # 3/4 of trial 0's evaluation and trial 1's first iteration
    metrics = det_voc.run(_run_cfg(ckpt, tiny_data, out, "ckpt_every_iters=1"))  # resume=auto
    (record,) = load_records(out / "records")
    return metrics, record, out, kill


def test_tiny_run_record_trials_mean_and_std(tiny_run):
    metrics, record, _, _ = tiny_run
    details = record["details"]
    assert record["protocol"] == "det_voc" and record["dataset"] == "voc0712" and record["tiny"]
    assert set(metrics) == {"AP", "AP50", "AP75"}
    trials = details["trials"]
    assert [t["seed"] for t in trials] == [0, 1] and details["num_trials"] == 2
    for key in ("AP", "AP50", "AP75"):
        assert metrics[key] == pytest.approx(statistics.fmean(t[key] for t in trials))
        assert details["std"][key] == pytest.approx(statistics.stdev(t[key] for t in trials))
        assert all(0.0 <= t[key] <= 100.0 for t in trials)
    # the tiny preset's 2 images per step are 2 forward passes of 1 in one process (2 processes take one each)
    assert details["norm"] == "BatchNorm2d" and details["world_size"] == 1
    assert (details["batch_policy"], details["accumulate"]) == ("accumulate", 2)
    assert details["test_images"] == 4 and Path(details["loss_plot"]).is_file()
    assert all(math.isfinite(v) for t in trials for v in t["last_losses"].values())


def test_tiny_run_resumed_and_rescored_from_its_results_files(tiny_run):
    _, record, out, kill = tiny_run
    assert not temp_files(out / "runs" / "det_voc"), kill  # a write the kill cut short was cleaned up
    for trial in record["details"]["trials"]:  # each iteration logged once, by the killed run or the resumed one
        log = Path(trial["loss_plot"]).with_name("log.jsonl").read_text().splitlines()
        assert [json.loads(r)["step"] for r in log] == [1, 2], kill
    trial0 = record["details"]["trials"][0]
    results = Path(trial0["results_dir"])
    assert len(list(results.glob("comp4_det_test_*.txt"))) == 20
    test_set = VOCDetection(Path(record["config"]["data_root"]) / "VOCdevkit", "2007", "test", first=4)
    rescored = voc_eval.evaluate(results, test_set.annotations)
    assert rescored.metrics() == pytest.approx({k: trial0[k] for k in ("AP", "AP50", "AP75")})


def test_tiny_run_table_row_skip_and_force(tiny_run, ckpt, tiny_data, capsys, trained_steps):
    metrics, record, out, kill = tiny_run
    rendered = render_markdown([record])
    std = record["details"]["std"]  # two trials: the mean and its sample std
    assert (f"| random-init_resnet18 † | tiny | {metrics['AP']:.2f} ± {std['AP']:.2f} | "
            f"{metrics['AP50']:.2f} ± {std['AP50']:.2f} |") in rendered
    capsys.readouterr()
    assert det_voc.run(_run_cfg(ckpt, tiny_data, out)) == pytest.approx(metrics)
    assert "skip det_voc" in capsys.readouterr().out
    logs = [Path(t["loss_plot"]).with_name("log.jsonl") for t in record["details"]["trials"]]
    assert [trained_steps(log, "loss") for log in logs] == [[1, 2], [1, 2]]
    states = sorted((out / "runs" / "det_voc").glob("*/trial*/latest.pth"))
    resumed = [safe_load(path)["modules"]["model"] for path in states]
    started = time.time()
    again = det_voc.run(_run_cfg(ckpt, tiny_data, out, "force=true"))
    # retrained from scratch, uninterrupted: the same seeds give the same numbers and weights as the killed run
    assert again == metrics, kill
    assert len(states) == 2 and not any(unequal_tensors(safe_load(path)["modules"]["model"], weights)
                                        for path, weights in zip(states, resumed, strict=True)), kill
    for log in logs:  # every iteration of every trial trained again (finished trials are not kept under --force)
        assert trained_steps(log, "loss", since=started) == trained_steps(log, "loss") == [1, 2]
    assert "resumed from" not in capsys.readouterr().out
    assert len(load_records(out / "records")) == 1


# ------------------------------------------------------------------ rehearsal


def test_rehearsal_is_one_process_of_8xb2_two_iterations_one_trial_first_test_images(ckpt, tiny_data, tmp_path,
                                                                                      monkeypatch, trained_steps):
    # the tiny preset as if it were an 8xb2 preset of 2 trials and 5 precise-BN iterations (4 RoIs per image: cost)
    cfg = dataclasses.replace(_run_cfg(ckpt, tiny_data, tmp_path, "rehearsal=true", "global_batch_size=16",
                                       "batch_size_per_device=2", "max_iters=20", "test_images=0",
                                       "precise_bn_iters=5"), preset="tiny_8xb2")
    batches, precise_bn_iters = [], []

    def counting(model, device):  # the trainer's forward passes in training (one process: no DDP)
        def forward(images, targets):
            batches.append(len(images))
            return model(images, targets)
        return forward

    def precise_bn(*args, num_iters, **kwargs):
        precise_bn_iters.append(num_iters)
        return real_precise_bn(*args, num_iters=num_iters, **kwargs)

    real_precise_bn = trainer.precise_bn
    monkeypatch.setattr(trainer.training, "wrap_ddp", counting)
    monkeypatch.setattr(trainer, "precise_bn", precise_bn)
    metrics = det_voc.run(cfg)
    (record,) = load_records(tmp_path / "records")
    details, summary = record["details"], record["details"]["rehearsal"]
    # one process of 8 x 2: 2 images per iteration, no accumulation; STEPS iterations of one trial, the schedule's
    # first learning rates (warm-up 2 iterations from 0.001 x 0.02); precise BN cut to STEPS iterations
    assert batches == [cfg.batch_size_per_device] * rehearsal.STEPS and precise_bn_iters == [rehearsal.STEPS]
    assert (details["accumulate"], details["batch_policy"], details["num_trials"]) == (1, "recipe", 1)
    log = tmp_path / "runs" / "det_voc"
    (log,) = log.glob("*/trial0/log.jsonl")
    assert trained_steps(log, "loss") == [1, 2] and not list(log.parent.parent.glob("trial1"))
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([0.02 * 0.001, 0.02 * (0.001 * 0.5 + 0.5)])
    # the first EVAL_IMAGES VOC2007 test images: their results files, rescored to the record's numbers
    test_set = VOCDetection(tiny_data / "VOCdevkit", "2007", "test", first=rehearsal.EVAL_IMAGES)
    results = Path(details["trials"][0]["results_dir"])
    assert details["test_images"] == rehearsal.EVAL_IMAGES and len(list(results.glob("comp4_det_test_*.txt"))) == 20
    ids = [line.split()[0] for f in results.glob("*.txt") for line in f.read_text().splitlines()]
    assert sorted(ids) == sorted([a.image_id for a in test_set.annotations] * 100)  # score threshold 0: 100 each
    assert voc_eval.evaluate(results, test_set.annotations).metrics() == pytest.approx(metrics)
    assert record["rehearsal"] is True
    assert summary["steps"] == 2 and summary["images_per_step"] == 2 and summary["reference_world"] == 8
    assert summary["eval_images"] == rehearsal.EVAL_IMAGES
    assert summary["full_steps"] == 20 * 2  # max_iters x trials
    assert summary["full_eval_images"] == 2 * math.ceil(rehearsal.REAL_SPLIT_IMAGES["voc07/test"] / 8)
    assert summary["full_run_s"] > 0
    with pytest.raises(ValueError, match="rehearsal runs the native engine"):
        det_voc.check_inputs(dataclasses.replace(cfg, engine="detectron2"))
