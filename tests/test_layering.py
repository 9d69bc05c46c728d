"""Imports run one way: scripts -> pretrain, benchmarks -> adapters -> byol_bench (the core imports none of them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# package -> top-level packages of this repository that it must not import
FORBIDDEN = {
    "byol_bench": {"adapters", "pretrain", "benchmarks", "scripts", "tests"},
    "adapters": {"pretrain", "benchmarks", "scripts", "tests"},
    "pretrain": {"benchmarks", "scripts", "tests"},
    "benchmarks": {"pretrain", "scripts", "tests"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every import statement in ``path`` (function-local imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((REPO / package).rglob("*.py"))
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_the_checker_sees_local_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from benchmarks.voc07_svm import run\n    import pretrain.train\n")
    assert imported_packages(source) == {"os", "benchmarks", "pretrain"}
