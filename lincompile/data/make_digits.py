"""Make ``digits.npz`` from scikit-learn's bundled copy of the UCI handwritten digits.

Run once by developers (``python lincompile/data/make_digits.py``); the result is committed.
scikit-learn is needed only here, never at run time.

Source: "Optical Recognition of Handwritten Digits" (E. Alpaydin, C. Kaynak, 1998), UCI
Machine Learning Repository, CC BY 4.0 — the 8×8 test set that scikit-learn ships as
``sklearn.datasets.load_digits()``: 1,797 images, pixel counts 0..16, labels 0..9.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def main(path: Path | None = None) -> Path:
    from sklearn.datasets import load_digits  # developer-only dependency

    d = load_digits()
    images = d.images.astype(np.uint8)  # values 0..16: lossless in uint8
    labels = d.target.astype(np.uint8)
    assert images.shape == (1797, 8, 8) and np.array_equal(images, d.images)
    path = path or Path(__file__).with_name("digits.npz")
    np.savez_compressed(path, images=images, labels=labels)
    return path


if __name__ == "__main__":
    out = main()
    print(f"wrote {out} ({out.stat().st_size} bytes)")
