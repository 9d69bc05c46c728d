"""Adapters: every intake layout converts exactly, every export round-trips, malformed input fails loudly."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from adapters import (
    EXPORTS,
    FORMATS,
    detect_format,
    from_detectron2,
    load_backbone,
    read_checkpoint,
    to_detectron2,
    to_torchvision,
    write_export,
)
from adapters.__main__ import main
from adapters.resnet_keys import format_detectron2, format_torchvision, parse_detectron2, parse_torchvision
from byol_bench.backbone import build_resnet
from byol_bench.checkpoint import CheckpointError, sha256_file
from byol_bench.cli import main_guard

REPO = Path(__file__).resolve().parents[1]


def random_trunk(arch: str, seed: int) -> dict[str, torch.Tensor]:
    """A random ResNet trunk (no fc) whose BN statistics and counters are random too, so nothing is left at a
    default value that a buggy conversion could reproduce by accident."""
    torch.manual_seed(seed)
    state = build_resnet(arch).state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif key.endswith("running_mean") or key.endswith("bn1.bias"):
            value.normal_()
        elif key.endswith("num_batches_tracked"):
            value.fill_(seed + 7)
    return {key: value for key, value in state.items() if not key.startswith("fc.")}


def _head(*names: str) -> dict[str, torch.Tensor]:
    """A stand-in projector/predictor/neck: two linear layers and a BN, per name prefix."""
    out: dict[str, torch.Tensor] = {}
    for name in names:
        out.update({f"{name}.0.weight": torch.randn(8, 4), f"{name}.0.bias": torch.randn(8),
                    f"{name}.1.weight": torch.ones(8), f"{name}.1.running_var": torch.ones(8),
                    f"{name}.2.weight": torch.randn(4, 8)})
    return out


def _prefixed(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    return {prefix + key: value for key, value in state.items()}


def _assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(actual) == list(expected) or set(actual) == set(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


@pytest.fixture(scope="module")
def online() -> dict[str, torch.Tensor]:
    return random_trunk("resnet18", seed=1)


@pytest.fixture(scope="module")
def target() -> dict[str, torch.Tensor]:
    return random_trunk("resnet18", seed=2)


def _sequential(trunk: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state of ``nn.Sequential(*list(resnet.children())[:-1])`` holding ``trunk``."""
    resnet = build_resnet("resnet18")
    resnet.load_state_dict(trunk, strict=False)
    return nn.Sequential(*list(resnet.children())[:-1]).state_dict()


# Each builder writes one framework's documented layout (docs/ADAPTERS.md gives the reference for each).
# Returns (checkpoint, format name auto-detection must give, has a target encoder, expected dropped groups).
LAYOUTS: dict[str, Callable[[dict, dict], tuple[Any, str, bool, set[str]]]] = {
    "byol-bench": lambda a, b: (
        {"format": "byol-bench", "format_version": 1, "arch": "resnet18",
         "online": {"backbone": a, "projector": _head("mlp"), "predictor": _head("mlp")},
         "target": {"backbone": b, "projector": _head("mlp")},
         "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "step": 3, "epoch": 1, "rng": {},
         "config": {"arch": "resnet18"}, "resolved": {}},
        "byol-bench", True, {"online.projector", "online.predictor", "target"}),
    "mmselfsup-0.x": lambda a, b: (
        {"meta": {"epoch": 200}, "state_dict": {
            **_prefixed("online_net.0.", a), **_head("online_net.1.mlp"), **_prefixed("backbone.", a),
            **_head("neck.mlp"), **_prefixed("target_net.0.", b), **_head("target_net.1.mlp"),
            **_head("head.predictor.mlp")}},
        "mmselfsup", True, {"online_net", "neck", "target_net", "head"}),
    "mmselfsup-1.x": lambda a, b: (
        {"meta": {"mmengine_version": "0.7.0"}, "state_dict": {
            **_prefixed("backbone.", a), **_head("neck.mlp"), **_head("head.predictor.mlp"),
            **_prefixed("target_net.module.0.", b), **_head("target_net.module.1.mlp"),
            "target_net.steps": torch.tensor(1000)}},
        "mmselfsup", True, {"neck", "head", "target_net"}),
    "mmselfsup-extracted": lambda a, b: (
        {"state_dict": dict(a), "author": "MMSelfSup"}, "mmselfsup-backbone", False, set()),
    "mmpretrain-classifier": lambda a, b: (
        {"meta": {}, "state_dict": {**_prefixed("backbone.", a), "head.fc.weight": torch.randn(10, 512),
                                    "head.fc.bias": torch.randn(10)}},
        "mmselfsup", False, {"head"}),
    "moco-v1": lambda a, b: (
        {"epoch": 200, "arch": "resnet18", "state_dict": {
            **_prefixed("module.encoder_q.", {**a, "fc.weight": torch.randn(128, 512), "fc.bias": torch.randn(128)}),
            **_prefixed("module.encoder_k.", {**b, "fc.weight": torch.randn(128, 512), "fc.bias": torch.randn(128)}),
            "module.queue": torch.randn(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)},
         "optimizer": {"state": {}, "param_groups": []}},
        "moco", True, {"module.encoder_q.fc", "module.encoder_k", "module.queue", "module.queue_ptr"}),
    "moco-v2": lambda a, b: (
        {"epoch": 800, "arch": "resnet18", "state_dict": {
            **_prefixed("module.encoder_q.", {**a, **_head("fc")}),
            **_prefixed("module.encoder_k.", {**b, **_head("fc")}),
            "module.queue": torch.randn(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}},
        "moco", True, {"module.encoder_q.fc", "module.encoder_k", "module.queue", "module.queue_ptr"}),
    "moco-v3": lambda a, b: (
        {"epoch": 100, "arch": "resnet18", "state_dict": {
            **_prefixed("module.base_encoder.", {**a, **_head("fc")}),
            **_prefixed("module.momentum_encoder.", {**b, **_head("fc")}), **_head("module.predictor")}},
        "mocov3", True, {"module.base_encoder.fc", "module.momentum_encoder", "module.predictor"}),
    "densecl": lambda a, b: (
        {"meta": {}, "state_dict": {
            **_prefixed("encoder_q.0.", a), **_head("encoder_q.1.mlp"), **_prefixed("encoder_k.0.", b),
            **_head("encoder_k.1.mlp"), **_prefixed("backbone.", a), "queue": torch.randn(128, 16),
            "queue2": torch.randn(128, 16), "queue_ptr": torch.zeros(1), "queue2_ptr": torch.zeros(1)}},
        "densecl", True, {"encoder_q.1", "encoder_k", "backbone", "queue", "queue2", "queue_ptr", "queue2_ptr"}),
    "vissl": lambda a, b: (
        {"phase_idx": 10, "iteration": 500, "type": "checkpoint", "classy_state_dict": {
            "train": True, "loss": {"prototypes": torch.randn(4)},
            "base_model": {"meta": {}, "model": {"trunk": _prefixed("_feature_blocks.", a),
                                                 "heads": _head("0.clf")}}}},
        "vissl", False, {"heads"}),
    "solo-learn": lambda a, b: (
        {"epoch": 400, "global_step": 10, "pytorch-lightning_version": "2.0.0", "hyper_parameters": {"lr": 1.0},
         "state_dict": {**_prefixed("backbone.", a), **_head("projector", "predictor", "momentum_projector"),
                        **_prefixed("momentum_backbone.", b), "classifier.weight": torch.randn(10, 512),
                        "classifier.bias": torch.randn(10)}},
        "solo-learn", True, {"projector", "predictor", "momentum_projector", "momentum_backbone", "classifier"}),
    "lightly": lambda a, b: (
        {"epoch": 10, "pytorch-lightning_version": "2.0.0", "state_dict": {
            **_prefixed("backbone.", _sequential(a)), **_head("projection_head.layers", "prediction_head.layers"),
            **_prefixed("backbone_momentum.", _sequential(b)), **_head("projection_head_momentum.layers")}},
        "lightly", True, {"projection_head", "prediction_head", "backbone_momentum", "projection_head_momentum"}),
    "plain-sequential": lambda a, b: (_sequential(a), "lightly", False, set()),
    "swav-hub": lambda a, b: (
        {**_prefixed("module.", a), **_head("module.projection_head"), "module.prototypes.weight": torch.randn(30, 8)},
        "hub", False, {"module.projection_head", "module.prototypes"}),
    "dino-hub": lambda a, b: (dict(a), "torchvision", False, set()),
    "barlowtwins-full": lambda a, b: (
        {"epoch": 1000, "model": {**_prefixed("module.backbone.", a), **_head("module.projector"),
                                  "module.bn.running_mean": torch.zeros(8)}, "optimizer": {}},
        "hub", False, {"module.projector", "module.bn"}),
    "torchvision-classifier": lambda a, b: (
        {**a, "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}, "torchvision", False, {"fc"}),
    "detectron2-pkl": lambda a, b: (to_detectron2(a), "detectron2", False, set()),
    "detectron2-trained-fpn": lambda a, b: (
        {"iteration": 90000, "model": {
            **_prefixed("backbone.bottom_up.", to_detectron2(a)["model"]), **_head("backbone.fpn_lateral2"),
            **_head("roi_heads.box_head")}},
        "detectron2", False, {"backbone.fpn_lateral2", "roi_heads"}),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_intake_layout_converts_exactly(layout: str, online: dict, target: dict, tmp_path: Path) -> None:
    ckpt, expected_format, has_target, dropped = LAYOUTS[layout](online, target)
    assert detect_format(ckpt, layout) == expected_format
    state, report = to_torchvision(ckpt, source=layout)
    _assert_same(state, online)
    assert report.format == expected_format and report.arch == "resnet18" and report.encoder == "online"
    assert report.tensors == len(online) and report.filled_num_batches_tracked == 0
    assert set(report.dropped) == dropped
    if has_target:
        target_state, target_report = to_torchvision(ckpt, encoder="target", source=layout)
        _assert_same(target_state, target)
        assert target_report.encoder == "target"
    else:
        with pytest.raises(CheckpointError, match=r"single encoder|no target encoder"):
            to_torchvision(ckpt, encoder="target", source=layout)


def test_timm_checkpoint_and_explicit_override(online: dict) -> None:
    """timm ResNets share torchvision's names, so a timm file auto-detects as torchvision; --from timm works."""
    timm_model = build_resnet("timm:resnet18")
    timm_model.load_state_dict(online, strict=False)
    state, report = to_torchvision(timm_model.state_dict(), fmt="timm", source="timm file")
    _assert_same(state, online)
    assert report.dropped == {"fc": 2}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_timm_resnet_names_equal_torchvision(arch: str) -> None:
    with torch.device("meta"):
        ours, theirs = build_resnet(arch).state_dict(), build_resnet(f"timm:{arch}").state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_key_spelling_round_trips(arch: str) -> None:
    with torch.device("meta"):
        keys = [key for key in build_resnet(arch).state_dict() if not key.startswith("fc.")]
    for key in keys:
        parsed = parse_torchvision(key)
        assert parsed is not None and format_torchvision(parsed) == key
        assert parse_detectron2(format_detectron2(parsed)) == parsed
    assert parse_torchvision("fc.weight") is None and parse_torchvision("layer1.0.bn1.weightx") is None


def test_detectron2_names_follow_the_reference_rules(online: dict) -> None:
    """PROTOCOLS.md B §5.0 examples, and numpy values with every BN buffer kept."""
    payload = to_detectron2(random_trunk("resnet50", seed=3))
    names = payload["model"]
    assert payload["matching_heuristics"] is True and isinstance(payload["__author__"], str)
    for name in ("stem.conv1.weight", "stem.conv1.norm.running_mean", "res4.2.conv2.norm.weight",
                 "res2.0.shortcut.weight", "res5.0.shortcut.norm.num_batches_tracked", "res5.2.conv3.weight"):
        assert isinstance(names[name], np.ndarray), name
    assert not any(name.startswith(("layer", "conv1", "bn1", "fc")) for name in names)
    _assert_same(from_detectron2(payload), random_trunk("resnet50", seed=3))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_export_round_trip_is_tensor_exact(arch: str, tmp_path: Path) -> None:
    """Our checkpoint -> every export format -> auto-detected intake -> the same tensors (dtypes included)."""
    trunk = random_trunk(arch, seed=4)
    source = tmp_path / "byol.pth"
    torch.save({"format": "byol-bench", "online": {"backbone": trunk, "projector": _head("mlp")}}, source)
    state, report = to_torchvision(read_checkpoint(source), source=str(source))
    for to in EXPORTS:
        out = tmp_path / ("export.pkl" if to == "detectron2" else f"{to}.pth")
        assert write_export(state, report, out, to)[0] == out
        model, back = load_backbone(out)
        assert back.arch == arch and back.sha256 == sha256_file(out), to
        _assert_same({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}, trunk)


def test_mm_export_layout(online: dict, tmp_path: Path) -> None:
    source = tmp_path / "in.pth"
    torch.save(online, source)
    state, report = to_torchvision(read_checkpoint(source), source=str(source))
    write_export(state, report, tmp_path / "mmseg.pth", "mmseg")
    saved = torch.load(tmp_path / "mmseg.pth", weights_only=True)
    assert set(saved) == {"state_dict", "meta"} and set(saved["state_dict"]) == set(online)
    assert saved["meta"]["source_format"] == "torchvision"


def test_detectron2_export_writes_config_fragment(tmp_path: Path) -> None:
    out = tmp_path / "r50.pkl"
    state, report = to_torchvision(random_trunk("resnet50", seed=5))
    config_path = write_export(state, report, out, "detectron2")[1]
    assert config_path == tmp_path / "r50.yaml"
    config = yaml.safe_load(config_path.read_text())
    assert config["INPUT"]["FORMAT"] == "RGB"
    assert config["MODEL"]["PIXEL_MEAN"] == [123.675, 116.28, 103.53]
    assert config["MODEL"]["PIXEL_STD"] == [58.395, 57.12, 57.375]
    assert config["MODEL"]["RESNETS"] == {"DEPTH": 50, "STRIDE_IN_1X1": False}
    assert config["MODEL"]["WEIGHTS"] == str(out.resolve())
    with pytest.raises(ValueError, match=r"\.pkl"):
        write_export(state, report, tmp_path / "r50.pth", "detectron2")
    # Python 2 era detectron2 files (protocol 2, latin-1 numpy payload) read through the restricted unpickler.
    legacy = tmp_path / "legacy.pkl"
    legacy.write_bytes(pickle.dumps(to_detectron2(state), protocol=2))
    _assert_same(to_torchvision(read_checkpoint(legacy))[0], state)


def test_load_backbone_reports_and_keeps_fc_random(online: dict, target: dict, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save(LAYOUTS["byol-bench"](online, target)[0], path)
    model, report = load_backbone(path, encoder="target")
    assert isinstance(model, nn.Module) and model.fc.weight.shape == (1000, 512)
    _assert_same({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}, target)
    assert report.sha256 == sha256_file(path) and report.source == str(path)
    model, report = load_backbone(path, arch="timm:resnet18")
    assert report.arch == "timm:resnet18" and torch.equal(model.conv1.weight, online["conv1.weight"])


def test_missing_num_batches_tracked_are_filled_and_reported(online: dict) -> None:
    without = {k: v for k, v in online.items() if not k.endswith("num_batches_tracked")}
    state, report = to_torchvision(without)
    assert report.filled_num_batches_tracked == 20 and set(state) == set(online)
    assert int(state["layer2.0.bn1.num_batches_tracked"]) == 0
    partial = {k: v for k, v in online.items() if k != "layer2.0.bn1.num_batches_tracked"}
    assert to_torchvision(partial)[1].filled_num_batches_tracked == 1


# ---------------------------------------------------------------------------------------------- malformed input


def test_truncated_and_text_files(online: dict, tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    torch.save(online, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_backbone(truncated)
    pkl = tmp_path / "truncated.pkl"
    pkl.write_bytes(pickle.dumps(to_detectron2(online))[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_backbone(pkl)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_backbone(text)
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone(tmp_path / "absent.pth")


def test_missing_stage_shape_mismatch_nan_and_arch_mismatch(online: dict) -> None:
    no_layer4 = {k: v for k, v in online.items() if not k.startswith("layer4.")}
    with pytest.raises(CheckpointError, match="no weights for layer4"):
        to_torchvision(no_layer4, source="cut.pth")
    wrong_shape = {**online, "conv1.weight": torch.randn(64, 3, 3, 3)}
    with pytest.raises(CheckpointError, match=r"cifar\.pth: shape mismatch for conv1\.weight"):
        to_torchvision(wrong_shape, source="cifar.pth")
    nan = {**online, "layer3.1.bn2.running_var": torch.full((256,), float("nan"))}
    with pytest.raises(CheckpointError, match=r"diverged\.pth: backbone\.layer3\.1\.bn2\.running_var contains NaN"):
        to_torchvision({"state_dict": _prefixed("backbone.", nan)}, source="diverged.pth")
    inf = {**online, "fc.weight": torch.randn(2, 2), "layer1.0.conv1.weight": torch.full((64, 64, 3, 3), np.inf)}
    with pytest.raises(CheckpointError, match=r"layer1\.0\.conv1\.weight contains NaN or Inf"):
        to_torchvision(inf)
    with pytest.raises(CheckpointError, match=r"r18\.pth: weights do not fit ResNet: missing keys \[layer1\.2"):
        to_torchvision(online, arch="resnet34", source="r18.pth")
    extra_block = {**online, **{"layer1.2." + k[len("layer1.1."):]: v for k, v in online.items()
                                if k.startswith("layer1.1.")}}
    with pytest.raises(CheckpointError, match="match no known ResNet"):
        to_torchvision(extra_block)


def test_unknown_layout_and_variants_are_refused(online: dict) -> None:
    with pytest.raises(CheckpointError, match=r"unrecognised checkpoint layout: top-level keys \['weights'\].*"
                                              r"known formats: byol-bench, vissl"):
        to_torchvision({"weights": {"encoder.conv.weight": torch.zeros(1)}}, source="odd.pth")
    with pytest.raises(CheckpointError, match="sample parameter names"):
        detect_format({"net.stem.weight": torch.zeros(1)}, "odd.pth")
    deep_stem = {**{k: v for k, v in online.items() if not k.startswith("conv1")}, "conv1.0.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"conv1\.0\.weight is not a plain torchvision-style ResNet parameter"):
        to_torchvision(deep_stem)
    with pytest.raises(CheckpointError, match="no online encoder in this moco checkpoint"):
        to_torchvision({"state_dict": _prefixed("module.", online)}, fmt="moco")
    with pytest.raises(ValueError, match="valid: auto, byol-bench"):
        to_torchvision(online, fmt="simclr")
    with pytest.raises(ValueError, match="valid: online, target"):
        to_torchvision(online, encoder="student")


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_pickle_carrying_code_is_refused_unexecuted(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"stem.conv1.weight": _RunsCode(marker)}}))
    with pytest.raises(CheckpointError, match=r"evil\.pkl: refused to unpickle: it references (posix|os|nt)\.system"):
        load_backbone(evil)
    assert not marker.exists()
    torch_evil = tmp_path / "evil.pth"
    torch.save({"x": _RunsCode(marker)}, torch_evil)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_backbone(torch_evil)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- command line


def test_cli_inspect_and_convert(online: dict, target: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "moco.pth.tar"
    torch.save(LAYOUTS["moco-v2"](online, target)[0], path)
    main(["inspect", str(path)])
    shown = capsys.readouterr().out
    assert "format   moco:" in shown and "arch     resnet18" in shown and sha256_file(path) in shown
    assert "in file: online, target" in shown and "module.encoder_k 125" in shown
    main(["convert", str(path), str(tmp_path / "target.pkl"), "--to", "detectron2", "--encoder", "target"])
    assert "wrote" in capsys.readouterr().out and (tmp_path / "target.yaml").is_file()
    _assert_same(from_detectron2(read_checkpoint(tmp_path / "target.pkl")), target)


def test_cli_error_is_one_line_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(SystemExit) as exited:
        main_guard(lambda: main(["inspect", str(text)]))
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and "notes.pth" in stderr


def test_every_format_is_documented() -> None:
    table = (REPO / "docs" / "ADAPTERS.md").read_text()
    for name in FORMATS:
        assert f"`{name}`" in table, name
