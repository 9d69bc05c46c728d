"""The detectron2-engine tests' skip marks: detectron2 has no PyPI release, so the tests that need it skip in CI."""

from __future__ import annotations

import pytest

from benchmarks.detection.detectron2_engine import has_detectron2

HAS_DETECTRON2 = has_detectron2()
needs_detectron2 = pytest.mark.skipif(not HAS_DETECTRON2, reason="detectron2 is not importable (no PyPI release)")
without_detectron2 = pytest.mark.skipif(HAS_DETECTRON2, reason="detectron2 is installed")

