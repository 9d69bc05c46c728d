"""The runner conventions of docs/RUNNERS.md that a machine can check, for every runner module and the pretrainer."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
import typing
from pathlib import Path

import pytest

from byol_bench.config import CONFIG_ROOT, load_config
from byol_bench.records import make_record
from byol_bench.tables import TABLES, TINY_MARK, required_fields, table_rows
from pretrain.config import PRESET_DIR as PRETRAIN_PRESET_DIR
from pretrain.config import PretrainConfig

REPO = Path(__file__).resolve().parents[1]


def _runner_modules() -> dict[str, str]:
    """protocol -> the module of its runner (a family module with ``PROTOCOL`` and ``run``)."""
    found = {}
    for path in sorted((REPO / "benchmarks").glob("*/*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        module = importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))
        if hasattr(module, "PROTOCOL") and hasattr(module, "run"):
            found[module.PROTOCOL] = module.__name__
    return found


RUNNER_MODULES = _runner_modules()
RUNNERS = sorted(RUNNER_MODULES)
# field -> (type, identity) that every runner config shares (docs/RUNNERS.md, "Config fields")
SHARED_FIELDS = {
    "preset": (str, True), "ckpt": (str, True), "arch": (str | None, True), "encoder": (str, True),
    "data_root": (str, False), "out_dir": (str, False), "device": (typing.Literal["auto", "cpu", "cuda"], False),
    "num_workers": (int, False), "tiny": (bool, True), "force": (bool, False),
}


def _config_class(module) -> type:
    return typing.get_type_hints(module.run)["cfg"]


def _presets_table(name: str) -> dict[str, list[str]]:
    """A protocol -> presets table of scripts/run_all_benchmarks.sh (values may list several, space-separated)."""
    script = (REPO / "scripts" / "run_all_benchmarks.sh").read_text()
    block = re.search(rf"declare -A {name}=\((.*?)\n\)", script, re.S).group(1)
    return {proto: value.strip('"').split() for proto, value in re.findall(r'\[(\w+)\]=("[^"]*"|\S+)', block)}


def _full_presets() -> dict[str, list[str]]:
    """The FULL_PRESET table of scripts/run_all_benchmarks.sh."""
    return _presets_table("FULL_PRESET")


def _is_tiny(preset: str) -> bool:
    """``tiny`` or, for a runner with several datasets, ``tiny-<dataset>``."""
    return preset == "tiny" or preset.startswith("tiny-")


def _record_datasets(module) -> tuple[str, ...]:
    """The datasets a runner's records name: ``DATASET``, or ``DATASETS`` when a config field chooses one."""
    return tuple(getattr(module, "DATASETS", None) or (module.DATASET,))


def test_there_are_runners() -> None:
    assert "voc07_svm" in RUNNERS


@pytest.mark.parametrize("name", RUNNERS)
def test_runner_module_follows_the_conventions(name: str) -> None:
    module = importlib.import_module(RUNNER_MODULES[name])
    # run_all_benchmarks.sh runs `python -m benchmarks.<protocol>`: an entry module (or a family's __main__) that
    # starts this runner's main
    spec = importlib.util.find_spec(f"benchmarks.{name}")
    entry = Path(spec.origin) if spec.submodule_search_locations is None else Path(spec.origin).with_name("__main__.py")
    assert f"from {module.__name__} import main" in entry.read_text()
    for dataset in _record_datasets(module):
        assert (module.PROTOCOL, dataset) in required_fields()  # the record fills table cells
    assert module.PRESET_DIR == CONFIG_ROOT / module.PROTOCOL
    assert module.__doc__ and "python -m benchmarks." in module.__doc__  # the canonical command
    cls = _config_class(module)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for field, (hint, identity) in SHARED_FIELDS.items():
        assert field in fields, f"{cls.__name__} lacks {field}"
        assert hints[field] == hint, f"{cls.__name__}.{field}: {hints[field]} != {hint}"
        assert fields[field].metadata["identity"] is identity, f"{cls.__name__}.{field} identity"
    assert dataclasses.is_dataclass(module.Resolved) and module.Resolved.__dataclass_params__.frozen


@pytest.mark.parametrize("name", RUNNERS)
def test_runner_presets_parse_and_the_full_preset_is_known(name: str) -> None:
    module = importlib.import_module(RUNNER_MODULES[name])
    presets = sorted(module.PRESET_DIR.glob("*.yaml"))
    for preset in presets:
        cfg = load_config(_config_class(module), preset.stem, preset_dir=module.PRESET_DIR)
        assert cfg.preset == preset.stem and cfg.tiny == _is_tiny(preset.stem)
    full = _full_presets().get(name)
    assert full, f"add [{name}]=<full preset(s)> to FULL_PRESET in scripts/run_all_benchmarks.sh"
    tiny = _presets_table("TINY_PRESETS").get(name, ["tiny"])
    assert {"tiny", *tiny, *full} <= {p.stem for p in presets}
    if len(_record_datasets(module)) > 1:  # one full and one tiny preset per dataset the runner can write
        by_dataset = {load_config(_config_class(module), p, preset_dir=module.PRESET_DIR).dataset for p in full}
        assert by_dataset == set(_record_datasets(module))
        by_dataset = {load_config(_config_class(module), p, preset_dir=module.PRESET_DIR).dataset for p in tiny}
        assert by_dataset == set(_record_datasets(module))


def test_pretrain_presets_parse() -> None:
    presets = sorted(PRETRAIN_PRESET_DIR.glob("*.yaml"))
    assert presets
    for preset in presets:
        cfg = load_config(PretrainConfig, preset.stem, preset_dir=PRETRAIN_PRESET_DIR)
        assert cfg.preset == preset.stem and cfg.tiny == (preset.stem == "tiny")


def test_every_config_folder_belongs_to_an_entry_point() -> None:
    assert {p.name for p in CONFIG_ROOT.iterdir() if p.is_dir()} <= {*RUNNERS, "pretrain"}


def test_every_table_cell_is_fillable_from_a_record() -> None:
    """One record per (protocol, dataset) holding exactly the required fields fills every cell of every table."""
    records = [
        make_record(protocol=protocol, dataset=dataset, model="m", preset=f"{protocol}-preset",
                    metrics=dict.fromkeys(need["metrics"], 50.0), details=dict.fromkeys(need["details"], "feat3"),
                    config={}, config_hash="0" * 12,
                    checkpoint={"path": "m.pth", "sha256": "a" * 64, "format": "torchvision", "arch": "resnet50",
                                "encoder": "online"},
                    seeds={}, batch_size_per_device=1, wall_time_s=1.0, tiny=False,
                    provenance={"world_size": 1, "git_commit": "x", "versions": {}, "device": "cpu"})
        for (protocol, dataset), need in required_fields().items()
    ]
    for table in TABLES:
        header, row = table_rows(table, records)
        assert len(row) == len(header) and all(row), (table.title, row)
        assert TINY_MARK not in row[0]


def test_the_tables_module_states_the_contract() -> None:
    """The mapping table in byol_bench/tables.py's docstring names every protocol, dataset and metric."""
    import byol_bench.tables

    doc = byol_bench.tables.__doc__
    for (protocol, dataset), need in required_fields().items():
        assert protocol in doc and dataset in doc
        for name in need["metrics"] | need["details"]:
            assert re.search(rf"\b{name}\b", doc), name
