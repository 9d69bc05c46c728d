"""byol_bench.training: schedules at known iterations, resume files, precision policy, curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from byol_bench.checkpoint import CheckpointError
from byol_bench.runner_config import TrainerConfig
from byol_bench.training import (
    DivergenceError,
    DivergenceGuard,
    batch_per_device,
    cosine_lr,
    divergence,
    epoch_seed,
    find_resume,
    load_training_state,
    plot_log,
    poly_lr,
    resolve_precision,
    resume_point,
    save_training_state,
    step_lr,
    warmup_multistep_lr,
)


def test_step_lr_changes_at_the_first_iteration_of_each_milestone_epoch() -> None:
    lrs = step_lr(0.01, epochs=90, iters_per_epoch=4, milestones=(30, 60, 90))
    assert lrs.shape == (360,)
    assert lrs[0] == lrs[30 * 4 - 1] == 0.01  # epochs 0..29
    assert lrs[30 * 4] == pytest.approx(1e-3) and lrs[60 * 4 - 1] == pytest.approx(1e-3)
    assert lrs[60 * 4] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1e-4)  # 90 is never reached
    assert step_lr(30.0, 100, 1, (80, 60))[[59, 60, 80]] == pytest.approx([30.0, 3.0, 0.3])  # order-free


def test_warmup_multistep_lr_at_known_iterations() -> None:
    # detectron2 pascal_voc_R_50_C4_24k: lr 0.02, steps 18k/22k, linear warm-up 100 iterations from factor 0.001
    lrs = warmup_multistep_lr(0.02, 24000, steps=(18000, 22000), warmup_iters=100, warmup_factor=0.001)
    assert lrs[0] == pytest.approx(0.02 * 0.001)
    assert lrs[50] == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))  # detectron2: factor * (1 - t) + t, t = 50/100
    assert lrs[100] == lrs[17999] == pytest.approx(0.02)
    assert lrs[18000] == pytest.approx(0.002) and lrs[21999] == pytest.approx(0.002)
    assert lrs[22000] == pytest.approx(0.0002) and lrs[-1] == pytest.approx(0.0002)
    assert warmup_multistep_lr(0.1, 10, steps=(5,))[[0, 4, 5]] == pytest.approx([0.1, 0.1, 0.01])  # no warm-up


def test_poly_lr_matches_torch_polynomial_decay() -> None:
    # mmseg: poly power 0.9, min_lr 1e-4, per iteration; torch's PolynomialLR is the min_lr=0 case
    lrs = poly_lr(0.01, 200, power=0.9, min_lr=1e-4)
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[100] == pytest.approx((0.01 - 1e-4) * 0.5 ** 0.9 + 1e-4)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=200, power=0.9)
    torch_lrs = []
    for _ in range(200):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(poly_lr(0.01, 200, power=0.9), torch_lrs, rtol=1e-9, atol=1e-12)


def test_cosine_lr_formula() -> None:
    lrs = cosine_lr(1.6, 10)
    assert lrs[0] == 1.6 and lrs[5] == pytest.approx(0.8)
    assert lrs == pytest.approx([1.6 * 0.5 * (1 + np.cos(np.pi * i / 10)) for i in range(10)])


def test_precision_policy() -> None:
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="precision='fp16'"):
        resolve_precision("fp16", torch.device("cpu"))


def test_save_and_resume_restore_weights_optimizer_rng_and_refuse_other_configs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = nn.Linear(4, 3)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    head(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = tmp_path / "latest.pth"
    save_training_state(path, modules={"head": head}, optimizer=opt, done=3, config_hash="abc",
                        extra={"evals": [1.0]})
    expected_next = torch.rand(3)  # what the RNG gives right after the save

    fresh = nn.Linear(4, 3)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    epoch, extra = load_training_state(path, modules={"head": fresh}, optimizer=fresh_opt, config_hash="abc")
    assert (epoch, extra) == (3, {"evals": [1.0]})
    assert torch.equal(torch.rand(3), expected_next)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), head.state_dict().values(), strict=True))
    buffers = [s["momentum_buffer"] for s in fresh_opt.state_dict()["state"].values()]
    assert buffers and all(torch.equal(a, b["momentum_buffer"]) for a, b in
                           zip(buffers, opt.state_dict()["state"].values(), strict=True))
    with pytest.raises(CheckpointError, match="written with config abc, this run is xyz"):
        load_training_state(path, modules={"head": fresh}, optimizer=fresh_opt, config_hash="xyz")


def test_find_resume(tmp_path: Path) -> None:
    assert find_resume(tmp_path, "auto") is None and find_resume(tmp_path, "none") is None
    torch.save({"done": 1}, tmp_path / "latest.pth")
    assert find_resume(tmp_path, "auto") == tmp_path / "latest.pth"
    with pytest.raises(ValueError, match="continue with resume=auto"):
        find_resume(tmp_path, "none")
    with pytest.raises(CheckpointError, match=r"nope\.pth: checkpoint file not found"):
        find_resume(tmp_path, str(tmp_path / "nope.pth"))


def test_resume_point_is_the_one_rule(tmp_path: Path) -> None:
    def cfg(resume: str, force: bool = False) -> TrainerConfig:
        return TrainerConfig(resume=resume, force=force)

    assert resume_point(tmp_path, cfg("auto")) is None
    torch.save({"done": 1}, tmp_path / "latest.pth")
    assert resume_point(tmp_path, cfg("auto")) == tmp_path / "latest.pth"
    assert resume_point(tmp_path, cfg("auto", force=True)) is None  # --force trains afresh
    other = tmp_path / "other.pth"
    other.write_bytes(b"x")
    assert resume_point(tmp_path, cfg(str(other), force=True)) == other  # an explicit path is still taken
    for force in (False, True):
        with pytest.raises(ValueError, match="continue with resume=auto"):
            resume_point(tmp_path, cfg("none", force))
    (tmp_path / "last_checkpoint").write_text("iter_4.pth")  # an engine's own pointer
    assert resume_point(tmp_path, cfg("auto"), name="last_checkpoint") == tmp_path / "last_checkpoint"


@pytest.mark.parametrize("resume, force", [("none", False), ("auto", True), ("none", True)])
def test_an_unreadable_checkpoint_is_moved_aside_when_training_afresh(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                      resume: str, force: bool) -> None:
    torch.save({"weights": torch.zeros(1000)}, tmp_path / "latest.pth")
    good = (tmp_path / "latest.pth").read_bytes()
    (tmp_path / "latest.pth").write_bytes(good[: len(good) // 2])  # a write cut short (kill -9, full disk)
    (tmp_path / "latest.pth.unreadable").write_bytes(b"an earlier one")
    assert resume_point(tmp_path, TrainerConfig(resume=resume, force=force)) is None
    aside = tmp_path / "latest.pth.unreadable.1"  # named, never deleted nor overwritten
    assert not (tmp_path / "latest.pth").exists() and aside.read_bytes() == good[: len(good) // 2]
    assert (tmp_path / "latest.pth.unreadable").read_bytes() == b"an earlier one"
    assert capsys.readouterr().err == (f"warning: {tmp_path / 'latest.pth'} is unreadable (truncated or not a torch "
                                       f"checkpoint); moved it to {aside} and training afresh\n")


def test_an_unreadable_checkpoint_is_a_one_line_error_with_resume_auto(tmp_path: Path) -> None:
    (tmp_path / "latest.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match=r"latest\.pth: unreadable .* rerun with resume=none \(or --force\) to "
                                              "move it aside"):
        resume_point(tmp_path, TrainerConfig(resume="auto"))
    assert (tmp_path / "latest.pth").read_bytes() == b"PK\x03\x04 truncated"  # untouched


def test_divergence_guard_stops_at_the_first_bad_loss_naming_step_loss_lr_and_checkpoint(tmp_path: Path) -> None:
    assert divergence(2.0, None) is None and divergence(2.0e4, 2.0) is None
    assert divergence(2.1e4, 2.0) == "exceeds 10000 x the first loss (2)"
    assert divergence(float("nan"), None) == divergence(float("-inf"), 2.0) == "is not finite"
    latest = tmp_path / "latest.pth"
    guard = DivergenceGuard("probe", latest, every=3)
    guard.observe(torch.tensor(6.9), 1, 0.1)
    guard.observe(torch.tensor(5.0), 2, 0.1)  # read together with the next one: no error yet
    with pytest.raises(DivergenceError, match=r"^probe: training diverged at step 3: loss 1e\+13 exceeds 10000 x the "
                                              r"first loss \(6\.9\) \(lr 1e\+12\); stopped without a record, no "
                                              r"checkpoint was written; rerun with a lower lr$"):
        guard.observe(torch.tensor(1e13), 3, 1e12)
    torch.save({}, latest)
    guard = DivergenceGuard("det", latest, unit="iteration")
    guard.observe(0.5, 1, 0.02)
    with pytest.raises(DivergenceError, match=rf"iteration 2: loss nan is not finite .*{latest} is kept"):
        guard.observe(float("nan"), 2, 0.02)
    guard = DivergenceGuard("probe", None, every=100)
    guard.observe(torch.tensor(float("inf")), 7, 0.1)
    with pytest.raises(DivergenceError, match="step 7: loss inf is not finite"):
        guard.flush()  # an epoch's end reads what is pending


def test_weights_that_are_not_finite_never_replace_the_last_good_checkpoint(tmp_path: Path) -> None:
    head = nn.Linear(4, 3)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    path = tmp_path / "latest.pth"
    save_training_state(path, modules={"head": head}, optimizer=opt, done=1, config_hash="abc")
    before = path.read_bytes()
    with torch.no_grad():
        head.weight[0, 0] = float("nan")
    with pytest.raises(DivergenceError, match=rf"the head weights are not finite .* {path} keeps the last good"):
        save_training_state(path, modules={"head": head}, optimizer=opt, done=2, config_hash="abc")
    assert path.read_bytes() == before
    save_training_state(path, modules={"head": head}, optimizer=opt, done=2, config_hash="abc", diverged=True)
    assert load_training_state(path, modules={"head": nn.Linear(4, 3)}, optimizer=opt, config_hash="abc")[0] == 2


def test_plot_log(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    rows = [{"epoch": 1, "top1": 10.0}, {"step": 3}, {"epoch": 2, "top1": 20}]
    log.write_text("\n".join(json.dumps(r) for r in rows))
    assert plot_log(log, tmp_path / "val.png", "epoch", ["top1"], "val").is_file()
    assert plot_log(log, tmp_path / "none.png", "epoch", ["loss"], "none") is None


def test_global_batch_per_process_and_epoch_seeds() -> None:
    assert batch_per_device(4096, 8) == 512 and batch_per_device(256, 1) == 256
    with pytest.raises(ValueError, match="global_batch_size=256 does not divide by the 3 processes"):
        batch_per_device(256, 3)
    seeds = {epoch_seed(0, e, r) for e in range(50) for r in range(8)}
    first = epoch_seed(3, 7, 1)
    torch.manual_seed(123)
    np.random.seed(123)  # the global generators do not enter: a resumed process gets the same seed
    assert len(seeds) == 400 and epoch_seed(3, 7, 1) == first != epoch_seed(4, 7, 1)


def test_plot_bars_draws_every_class_and_marks_missing_ones(tmp_path: Path) -> None:
    from byol_bench.training import plot_bars

    png = plot_bars({"cat": 80.0, "dog": None, "bus": 12.5}, tmp_path / "bars" / "iou.png", "IoU per class", "IoU (%)")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
