"""One module per protocol, each with ``run(cfg) -> dict[str, float]`` (``python -m benchmarks.<protocol>``).

The conventions every runner follows (module layout, the run scaffold, config fields, presets, record names,
tests) are written once in docs/RUNNERS.md; ``benchmarks/voc07_svm.py`` is the model runner.
"""
