"""The benchmark protocols: one package per protocol family, each runner a ``run(cfg) -> dict[str, float]``.

==================  =========================================  ================================================
family              runners (``python -m benchmarks.<name>``)   also holds
==================  =========================================  ================================================
``voc07_svm/``      ``voc07_svm``                              the SVM protocol math and the batched solver
``linear/``         ``linear_mhead``, ``linear_avgpool``       the probe heads
``semi_sup/``       ``semi_sup``                               the one-pass grid of fine-tuning cells
``detection/``      ``det_voc``, ``det_coco``                  C4 and Mask R-CNN models, the shared trainer, VOC
                                                               and COCO evaluation, the detectron2 engine
``segmentation/``   ``segmentation``                           the FCN model, mmseg's metric, the mmseg engine
==================  =========================================  ================================================

A family imports only itself and the core (``byol_bench``, ``adapters``); no runner imports another runner; a piece
two families need goes into the core. ``benchmarks/<protocol>.py`` (two-runner families) and a family's
``__main__.py`` (one-runner families) only start the runner. The conventions every runner follows are written once
in docs/RUNNERS.md; ``benchmarks/voc07_svm/runner.py`` is the model runner. ``tests/test_layering.py`` checks the
import rules.
"""
