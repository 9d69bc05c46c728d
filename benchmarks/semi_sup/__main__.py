"""``python -m benchmarks.semi_sup``: 1 % / 10 % ImageNet semi-supervised fine-tuning.

The runner is :mod:`benchmarks.semi_sup.runner`; this module only starts it.
"""

from benchmarks.semi_sup.runner import main
from byol_bench.cli import main_guard

if __name__ == "__main__":
    main_guard(main)
