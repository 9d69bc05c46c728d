"""FCN R50-D8 semantic segmentation on VOC12+Aug and Cityscapes (``python -m benchmarks.segmentation``).

* :mod:`.runner` — the protocol, top to bottom (``run(cfg)``), native engine;
* :mod:`.fcn` — the model, its loss, training step and test-time prediction;
* :mod:`.evaluation` — mmseg's ``IoUMetric``, sliding-window inference, and the prediction PNGs both engines write;
* :mod:`.mmseg` — ``engine=mmseg``: mmsegmentation's Runner on a generated config, scored by :mod:`.evaluation`.
"""
