"""The detectron2-engine tests' skip marks: detectron2 has no PyPI release (no wheel on the package index, so no
extra of this project can install it), so the tests that need it skip in CI; ``pytest -ra`` prints the reason and the
build command (docs/DETECTION.md, "Installing detectron2")."""

from __future__ import annotations

import pytest

from benchmarks.detection.detectron2_engine import has_detectron2

BUILD_COMMAND = "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'"
SKIP_REASON = (f"detectron2 is not importable: it has no PyPI release (no wheel; source only), so neither CI nor "
               f"the project's extras install it. To run these tests, build it against the installed torch: "
               f"{BUILD_COMMAND} (docs/DETECTION.md)")

HAS_DETECTRON2 = has_detectron2()
needs_detectron2 = pytest.mark.skipif(not HAS_DETECTRON2, reason=SKIP_REASON)
without_detectron2 = pytest.mark.skipif(HAS_DETECTRON2, reason="detectron2 is installed (this test is the error "
                                        "without it)")
