"""Linear probes on a frozen backbone (ImageNet, iNaturalist 2018, Places205).

* :mod:`.mhead` — multi-head probes on feature1..5 (``python -m benchmarks.linear_mhead``);
* :mod:`.avgpool` — the AvgPool probe on the last feature map (``python -m benchmarks.linear_avgpool``).
"""
