"""Semi-supervised fine-tuning (benchmarks.semi_sup): lr per parameter group through the decays, weight decay on
every parameter, the labelled subsets (generated, SimCLR lists, bad lists), the one-pass grid against a cell trained
alone, resume of an interrupted grid, reproducible records, best-cell selection, the tiny run and an overfit check."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_support import run_module  # tests/ is on sys.path
from kill_support import kill_mid_run, seconds_per_step, temp_files, unequal_tensors

import benchmarks.semi_sup.runner as semi
from byol_bench import rehearsal, training
from byol_bench.backbone import build_resnet
from byol_bench.checkpoint import safe_load, sha256_file
from byol_bench.classification import labelled_subset, open_split, test_transform
from byol_bench.config import config_hash, load_config
from byol_bench.datasets import DatasetError
from byol_bench.records import load_records
from byol_bench.tables import render_markdown

FULL = {"imagenet_1pct": "resnet50_grid9_4xb64-steplr-20e_in1k-1pct",
        "imagenet_10pct": "resnet50_grid9_4xb64-steplr-20e_in1k-10pct"}


def _cfg(ckpt: Path, data: Path, out: Path, *extra: str, preset: str = "tiny") -> semi.SemiSupConfig:
    return load_config(semi.SemiSupConfig, preset, [f"ckpt={ckpt}", f"data_root={data}", f"out_dir={out}", *extra],
                       preset_dir=semi.PRESET_DIR)


def _net(num_classes: int = 10) -> semi.FineTuneNet:
    return semi.FineTuneNet(build_resnet("resnet18"), num_classes, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- optimizer and schedule


@pytest.mark.parametrize(("dataset", "weight_decay"), [("imagenet_1pct", 5e-4), ("imagenet_10pct", 1e-4)])
def test_lr_per_group_at_known_epochs(dataset, weight_decay):
    cfg = load_config(semi.SemiSupConfig, FULL[dataset], preset_dir=semi.PRESET_DIR)
    assert cfg.dataset == dataset and cfg.weight_decay == weight_decay and cfg.deterministic
    assert (cfg.epochs, cfg.milestones, cfg.gamma, cfg.global_batch_size) == (20, (12, 16), 0.2, 256)
    assert [(lr, m) for lr in cfg.base_lrs for m in cfg.head_lr_mults] == [
        (lr, m) for lr in (0.1, 0.01, 0.001) for m in (1, 10, 100)]
    model = _net()
    optimizer = semi.build_optimizer(model, 0.01, 10.0, cfg.momentum, cfg.weight_decay)
    trunk, head = optimizer.param_groups
    assert [id(p) for p in head["params"]] == [id(model.head.weight), id(model.head.bias)]
    lrs = training.step_lr(0.01, cfg.epochs, 3, cfg.milestones, cfg.gamma)
    for epoch, expected in {0: 0.01, 11: 0.01, 12: 0.002, 15: 0.002, 16: 4e-4, 19: 4e-4}.items():
        for i in (epoch * 3, epoch * 3 + 2):
            semi.set_lr(optimizer, float(lrs[i]))
            assert trunk["lr"] == pytest.approx(expected) and head["lr"] == pytest.approx(10 * expected)


def test_each_single_cell_preset_is_one_cell_of_its_grid_preset():
    """The 18 single-cell presets (the seed's file names) are the grids' cells and nothing else: the same config as
    their grid preset but for the cell's two lrs, and the same cell state key, so rehearsing (and running) the two
    grid presets covers them."""
    singles = sorted(p.stem for p in semi.PRESET_DIR.glob("resnet50_head*.yaml"))
    assert len(singles) == 18
    covered = set()
    for name in singles:
        cell = load_config(semi.SemiSupConfig, name, preset_dir=semi.PRESET_DIR)
        grid = load_config(semi.SemiSupConfig, FULL[cell.dataset], preset_dir=semi.PRESET_DIR)
        (lr,), (mult,) = cell.base_lrs, cell.head_lr_mults
        assert lr in grid.base_lrs and mult in grid.head_lr_mults, name
        assert name == semi.reference_config(cell.dataset, lr, mult)  # the file is named for its cell
        assert dataclasses.replace(cell, preset=grid.preset, base_lrs=grid.base_lrs,
                                   head_lr_mults=grid.head_lr_mults) == grid, name
        one = {"preset": "", "base_lrs": (lr,), "head_lr_mults": (mult,)}  # make_cell's key: shared state
        assert config_hash(dataclasses.replace(cell, **one)) == config_hash(dataclasses.replace(grid, **one))
        covered.add((cell.dataset, lr, mult))
    assert covered == {(d, lr, m) for d in FULL for lr in (0.1, 0.01, 0.001) for m in (1.0, 10.0, 100.0)}


def test_weight_decay_on_every_parameter():
    """A zero loss leaves only the decay: every tensor (BN weights and biases, the head's bias) shrinks by lr*wd."""
    model = _net()
    optimizer = semi.build_optimizer(model, 0.1, 10.0, 0.9, 5e-4)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    semi.set_lr(optimizer, 0.1)
    (0.0 * model(torch.randn(2, 3, 32, 32)).sum()).backward()
    optimizer.step()
    for name, p in model.named_parameters():
        lr = 1.0 if name.startswith("head.") else 0.1
        torch.testing.assert_close(p.detach(), before[name] * (1 - lr * 5e-4), msg=name)
    assert any(".bn1." in n for n, _ in model.named_parameters())


def test_head_init_is_the_same_in_every_cell():
    a, b = _net(), _net()
    assert torch.equal(a.head.weight, b.head.weight) and torch.all(a.head.bias == 0)
    assert abs(float(a.head.weight.detach().std()) - 0.01) < 0.002


def test_best_cell_selection():
    def cell(top1, top5):
        return {"top1": top1, "top5": top5, "diverged_epoch": 2 if top1 is None else None}

    results = {"a": cell(10.0, 50.0), "b": cell(None, None), "c": cell(12.0, 40.0), "d": cell(12.0, 45.0),
               "e": cell(12.0, 45.0)}
    assert semi.best_cell(results) == "d"  # highest top-1; tie on top-1 -> top-5; full tie -> first in grid order
    assert semi.best_cell({"x": cell(None, None), "y": cell(0.0, 0.0)}) == "y"  # a diverged cell never wins
    with pytest.raises(training.DivergenceError, match=r"diverged in every cell of the grid \(x in epoch 2\)"):
        semi.best_cell({"x": cell(None, None)})
    assert semi.reference_config("imagenet_10pct", 0.001, 100.0) == "resnet50_head100_4xb64-steplr1e-3-20e_in1k-10pct"


# ---------------------------------------------------------------- labelled subsets


def test_generated_subset_is_class_balanced_seeded_and_reproducible(tiny_data):
    samples, info = labelled_subset(tiny_data, 0.10, seed=0, tiny=True)
    counts = torch.bincount(torch.tensor([label for _, label in samples]))
    assert counts.tolist() == [11] * 10 and info.kind == "generated" and info.images == 110
    assert (info.per_class_min, info.per_class_max) == (11, 11)
    assert all((tiny_data / "imagenet" / "train" / path).is_file() for path, _ in samples)
    assert all(path.split("/")[0] == sorted({p.split("/")[0] for p, _ in samples})[label] for path, label in samples)
    assert labelled_subset(tiny_data, 0.10, seed=0, tiny=True)[0] == samples
    other = labelled_subset(tiny_data, 0.10, seed=1, tiny=True)[0]
    assert other != samples and len(other) == 110
    one_pct, _ = labelled_subset(tiny_data, 0.01, seed=0, tiny=True)
    assert sorted(label for _, label in one_pct) == list(range(10))  # at least one image per class


def test_simclr_list_intake(tiny_data, tmp_path):
    train = tiny_data / "imagenet" / "meta" / "train.txt"
    picked = train.read_text().splitlines()[::50]  # a few files of every class, 'wnid/file label'
    simclr = tmp_path / "1percent.txt"
    simclr.write_text("".join(line.split()[0].split("/")[1] + "\n" for line in picked))
    label_map = tmp_path / "train_labeled.txt"
    label_map.write_text(train.read_text())
    samples, info = labelled_subset(tiny_data, 0.01, subset_list=str(simclr), label_map=str(label_map), tiny=True)
    assert samples == [(line.split()[0], int(line.split()[1])) for line in picked]
    assert info.kind == "simclr_list" and info.given_sha256 == sha256_file(simclr) and info.label_map == str(label_map)
    # the converted form ('wnid/file label', mmselfsup's train_1percent.txt) reads the same
    converted = tmp_path / "train_1percent.txt"
    converted.write_text("".join(line + "\n" for line in picked))
    again, info = labelled_subset(tiny_data, 0.01, subset_list=str(converted), tiny=True)
    assert again == samples and info.kind == "list"


def test_bad_subset_lists_name_the_file(tiny_data, tmp_path):
    lines = (tiny_data / "imagenet" / "meta" / "train.txt").read_text().splitlines()[::50]
    label_map = tmp_path / "train_labeled.txt"
    label_map.write_text("".join(line + "\n" for line in lines))

    def write(name, text):
        (tmp_path / name).write_text(text)
        return str(tmp_path / name)

    cases = [
        (write("outside.txt", "".join(f"{x}\n" for x in [*lines, "n01440764/not_there.JPEG 0"])),
         "", r"outside\.txt: 1 entries are not files under .*train"),
        (write("dupes.txt", "".join(f"{x}\n" for x in [*lines, lines[0]])), "", r"dupes\.txt: 1 duplicate entries"),
        (write("no_class.txt", "".join(f"{x}\n" for x in lines if not x.endswith(" 3"))), "",
         r"no_class\.txt: 1 classes have no image in the subset"),
        (write("simclr.txt", "".join(x.split()[0].split("/")[1] + "\n" for x in lines)),
         str(tmp_path / "missing_map.txt"), r"missing_map\.txt: label map not found"),
        (str(tmp_path / "simclr.txt"), "", r"simclr\.txt: a SimCLR list names files only; pass label_map"),
        (write("bad_name.txt", "n01440764/x y z\n"), "", r"bad_name\.txt:1: label 'z' is not an integer"),
    ]
    for subset_list, label_map_arg, message in cases:
        with pytest.raises(DatasetError, match=message):
            labelled_subset(tiny_data, 0.01, subset_list=subset_list, label_map=label_map_arg, tiny=True)


# ---------------------------------------------------------------- the grid: one pass, resume, reproducibility


SMALL = ("image_size=16", "test_resize=18", "epochs=3", "milestones=[2]", "global_batch_size=4", "eval_every_epochs=2",
         "base_lrs=[0.01,0.001]", "head_lr_mults=[10]")


def _small(ckpt, data, out, *extra):
    # the 1 % tiny grid cut to two cells at 16 px, 3 batches of (4, 4, 2) images per epoch: a short run for the flow
    # (the sizes do not matter there, the grid and state handling do; 16 px costs a quarter of 32 px's backbone
    # passes, most of them over the 250 validation images)
    return _cfg(ckpt, data, out, *SMALL, *extra)


def _cell_state(out: Path, name: str) -> Path:
    (path,) = (out / "runs" / "semi_sup" / "cells").glob(f"*-{name}/latest.pth")
    return path


def _comparable(record: dict) -> dict:
    """What two runs of one config must agree on: everything but times, paths and the grid mode."""
    details = {k: v for k, v in record["details"].items()
               if k not in ("train_time_s_this_invocation", "val_curve_plot", "subset", "grid", "preflight")}
    subset = {k: v for k, v in record["details"]["subset"].items() if k != "list_file"}
    return {"metrics": record["metrics"], "details": details, "subset": subset, "config_hash": record["config_hash"]}


@pytest.fixture(scope="module")
def grid_run(ckpt, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    metrics = semi.run(_small(ckpt, tiny_data, out))
    (record,) = load_records(out / "records")
    return metrics, record, out


@pytest.fixture(scope="module")
def alone_run(ckpt, tiny_data, tmp_path_factory):
    """One cell of the grid (lr 0.001) trained as its own job (a SLURM array task): its metrics, its one-cell record
    and the output folder, shared by the one-pass comparison and the interrupted grid, which continues in that
    folder (it adds the grid's record and the other cell; this cell's files stay as they are, which it checks)."""
    out = tmp_path_factory.mktemp("alone")
    metrics = semi.run(_small(ckpt, tiny_data, out, "base_lrs=[0.001]"))
    (record,) = load_records(out / "records")
    return metrics, record, out


def test_one_pass_cell_is_tensor_equal_to_the_cell_trained_alone(grid_run, alone_run):
    _, record, out = grid_run
    alone, alone_record, alone_out = alone_run
    grid_state = safe_load(_cell_state(out, "lr0.001_head10"))
    alone_state = safe_load(_cell_state(alone_out, "lr0.001_head10"))
    assert grid_state["done"] == alone_state["done"] == 3
    a, b = grid_state["modules"]["model"], alone_state["modules"]["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # BN running statistics included
    for key in ("momentum_buffer",):
        for sa, sb in zip(grid_state["optimizer"]["state"].values(), alone_state["optimizer"]["state"].values(),
                          strict=True):
            assert torch.equal(sa[key], sb[key])
    assert record["details"]["cells"]["lr0.001_head10"] == alone_record["details"]["cells"]["lr0.001_head10"]
    assert alone == {k: record["details"]["cells"]["lr0.001_head10"][k] for k in ("top1", "top5")}


def test_killed_grid_resumes_the_unfinished_cells_only(grid_run, alone_run, ckpt, tiny_data, capsys):
    """One cell finished as its own job (a SLURM array task: alone_run), then the grid, in the same folder, is
    killed (SIGKILL) at a random point of the other cell's epochs 2-3 (a state every epoch) and run again
    (resume=auto): the finished cell is not trained again, the other one continues from its state, and the record
    and that cell's weights are the uninterrupted grid's."""
    _, whole, grid_out = grid_run
    out = alone_run[2]
    finished = _cell_state(out, "lr0.001_head10")
    finished_sha = sha256_file(finished)
    (alone_log,) = (out / "runs" / "semi_sup").glob("*/log.jsonl")  # one cell's 3 epochs, logged at their ends
    overrides = [f"ckpt={ckpt}", f"data_root={tiny_data}", f"out_dir={out}", *SMALL, "ckpt_every_epochs=1"]
    cells = out / "runs" / "semi_sup" / "cells"
    kill = kill_mid_run([sys.executable, "-m", "benchmarks.semi_sup", "--preset", "tiny", *overrides], cells,
                        "*-lr0.01_head10/latest.pth",
                        window=2 * 3 * seconds_per_step(alone_log, "loss_lr0.001_head10"))  # epochs 2, 3 of 3 steps
    (killed_cell,) = cells.glob("*-lr0.01_head10")
    (killed_cell / ".latest.pth.k2j4h5g6.tmp").write_bytes(b"partial")  # as a kill during the state's write leaves
    capsys.readouterr()
    semi.run(_small(ckpt, tiny_data, out, "ckpt_every_epochs=1"))  # resume=auto
    printed = capsys.readouterr().out
    if "skip semi_sup" not in printed:  # (unless the kill came after the record)
        assert re.search(r"cell lr0\.01_head10: resumed from \S+ after epoch [123]\n", printed), (printed, kill)
        assert re.search(r"cell lr0\.001_head10: resumed from \S+ after epoch 3\n", printed), (printed, kill)
        assert not temp_files(cells), kill  # the cells' folders held by the rerun: interrupted writes removed
    assert sha256_file(finished) == finished_sha, kill  # the finished cell was not trained again
    (record,) = [r for r in load_records(out / "records") if len(r["details"]["cells"]) == 2]
    assert _comparable(record) == _comparable(whole), kill  # the same record as the uninterrupted grid's
    resumed, straight = (safe_load(_cell_state(o, "lr0.01_head10")) for o in (out, grid_out))
    assert resumed["done"] == straight["done"] == 3, kill
    assert not unequal_tensors(resumed["modules"]["model"], straight["modules"]["model"]), kill


def test_two_runs_give_identical_records_and_the_deterministic_flag(grid_run, ckpt, tiny_data, capsys,
                                                                     trained_steps):
    metrics, first, out = grid_run
    assert first["config"]["deterministic"] and first["details"]["deterministic"]
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
    (log_file,) = (out / "runs" / "semi_sup").glob("*/log.jsonl")
    cells = [f"loss_{name}" for name in first["details"]["cells"]]
    epochs = {cell: trained_steps(log_file, cell) for cell in cells}
    assert len(cells) == 2 and all(len(steps) == 3 for steps in epochs.values())
    # the same config again (--force: every cell from scratch; grid=sequential: one cell after the other)
    capsys.readouterr()
    started = time.time()
    assert semi.run(_small(ckpt, tiny_data, out, "force=true", "grid=sequential")) == metrics
    for cell in cells:  # every cell trained every epoch again; the log holds this run's epochs only
        assert trained_steps(log_file, cell, since=started) == trained_steps(log_file, cell) == epochs[cell]
    assert "resumed" not in capsys.readouterr().out
    (second,) = load_records(out / "records")
    assert _comparable(second) == _comparable(first)
    assert second["details"]["grid"] == "sequential"


# ---------------------------------------------------------------- the tiny preset end to end


def test_tiny_run_record_table_row_and_skip(ckpt, tiny_data, tmp_path, capsys):
    metrics = semi.run(_cfg(ckpt, tiny_data, tmp_path))
    (record,) = load_records(tmp_path / "records")
    details = record["details"]
    assert record["protocol"] == "semi_sup" and record["dataset"] == "imagenet_1pct" and record["tiny"]
    assert len(details["cells"]) == 9 and record["config"]["grid"] == "one_pass"
    best = details["best_cell"]["name"]
    assert best == max((c["top1"], c["top5"], -i, n) for i, (n, c) in enumerate(details["cells"].items())
                       if c["top1"] is not None)[3]
    assert metrics == {"top1": details["cells"][best]["top1"], "top5": details["cells"][best]["top5"]}
    assert all(c["val_curve"][-1]["epoch"] == 5 for c in details["cells"].values() if c["diverged_epoch"] is None)
    subset_file = Path(details["subset"]["list_file"])
    assert subset_file.is_file() and sha256_file(subset_file) == details["subset"]["list_sha256"]
    assert details["subset"]["kind"] == "generated" and details["train_images"] == 10
    rendered = render_markdown([record])
    cell = details["best_cell"]["reference_config"]  # the config column names the winning cell as the seed does
    assert f"| random-init_resnet18 † | {cell} | {metrics['top1']:.2f} | {metrics['top5']:.2f} |" in rendered
    capsys.readouterr()
    assert semi.run(_cfg(ckpt, tiny_data, tmp_path)) == metrics
    assert "skip semi_sup" in capsys.readouterr().out
    json.dumps(record)  # plain JSON (no NaN) even with diverged cells


def test_rehearsal_is_one_reference_process_two_steps_of_every_cell_and_the_first_val_images(
        ckpt, tiny_data, tmp_path, monkeypatch, capsys):
    # the tiny 1 % grid (three of its cells: the test's cost) named for a world of 8: one process's share of its
    # global batch 32 is 4 images a step
    cfg = dataclasses.replace(_cfg(ckpt, tiny_data, tmp_path, "rehearsal=true", "head_lr_mults=[10]"),
                              preset="tiny_8xb4")
    steps, scored = [], []
    real_step, real_evaluate = semi.train_step, semi.evaluate

    def counting_step(cell, images, labels, *args):
        steps.append((cell.name, len(labels)))
        return real_step(cell, images, labels, *args)

    def recording_evaluate(cells, loader, *args):
        scored.extend(images for images, _ in loader)
        return real_evaluate(cells, loader, *args)

    monkeypatch.setattr(semi, "train_step", counting_step)
    monkeypatch.setattr(semi, "evaluate", recording_evaluate)
    semi.run(cfg)
    (record,) = load_records(tmp_path / "records")
    details, summary = record["details"], record["details"]["rehearsal"]
    assert record["rehearsal"] is True and record["batch_size_per_device"] == 4
    names = ["lr0.1_head10", "lr0.01_head10", "lr0.001_head10"]  # grid order: each step, every cell in turn
    assert sorted(details["cells"]) == sorted(names)
    assert steps == [(name, 4) for _ in range(rehearsal.STEPS) for name in names]
    assert details["train_images"] == 8 and details["val_images"] == rehearsal.EVAL_IMAGES
    # every cell scored the first 8 val images once (one evaluation, at the end of the one epoch)
    val = open_split("imagenet", tiny_data, "val", test_transform(cfg.test_resize, cfg.image_size), tiny=True)
    assert torch.equal(torch.cat(scored), torch.stack([val.dataset[i][0] for i in range(rehearsal.EVAL_IMAGES)]))
    assert all([e["epoch"] for e in c["val_curve"]] == [1] for c in details["cells"].values())
    assert Path(details["subset"]["list_file"]).is_file() and Path(details["val_curve_plot"]).is_file()
    assert summary["steps"] == rehearsal.STEPS == len(summary["step_times_s"])  # a step: every cell's, one batch
    assert (summary["images_per_step"], summary["reference_world"], summary["eval_images"]) == (4, 8, 8 * 3)
    # the full run: 5 epochs of the 12,811-image 1 % subset at global batch 32; one evaluation of 50,000 / 8 images
    # by each of the three cells
    assert summary["full_steps"] == 5 * math.ceil(12_811 / 32)
    assert summary["full_eval_images"] == 3 * 50_000 // 8 and summary["full_run_s"] > 0
    # a single-cell rehearsal afterwards trains its cell again (the grid's rehearsal state is not resumed)
    steps.clear()
    capsys.readouterr()
    semi.run(dataclasses.replace(cfg, base_lrs=(0.01,), head_lr_mults=(10.0,)))
    assert steps == [("lr0.01_head10", 4)] * rehearsal.STEPS and "resumed" not in capsys.readouterr().out
    (single,) = [r for r in load_records(tmp_path / "records") if len(r["details"]["cells"]) == 1]
    assert single["details"]["rehearsal"]["steps"] == rehearsal.STEPS


def test_overfit_a_few_images(ckpt, tiny_data):
    """Train -> predict -> score on the same 16 images with the runner's train_step and evaluate: all right."""
    from torch.utils.data import DataLoader, Subset

    from adapters import load_backbone
    from byol_bench.classification import open_split, test_transform

    split = open_split("imagenet", tiny_data, "train", test_transform(37, 32), tiny=True)
    images = Subset(split.dataset, range(0, len(split.dataset), len(split.dataset) // 16)[:16])
    loader = DataLoader(images, batch_size=16)
    backbone, _ = load_backbone(ckpt)
    model = semi.FineTuneNet(backbone, split.num_classes, torch.Generator().manual_seed(0))
    optimizer = semi.build_optimizer(model, 0.01, 10.0, 0.9, 5e-4)
    cell = semi.Cell(0.01, 10.0, model, model, optimizer, None, Path("unused"), "k")
    batch, labels = next(iter(loader))
    for _ in range(60):
        semi.train_step(cell, batch, labels, 0.01, "fp32")
    (scores,) = semi.evaluate([cell], loader, "fp32", torch.device("cpu"))  # eval mode: BN running statistics
    assert scores["top1"] == 100.0, scores


def test_cli_errors_are_one_line(ckpt, tiny_data, tmp_path):
    simclr = tmp_path / "1percent.txt"
    simclr.write_text("n01440764_1.JPEG\n")
    base = [sys.executable, "-m", "benchmarks.semi_sup", "--preset", "tiny", "--data-root", str(tiny_data),
            "--out-dir", str(tmp_path)]
    cases = [
        (["--ckpt", str(tmp_path / "missing.pth")], "checkpoint file not found"),
        (["--ckpt", str(ckpt), f"subset_list={simclr}"], "train_labeled.txt: label map not found"),
        (["--ckpt", str(ckpt), "--preset", FULL["imagenet_1pct"]], "use a tiny preset"),
    ]
    for extra, needle in cases:  # in this process (cli_support: the real interpreter's path is tested elsewhere)
        result = run_module(base + extra)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and needle in result.stderr, result.stderr
        assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "records").exists()
