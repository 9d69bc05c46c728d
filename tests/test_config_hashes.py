"""Config hashes are record names: a refactor of the config classes must not change them.

``tests/golden/config_hashes.json`` holds, for every preset of every runner and of the pretrainer (and for each
config class's defaults, ``preset`` unset), the :func:`config_hash` and the key set of :func:`to_dict` (the record's
``config``); for the defaults also the whole ``to_dict``, which pins the fields the hash leaves out (the default
``out_dir``, ``num_workers``, ``data_root`` of each runner). A record written before the change is found again
after it only if all of this is unchanged.

After a deliberate change of a preset or a default (which names new records), rewrite the file::

    .venv/bin/python tests/test_config_hashes.py --write
"""

from __future__ import annotations

import importlib
import json
import sys
import typing
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "config_hashes.json"
# entry point -> the module that defines its config class and PRESET_DIR
ENTRY_POINTS = {
    "voc07_svm": "benchmarks.voc07_svm.runner",
    "linear_mhead": "benchmarks.linear.mhead",
    "linear_avgpool": "benchmarks.linear.avgpool",
    "semi_sup": "benchmarks.semi_sup.runner",
    "det_voc": "benchmarks.detection.voc",
    "det_coco": "benchmarks.detection.coco",
    "segmentation": "benchmarks.segmentation.runner",
    "pretrain": "pretrain.config",
}


def _config_class(name: str) -> tuple[type, Path]:
    module = importlib.import_module(ENTRY_POINTS[name])
    if name == "pretrain":
        return module.PretrainConfig, module.PRESET_DIR
    return typing.get_type_hints(module.run)["cfg"], module.PRESET_DIR


def current() -> dict[str, dict]:
    """``{"<entry point>/<preset or (defaults)>": {"hash", "keys"[, "config"]}}`` from the code as it is."""
    from byol_bench.config import config_hash, load_config, to_dict

    found = {}
    for name in ENTRY_POINTS:
        cls, preset_dir = _config_class(name)
        cfg = load_config(cls)
        found[f"{name}/(defaults)"] = {"hash": config_hash(cfg), "keys": sorted(to_dict(cfg)), "config": to_dict(cfg)}
        for preset in sorted(preset_dir.glob("*.yaml")):
            cfg = load_config(cls, preset.stem, preset_dir=preset_dir)
            found[f"{name}/{preset.stem}"] = {"hash": config_hash(cfg), "keys": sorted(to_dict(cfg))}
    return found


@pytest.fixture(scope="module")
def golden() -> dict[str, dict]:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def now() -> dict[str, dict]:
    return current()


def test_every_preset_is_in_the_golden_file(golden: dict, now: dict) -> None:
    assert sorted(now) == sorted(golden), "a preset was added or removed: rewrite the golden file (see the docstring)"


@pytest.mark.parametrize("name", sorted(json.loads(GOLDEN.read_text())) if GOLDEN.is_file() else [])
def test_config_hash_and_keys_are_unchanged(name: str, golden: dict, now: dict) -> None:
    assert name in now, f"{name}: preset gone"
    assert now[name]["keys"] == golden[name]["keys"], f"{name}: the record's config keys changed"
    assert now[name]["hash"] == golden[name]["hash"], f"{name}: config hash changed (existing records orphaned)"
    if "config" in golden[name]:
        assert now[name]["config"] == golden[name]["config"], f"{name}: a default changed"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit(f"usage: {sys.argv[0]} --write   (rewrites {GOLDEN.relative_to(REPO)})")
    sys.path.insert(0, str(REPO))
    GOLDEN.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
