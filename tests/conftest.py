"""Session-wide fixtures: the embedded mini-datasets are generated once per test session and shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from byol_bench.tinydata import ensure_tiny_data


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of the generated mini-datasets (seed 0), shared by every test module in the session."""
    return ensure_tiny_data(tmp_path_factory.getbasetemp() / "tiny-data-seed0")
