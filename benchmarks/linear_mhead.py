"""``python -m benchmarks.linear_mhead``: multi-head linear probes on feature1..5.

The runner is :mod:`benchmarks.linear.mhead`; this module only starts it.
"""

from benchmarks.linear.mhead import main
from byol_bench.cli import main_guard

if __name__ == "__main__":
    main_guard(main)
