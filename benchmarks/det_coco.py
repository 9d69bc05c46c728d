"""``python -m benchmarks.det_coco``: Mask R-CNN R50-FPN on COCO.

The runner is :mod:`benchmarks.detection.coco`; this module only starts it.
"""

from benchmarks.detection.coco import main
from byol_bench.cli import main_guard

if __name__ == "__main__":
    main_guard(main)
