"""1 % / 10 % ImageNet semi-supervised fine-tuning (``python -m benchmarks.semi_sup``): :mod:`.runner`."""
