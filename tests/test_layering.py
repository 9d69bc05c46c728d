"""Imports run one way: scripts -> pretrain, benchmarks -> adapters -> byol_bench (the core imports none of them);
inside benchmarks/, each protocol family is closed: it imports only itself and the core, no runner imports another
runner, and scripts import only public names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
# package -> top-level packages of this repository that it must not import
FORBIDDEN = {
    "byol_bench": {"adapters", "pretrain", "benchmarks", "scripts", "tests"},
    "adapters": {"pretrain", "benchmarks", "scripts", "tests"},
    "pretrain": {"benchmarks", "scripts", "tests"},
    "benchmarks": {"pretrain", "scripts", "tests"},
}
# benchmarks/suite/ is no family: it runs the runners as commands (python -m), whatever their family
FAMILIES = sorted(p.name for p in BENCHMARKS.iterdir() if (p / "__init__.py").is_file() and p.name != "suite")


def imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """``(module, imported names)`` of every import statement in ``path`` (function-local imports included);
    ``import a.b`` gives ``("a.b", ())``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, tuple(alias.name for alias in node.names)))
    return found


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every import statement in ``path``."""
    return {module.split(".")[0] for module, _ in imports(path)}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, ``from pkg import mod`` counted as ``pkg.mod`` when ``mod`` is a module."""
    modules = set()
    for module, names in imports(path):
        modules.add(module)
        for name in names:
            if _module_file(f"{module}.{name}") is not None:
                modules.add(f"{module}.{name}")
    return modules


def _module_file(dotted: str) -> Path | None:
    base = REPO.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def runner_modules() -> set[str]:
    """The modules that define a protocol runner: a module-level ``PROTOCOL`` and a ``run`` function."""
    runners = set()
    for path in BENCHMARKS.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        names |= {e.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Tuple)
                  for e in t.elts if isinstance(e, ast.Name)}
        if {"PROTOCOL", "run"} <= names:
            runners.add(".".join(path.relative_to(REPO).with_suffix("").parts))
    return runners


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((REPO / package).rglob("*.py"))
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_the_suite_imports_no_family() -> None:
    """The suite starts runners as commands; it may import a runner module by name (importlib) to find its record."""
    for path in sorted((BENCHMARKS / "suite").rglob("*.py")):
        assert not [m for m in imported_modules(path) if m.startswith("benchmarks.") and
                    not m.startswith("benchmarks.suite")], path


def test_the_families() -> None:
    assert FAMILIES == ["detection", "linear", "segmentation", "semi_sup", "voc07_svm"]
    assert not (REPO / "byol_bench" / "detection").exists()  # protocol code lives with its family, not in the core


@pytest.mark.parametrize("family", FAMILIES)
def test_families_import_only_themselves(family: str) -> None:
    """A family's modules import no other family and no top-level entry module (``benchmarks/<protocol>.py``)."""
    offenders = {}
    for path in sorted((BENCHMARKS / family).rglob("*.py")):
        bad = sorted(m for m in imported_modules(path)
                     if m.startswith("benchmarks") and m.split(".")[1:2] != [family] and m != "benchmarks")
        if bad:
            offenders[str(path.relative_to(REPO))] = bad
    assert not offenders, offenders


def test_no_runner_imports_another_runner() -> None:
    runners = runner_modules()
    assert len(runners) == 7, runners
    offenders = {}
    for path in sorted(BENCHMARKS.rglob("*.py")):
        bad = sorted(imported_modules(path) & runners)
        # the entry points (benchmarks/<protocol>.py, a family's __main__.py) start their own runner, nothing else
        entry = path.parent == BENCHMARKS or path.name == "__main__.py"
        if bad and not (entry and len(bad) == 1):
            offenders[str(path.relative_to(REPO))] = bad
    assert not offenders, offenders


def test_scripts_import_public_names_only() -> None:
    offenders = {}
    for path in sorted((REPO / "scripts").glob("*.py")):
        private = sorted(f"{module}.{name}" for module, names in imports(path)
                         if module.split(".")[0] in FORBIDDEN for name in names if name.startswith("_"))
        if private:
            offenders[path.name] = private
    assert not offenders, offenders


def test_the_checker_sees_local_and_from_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from benchmarks.voc07_svm.runner import run\n"
                      "    import pretrain.train\n    from benchmarks.detection import voc\n")
    assert imported_packages(source) == {"os", "benchmarks", "pretrain"}
    assert {"benchmarks.voc07_svm.runner", "benchmarks.detection.voc"} <= imported_modules(source)
