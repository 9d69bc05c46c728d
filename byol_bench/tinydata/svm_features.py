"""A synthetic, VOC07-shaped linear-SVM problem: the input of the SVM solver's equivalence tests and speed benchmark.

Frozen features of real VOC07 images need a pretrained network and the dataset; this generator gives the solver a
problem of the same shape (sizes, per-class positive rates, difficult labels, post-ReLU statistics) in a second.
"""

from __future__ import annotations

import numpy as np

from byol_bench.seeding import rng_for

# Images per class in VOC07 trainval (5,011 images), aeroplane ... tvmonitor: the benchmark's positive rates.
VOC07_TRAINVAL_POSITIVES = (238, 243, 330, 181, 244, 186, 713, 337, 445, 141, 200, 421, 287, 245, 2008, 245, 96,
                            229, 261, 256)


def make_voc_like_problem(n_train: int, n_test: int, dim: int, seed: int = 0, latent: int = 256,
                          signal: float = 0.3, missed: float = 0.1, difficult: float = 0.02
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Post-ReLU-like features with class signal, VOC07 positive rates and difficult (-1) labels.

    Images get classes independently at VOC07's rates; features are ReLU(latent @ A + noise) where the latent
    vector sums class embeddings (missing for a fraction ``missed`` of the positives, so the classes are not
    separable) over a power-law background. ``signal=0.3`` gives test APs of roughly 0.75-0.95 per class, the
    range of real VOC07 SVMs.

    Returns:
        ``train_features (n_train, dim) float32, train_labels (n_train, 20), test_features, test_labels``,
        labels in {1, 0, -1}.
    """
    rng = rng_for(seed)
    n = n_train + n_test
    rates = np.asarray(VOC07_TRAINVAL_POSITIVES) / 5011.0
    labels = np.zeros((n, len(rates)), dtype=np.int64)
    for lo, size in ((0, n_train), (n_train, n_test)):  # exact VOC07 counts per split (sheep: 96 = max k)
        for c, rate in enumerate(rates):
            labels[lo + rng.choice(size, max(1, round(rate * size)), replace=False), c] = 1
    scale = (1.0 + np.arange(latent)) ** -0.5 * 3
    embeddings = rng.standard_normal((len(rates), latent)) * scale
    evidence = labels * (rng.random(labels.shape) >= missed)
    codes = signal * (evidence @ embeddings) + rng.standard_normal((n, latent)) * scale
    mixing = rng.standard_normal((latent, dim)) / np.sqrt(latent)
    features = (codes @ mixing).astype(np.float32)
    features += 0.3 + 0.3 * rng.standard_normal((n, dim), dtype=np.float32)
    np.maximum(features, 0, out=features)
    labels[(rng.random(labels.shape) < difficult) & (labels == 0)] = -1
    return features[:n_train], labels[:n_train], features[n_train:], labels[n_train:]
