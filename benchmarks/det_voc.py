"""``python -m benchmarks.det_voc``: Faster R-CNN R50-C4 on VOC07+12.

The runner is :mod:`benchmarks.detection.voc`; this module only starts it.
"""

from benchmarks.detection.voc import main
from byol_bench.cli import main_guard

if __name__ == "__main__":
    main_guard(main)
