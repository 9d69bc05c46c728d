"""Seeding: every seeded random draw in the project comes from :func:`rng_for`.

One generator per purpose, derived from the run seed and the keys that name the purpose (a family, a split, an
image index, a low-shot sample and k), never one shared stream: a draw then does not depend on which other draws
ran before it, on worker counts or on the order of the work. (The pretrainer's per-sample torch seeds,
``pretrain.data.sample_seed``, follow the same rule with a hash that torch's generator takes directly.)
"""

from __future__ import annotations

import zlib

import numpy as np


def rng_for(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent numpy generator for ``(seed, *keys)``; string keys are hashed with crc32 (stable across runs).

    ``rng_for(seed, a, b)`` is ``numpy.random.default_rng([seed, a, b])`` for integer keys.
    """
    ints = [seed] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(ints))
