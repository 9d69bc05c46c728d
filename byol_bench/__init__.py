"""Shared core of byol-bench: configs, distributed helpers, checkpoints, records, logging, backbone features.

Each concern lives in its own small module; protocols and the pretrainer import what they need directly.
"""
