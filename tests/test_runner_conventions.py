"""The runner conventions of docs/RUNNERS.md that a machine can check, for every runner module and the pretrainer."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import re
import typing
from pathlib import Path

import pytest

from byol_bench.config import CONFIG_ROOT, ConfigError, describe, load_config
from byol_bench.protocols import BY_NAME, PRETRAIN, PROTOCOLS
from byol_bench.records import make_record
from byol_bench.rehearsal import reference_world
from byol_bench.runner_config import (
    EpochTrainerConfig,
    IterTrainerConfig,
    RunnerConfig,
    TrainerConfig,
    TrainerResolved,
)
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


def _config_class(module) -> type:
    return typing.get_type_hints(module.run)["cfg"]


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
    # the suite runs `python -m <its entry in byol_bench.protocols>`: an entry module (or a family's __main__) that
    # starts this runner's main; the entry names this runner module
    protocol = BY_NAME[name]
    assert protocol.runner == module.__name__ and protocol.module == f"benchmarks.{name}"
    spec = importlib.util.find_spec(protocol.module)
    entry = Path(spec.origin) if spec.submodule_search_locations is None else Path(spec.origin).with_name("__main__.py")
    assert f"from {module.__name__} import main" in entry.read_text()
    for dataset in _record_datasets(module):
        assert (module.PROTOCOL, dataset) in required_fields()  # the record fills table cells
    assert module.PRESET_DIR == CONFIG_ROOT / module.PROTOCOL
    assert module.__doc__ and "python -m benchmarks." in module.__doc__  # the canonical command
    assert dataclasses.is_dataclass(module.Resolved) and module.Resolved.__dataclass_params__.frozen
    # rehearsal=true cuts the work where run() decides it and says so in the docstring (docs/REHEARSAL.md)
    assert "cfg.rehearsal" in inspect.getsource(module.run) and "rehearsal=true" in module.__doc__


@pytest.mark.parametrize("name", RUNNERS)
def test_runner_config_declares_only_its_own_fields(name: str) -> None:
    """The shared fields are RunnerConfig's (a trainer's: those of TrainerConfig and its epoch or iteration kind),
    declared once: a runner config subclasses one, its class body declares none of them again, and only their
    defaults may differ (out_dir: results/<protocol>)."""
    module = importlib.import_module(RUNNER_MODULES[name])
    cls = _config_class(module)
    assert issubclass(cls, RunnerConfig) and cls.__dataclass_params__.frozen
    base = cls.__mro__[1]
    assert base in (RunnerConfig, EpochTrainerConfig, IterTrainerConfig), base
    body = next(node for node in ast.walk(ast.parse(inspect.getsource(inspect.getmodule(cls))))
                if isinstance(node, ast.ClassDef) and node.name == cls.__name__)
    declared = {node.target.id for node in body.body if isinstance(node, ast.AnnAssign)}
    shared = {f.name: f for f in dataclasses.fields(base)}
    assert not declared & set(shared), f"{cls.__name__} declares {declared & set(shared)} again"
    fields, hints, base_hints = {f.name: f for f in dataclasses.fields(cls)}, typing.get_type_hints(cls), \
        typing.get_type_hints(base)
    for field, declaration in shared.items():
        assert hints[field] == base_hints[field] and fields[field].metadata == declaration.metadata, field
    assert fields["out_dir"].default == f"results/{module.PROTOCOL}"
    assert list(fields)[:len(shared)] == list(shared)  # --help and config.yaml list the shared fields first
    assert all(f"\n  {field} (" in "\n" + describe(cls) for field in fields)  # --help lists every field
    cfg = load_config(cls, overrides=["num_workers=1", "out_dir=elsewhere", "force=true", "device=cpu"])
    assert (cfg.num_workers, cfg.out_dir, cfg.force, cfg.device) == (1, "elsewhere", True, "cpu")
    with pytest.raises(ConfigError, match="unknown key 'num_worker'"):
        load_config(cls, overrides=["num_worker=1"])
    # a runner that trains resumes by the one rule (training.resume_point): its config is a TrainerConfig, and its
    # Resolved the shared TrainerResolved (or a subclass)
    source = "\n".join(p.read_text() for p in Path(module.__file__).parent.glob("*.py"))
    if "load_training_state" in source:
        assert issubclass(cls, TrainerConfig) and issubclass(module.Resolved, TrainerResolved)
    if issubclass(cls, TrainerConfig):
        assert "resume_point(" in source


def test_the_resume_rule_is_written_once() -> None:
    """No runner decides between --force and resume itself: training.resume_point is the rule."""
    for path in sorted((REPO / "benchmarks").rglob("*.py")):
        text = path.read_text()
        assert "find_resume(" not in text, f"{path}: call training.resume_point(run_dir, cfg) instead"
        assert not re.search(r"cfg\.force and cfg\.resume|cfg\.resume == .auto. and not cfg\.force", text), path


def test_config_fields_table_of_runners_md_lists_the_shared_fields() -> None:
    doc = (REPO / "docs" / "RUNNERS.md").read_text()
    table = doc[doc.index("## Config fields"):].split("\n## ")[0]
    listed = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert listed == [f.name for f in dataclasses.fields(TrainerConfig)]
    for kind in (EpochTrainerConfig, IterTrainerConfig):  # named in the text below the table
        own = [f.name for f in dataclasses.fields(kind)][len(listed):]
        assert f"`{kind.__name__}` (" + ", ".join(f"`{n}`" for n in own) + ")" in " ".join(table.split())


def test_a_redeclared_shared_field_is_refused() -> None:
    with pytest.raises(TypeError, match="declares num_workers again"):
        @dataclasses.dataclass(frozen=True)
        class Redeclared(RunnerConfig, protocol="x"):
            num_workers: int = 2
    with pytest.raises(TypeError, match="not an inherited field"):
        @dataclasses.dataclass(frozen=True)
        class Unknown(RunnerConfig, protocol="x", workers=2):
            pass


@pytest.mark.parametrize("name", RUNNERS)
def test_runner_presets_parse_and_the_full_preset_is_known(name: str) -> None:
    module = importlib.import_module(RUNNER_MODULES[name])
    presets = sorted(module.PRESET_DIR.glob("*.yaml"))
    for preset in presets:
        cfg = load_config(_config_class(module), preset.stem, preset_dir=module.PRESET_DIR)
        assert cfg.preset == preset.stem and cfg.tiny == _is_tiny(preset.stem)
    full, tiny = BY_NAME[name].presets("full"), BY_NAME[name].tiny
    assert full, f"list the full preset(s) of {name} in byol_bench/protocols.py"
    assert {"tiny", *tiny, *full} <= {p.stem for p in presets}
    for preset, gpus in BY_NAME[name].full:  # the reference GPU count is the name's <N>xb<B>, or 1
        assert gpus == (reference_world(preset) if re.search(r"\d+xb\d+", preset) else 1), preset
    if len(_record_datasets(module)) > 1:  # one full and one tiny preset per dataset the runner can write
        by_dataset = {load_config(_config_class(module), p, preset_dir=module.PRESET_DIR).dataset for p in full}
        assert by_dataset == set(_record_datasets(module))
        by_dataset = {load_config(_config_class(module), p, preset_dir=module.PRESET_DIR).dataset for p in tiny}
        assert by_dataset == set(_record_datasets(module))


def test_the_protocol_list_is_every_runner_and_its_tables() -> None:
    # in the tables' order
    assert [p.name for p in PROTOCOLS] == list(dict.fromkeys(c.protocol for t in TABLES for c in t.columns))
    assert sorted(p.name for p in PROTOCOLS) == RUNNERS
    for protocol in PROTOCOLS:
        assert set(protocol.tables) == {t.title for t in TABLES if protocol.name in {c.protocol for c in t.columns}}
    assert PRETRAIN.runner == "pretrain.train" and importlib.util.find_spec(PRETRAIN.module) is not None


def test_pretrain_presets_parse() -> None:
    presets = sorted(PRETRAIN_PRESET_DIR.glob("*.yaml"))
    assert presets
    assert set(PRETRAIN.presets("full")) == {p.stem for p in presets} - {"tiny"}
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
