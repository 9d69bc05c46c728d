"""``python -m benchmarks.segmentation``: FCN segmentation on VOC12+Aug and Cityscapes.

The runner is :mod:`benchmarks.segmentation.runner`; this module only starts it.
"""

from benchmarks.segmentation.runner import main
from byol_bench.cli import main_guard

if __name__ == "__main__":
    main_guard(main)
