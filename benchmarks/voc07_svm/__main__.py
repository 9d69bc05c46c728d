"""``python -m benchmarks.voc07_svm``: VOC07 SVM and low-shot SVM.

The runner is :mod:`benchmarks.voc07_svm.runner`; this module only starts it.
"""

from benchmarks.voc07_svm.runner import main
from byol_bench.cli import main_guard

if __name__ == "__main__":
    main_guard(main)
