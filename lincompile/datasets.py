"""Small datasets shipped inside the package (no download at run time).

``digits``: the UCI ML hand-written digits (Alpaydin & Kaynak, "Optical Recognition of
Handwritten Digits", UCI Machine Learning Repository, CC BY 4.0), taken once from
scikit-learn's bundled copy (``sklearn.datasets.load_digits``) by ``data/make_digits.py``:
1,797 grey 8×8 images with pixel counts 0..16 and labels 0..9, 45 kB compressed.

>>> x, y = load_digits()
>>> x.shape, x.dtype, float(x.max()), y.shape, y.dtype
((1797, 64), dtype('float32'), 1.0, (1797,), dtype('int64'))
"""

from __future__ import annotations

from importlib import resources

import numpy as np


def load_digits(scale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Flattened images ``[1797, 64]`` (float32, divided by 16 when ``scale``) and int64
    labels ``[1797]``."""
    with resources.files("lincompile").joinpath("data/digits.npz").open("rb") as f:
        d = np.load(f)
        images, labels = d["images"], d["labels"]
    x = images.reshape(len(images), -1).astype(np.float32)
    return (x / 16 if scale else x), labels.astype(np.int64)


def split(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.2, seed: int = 0):
    """A seeded shuffle into ``(x_train, y_train, x_test, y_test)``.

    >>> x, y = load_digits()
    >>> [a.shape[0] for a in split(x, y)]
    [1438, 1438, 359, 359]
    """
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = round(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]
