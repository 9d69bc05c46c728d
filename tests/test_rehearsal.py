"""Rehearsals (``rehearsal=true``, byol_bench.rehearsal): the reference world, the cut, the clock, and that a
rehearsal record never reaches a results table."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from byol_bench import rehearsal
from byol_bench.config import config_hash, load_config
from byol_bench.records import load_records, make_record, write_record
from byol_bench.tables import records_frame, render_csv, render_markdown, render_summary

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"


def _record(value: float, *, rehearsal_run: bool, created: str) -> dict:
    record = make_record(
        protocol="linear_avgpool", dataset="imagenet", model="byol",
        preset="linear-avgpool_resnet50_8xb32-steplr-100e_in1k",
        metrics={"top1": value}, config={"rehearsal": rehearsal_run}, config_hash="rehearse0001" if rehearsal_run
        else "result000001",
        checkpoint={"path": "byol.pth", "sha256": "c" * 64, "format": "torchvision", "arch": "resnet50",
                    "encoder": "online"},
        seeds={"seed": 0}, batch_size_per_device=32, wall_time_s=1.0, tiny=False, rehearsal=rehearsal_run,
        provenance={"world_size": 1, "git_commit": "x", "versions": {}, "device": "cpu"})
    record["created"] = created
    return record


def test_a_rehearsal_record_never_reaches_a_table(tmp_path):
    result = _record(71.25, rehearsal_run=False, created="2026-01-01T00:00:00+0000")
    rehearsed = _record(0.39, rehearsal_run=True, created="2026-06-01T00:00:00+0000")  # newer: would win a cell
    alone = render_markdown([rehearsed])
    assert "0.39" not in alone and "| byol" not in alone
    assert "1 rehearsal record(s) left out" in alone
    both = render_markdown([result, rehearsed])
    assert "71.25" in both and "0.39" not in both
    assert "0.39" not in render_csv([result, rehearsed])
    summary = render_summary([result, rehearsed], [("linear_avgpool", result["preset"], 10.0, "ok")])
    assert "71.25" in summary and "0.39" not in summary
    frame = records_frame([result, rehearsed])  # the flat export of every record says which is which
    assert frame.set_index("value").loc[0.39, "rehearsal"] and not frame.set_index("value").loc[71.25, "rehearsal"]
    # and through the CLI, from the files
    write_record(result, tmp_path / "records")
    write_record(rehearsed, tmp_path / "records")
    out = subprocess.run([sys.executable, "scripts/make_tables.py", "--records", str(tmp_path / "records")],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "71.25" in out and "0.39" not in out and "rehearsal record(s) left out" in out


def test_version_1_records_read_as_no_rehearsal():
    raw = [json.loads(p.read_text()) for p in sorted((GOLDEN / "records").glob("*.json"))]
    assert raw and all(r["schema_version"] == 1 and "rehearsal" not in r for r in raw)
    assert all(r["schema_version"] == 2 and r["rehearsal"] is False for r in load_records(GOLDEN / "records"))


def test_rehearsal_enters_the_config_hash_only_when_set():
    from benchmarks.linear.avgpool import PRESET_DIR, LinearAvgpoolConfig

    preset = "linear-avgpool_resnet50_8xb32-steplr-100e_in1k"
    plain = load_config(LinearAvgpoolConfig, preset, preset_dir=PRESET_DIR)
    rehearsed = load_config(LinearAvgpoolConfig, preset, ["rehearsal=true"], preset_dir=PRESET_DIR)
    golden = json.loads((GOLDEN / "config_hashes.json").read_text())[f"linear_avgpool/{preset}"]["hash"]
    assert config_hash(plain) == golden != config_hash(rehearsed)


@pytest.mark.parametrize("preset, world", [
    ("linear-mhead_resnet50_8xb32-steplr-90e_in1k", 8), ("resnet50_grid9_4xb64-steplr-20e_in1k-1pct", 4),
    ("byol_resnet50_16xb256-coslr-200e_in1k", 16), ("fcn_r50-d8_4xb2-40k_cityscapes-769x769", 4),
    ("mask-rcnn_resnet50-fpn_8xb2-ms-1x_coco", 8)])
def test_reference_world_comes_from_the_preset_name(preset, world):
    assert rehearsal.reference_world(preset) == world


def test_a_preset_name_without_a_world_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"<N>xb<B>"):
        rehearsal.reference_world("my-probe")


def test_the_cut_takes_the_first_images_and_names_a_too_small_split():
    data = list(range(10))
    assert list(rehearsal.first(data, 4, "train")) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"train: 10 images, a rehearsal of this preset needs 64.*--real-size"):
        rehearsal.first(data, 64, "train")
    assert list(rehearsal.first_eval(data)) == data[:rehearsal.EVAL_IMAGES]
    assert list(rehearsal.first_eval(data[:3])) == data[:3]  # an evaluation takes what there is


def test_clock_extrapolates_from_the_steady_step():
    clock = rehearsal.Clock(torch.device("cpu"))
    clock.steps = [5.0, 2.0]  # start-up, steady
    clock.eval_s, clock.eval_images = 4.0, 8
    summary = clock.summary(images_per_step=32, reference_world=8, full_steps=1000, full_eval_images=100)
    assert summary["step_s"] == 2.0 and summary["first_step_s"] == 5.0 and summary["images_per_s"] == 16.0
    assert summary["full_run_s"] == 2.0 * 1000 + 0.5 * 100
    assert summary["full_run_device_hours"] == round(2050 * 8 / 3600, 2)


def _script(name: str):
    """A script of scripts/ as a module (registered first: its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_rehearse_plans_every_full_preset_and_gpu_check_names_real_ones():
    rehearse = _script("rehearse")
    planned = {(protocol, preset): skip for protocol, _, preset, skip in rehearse.plan("")}
    on_disk = {(p.parent.name, p.stem) for p in (REPO / "configs").glob("*/*.yaml") if not p.stem.startswith("tiny")}
    assert set(planned) == on_disk
    covered = {preset for (protocol, preset), skip in planned.items() if skip}
    assert covered and all(p.startswith("resnet50_head") for p in covered)  # semi_sup's single cells only
    assert set(rehearse.families([p for (_, p), skip in planned.items() if not skip])) == {
        "imagenet", "inat18", "places205", "voc2007", "voc2012", "coco", "cityscapes"}
    assert len(rehearse.plan(_script("gpu_check").GPU_REHEARSAL)) == 4
    with pytest.raises(ValueError, match="no full preset"):
        rehearse.plan("det_coco:mask-rcnn-typo")
