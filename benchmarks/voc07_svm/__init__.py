"""VOC07 SVM and low-shot SVM on frozen feature1..5 (``python -m benchmarks.voc07_svm``).

* :mod:`.runner` — the protocol, top to bottom (``run(cfg)``);
* :mod:`.protocol` — the protocol's math: cost grids, cross-validated cost choice, low-shot sampling, AP;
* :mod:`.solver` — the exact batched solver of every class x cost squared-hinge SVM at once.
"""
