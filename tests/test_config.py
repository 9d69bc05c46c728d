"""Config strictness: presets, overrides, type checks, inheritance, identity hash."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from byol_bench.config import ConfigError, config_hash, load_config, opt, parse_args, to_dict


@dataclass(frozen=True)
class Solver:
    tol: float = opt(1e-4, "stopping tolerance")
    max_iter: int = opt(100, "iteration cap")


@dataclass(frozen=True)
class Example:
    lr: float = opt(0.1, "learning rate")
    epochs: int = opt(10, "epochs", positive=True)
    name: str = opt("x", "name")
    layers: tuple[str, ...] = opt(("feat5",), "layers")
    costs: tuple[float, ...] = opt((1.0,), "costs")
    ks: tuple[int, ...] = opt((1,), "ks")
    low_shot: bool = opt(False, "run low-shot")
    ckpt: str | None = opt(None, "checkpoint path")
    out_dir: str = opt("out", "output folder", identity=False)
    solver: Solver = opt(Solver(), "solver settings")


def test_defaults_and_overrides_are_typed():
    cfg = load_config(Example, overrides=["lr=0.5", "epochs=3", "layers=feat1,feat2", "solver.tol=1e-6",
                                          "costs=[1, 0.5]", "low_shot=true", "ckpt=a.pth", "ks=1,2,96"])
    assert cfg.lr == 0.5 and cfg.epochs == 3 and cfg.layers == ("feat1", "feat2")
    assert cfg.solver == Solver(tol=1e-6, max_iter=100)
    assert cfg.costs == (1.0, 0.5) and cfg.low_shot is True and cfg.ckpt == "a.pth" and cfg.ks == (1, 2, 96)
    assert isinstance(cfg.lr, float) and to_dict(cfg)["layers"] == ["feat1", "feat2"]


def test_config_is_frozen():
    cfg = load_config(Example)
    with pytest.raises(AttributeError):
        cfg.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("override, needle", [
    ("lrr=0.1", "unknown key 'lrr'"),
    ("solver.tolerance=1", "unknown key 'solver.tolerance'"),
    ("epochs=1.5", "epochs=1.5 must be of type int"),
    ("lr=fast", "lr='fast' must be of type float"),
    ("low_shot=3", "must be of type bool"),
    ("solver=3", "is a section"),
    ("noequals", "not key=value"),
    ("lr=nan", "lr=nan must be a finite number"),
    ("lr=.inf", "lr=inf must be a finite number"),
    ("lr=-0.1", "lr=-0.1 must be at least 0"),
    ("epochs=0", "epochs=0 must be positive"),
    ("ks=1,-2", "ks=-2 must be at least 0"),
    ("costs=[1, nan]", "costs=nan must be a finite number"),
    ("solver.tol=-1e-4", "solver.tol=-0.0001 must be at least 0"),
])
def test_bad_overrides_are_named(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        load_config(Example, overrides=[override])


def test_unknown_key_lists_valid_keys(tmp_path):
    (tmp_path / "p.yaml").write_text("lr: 0.2\nbogus: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(Example, tmp_path / "p.yaml")
    assert "bogus" in str(err.value) and "valid keys: lr, epochs" in str(err.value)
    assert str(tmp_path / "p.yaml") in str(err.value)


def test_preset_inheritance_one_level(tmp_path):
    (tmp_path / "base.yaml").write_text("lr: 0.2\nepochs: 5\nsolver: {tol: 0.001}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nepochs: 7\nsolver: {max_iter: 3}\n")
    cfg = load_config(Example, "child", overrides=["name=y"], preset_dir=tmp_path)
    assert (cfg.lr, cfg.epochs, cfg.name) == (0.2, 7, "y")
    assert cfg.solver == Solver(tol=0.001, max_iter=3)
    (tmp_path / "grandchild.yaml").write_text("_base_: child.yaml\n")
    with pytest.raises(ConfigError, match="one level"):
        load_config(Example, "grandchild", preset_dir=tmp_path)


def test_unknown_preset_lists_known(tmp_path):
    (tmp_path / "tiny.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match="valid: tiny"):
        load_config(Example, "huge", preset_dir=tmp_path)


def test_parse_args_flags_and_overrides(tmp_path):
    (tmp_path / "tiny.yaml").write_text("epochs: 2\n")
    cfg = parse_args(Example, ["--preset", "tiny", "--ckpt", "m.pth", "--low-shot", "--out-dir=o", "lr=0.3"],
                     preset_dir=tmp_path)
    assert (cfg.epochs, cfg.ckpt, cfg.low_shot, cfg.out_dir, cfg.lr) == (2, "m.pth", True, "o", 0.3)
    with pytest.raises(ConfigError, match="unknown option '--nope'"):
        parse_args(Example, ["--nope", "1"], preset_dir=tmp_path)


def test_help_lists_fields(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(Example, ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "lr (float, default 0.1): learning rate" in out and "solver.tol" in out


def test_config_hash_ignores_non_identity_fields():
    a = load_config(Example, overrides=["out_dir=a"])
    b = load_config(Example, overrides=["out_dir=b"])
    c = load_config(Example, overrides=["lr=0.3"])
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert len(config_hash(a)) == 12
