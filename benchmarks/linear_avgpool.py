"""``python -m benchmarks.linear_avgpool``: the AvgPool linear probe.

The runner is :mod:`benchmarks.linear.avgpool`; this module only starts it.
"""

from benchmarks.linear.avgpool import main
from byol_bench.cli import main_guard

if __name__ == "__main__":
    main_guard(main)
