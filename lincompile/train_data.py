"""Training data for ``lc.train``: read a ``.npz`` or ``.csv`` file and check it against
the model, so that bad data is one clear line before any training starts.

- ``.npz``: arrays ``x`` (features) and ``y`` (targets), other keys by name;
- ``.csv``: one row per example, the last column the target, an optional header row.

For cross-entropy the targets are class labels: integers, and where the model's classifier
head names its classes (skl2onnx does), those labels, mapped to class indices.

>>> import numpy as np, lincompile as lc
>>> g = lc.Graph("m"); _ = g.output(g.linear(g.input("x", ["N", 3]), 4))
>>> x, y = load_data((np.zeros((5, 3)), np.array([0, 1, 2, 3, 3.0])), g, "cross-entropy")
>>> x.dtype, y.tolist()
(dtype('float32'), [0, 1, 2, 3, 3])
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .errors import LincompileError
from .ir import Graph
from .training import binary_output


class DataError(LincompileError):
    """Training data that does not fit the model (or cannot be read)."""


def read(data, x_key: str = "x", y_key: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from a ``.npz``/``.csv`` path or an ``(x, y)`` pair, unchecked."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return np.asarray(data[0]), np.asarray(data[1])
    if not isinstance(data, (str, os.PathLike)):
        raise DataError("data: give a .npz or .csv path, or an (x, y) pair of arrays")
    path = Path(data)
    if not path.is_file():
        raise DataError(f"data: no such file: '{path}'")
    if path.suffix.lower() == ".npz":
        return _npz(path, x_key, y_key)
    if path.suffix.lower() == ".csv":
        return _csv(path)
    raise DataError(f"data: '{path.name}' is neither .npz (arrays {x_key}, {y_key}) nor .csv "
                    "(last column the target)")


def _npz(path: Path, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in (x_key, y_key) if k not in f.files]
            if missing:
                raise DataError(f"data: '{path.name}' has no array '{missing[0]}' (it holds: "
                                f"{', '.join(f.files) or 'nothing'}); name them with --x/--y")
            return f[x_key], f[y_key]
    except DataError:
        raise
    except Exception as e:  # not a zip, truncated, pickled objects...
        raise DataError(f"data: cannot read '{path.name}' as .npz: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise DataError(f"data: '{path.name}' is not a text CSV file") from None
    if lines and not _numbers(lines[0]):   # a header row
        lines = lines[1:]
    if not lines:
        raise DataError(f"data: '{path.name}' has no data rows")
    rows = []
    for i, ln in enumerate(lines):
        cells = _numbers(ln)
        if cells is None:
            raise DataError(f"data: '{path.name}' row {i + 1}: not all numbers: {ln[:60]!r}")
        if rows and len(cells) != len(rows[0]):
            raise DataError(f"data: '{path.name}' row {i + 1} has {len(cells)} columns, the "
                            f"first has {len(rows[0])}")
        rows.append(cells)
    table = np.array(rows, np.float64)
    if table.shape[1] < 2:
        raise DataError(f"data: '{path.name}' needs feature columns and a last target column")
    return table[:, :-1], table[:, -1]


def _numbers(line: str) -> list[float] | None:
    try:
        return [float(c) for c in line.split(",")]
    except ValueError:
        return None


def load_data(data, model: Graph, loss: str, head: dict | None = None, x_key: str = "x",
              y_key: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` ready to feed ``model``'s training step, or a :class:`DataError`."""
    x, y = read(data, x_key, y_key)
    return check(x, y, model, loss, head or {})


def check(x: np.ndarray, y: np.ndarray, model: Graph, loss: str, head: dict
          ) -> tuple[np.ndarray, np.ndarray]:
    if len(model.inputs) != 1:
        raise DataError(f"model '{model.name}' has {len(model.inputs)} inputs; training on "
                        "data feeds one")
    inp, out = model.inputs[0], model.outputs[0]
    for name, a in (("x", x), ("y", y)):
        if a.dtype.kind not in "fiub":
            raise DataError(f"data: {name} holds {a.dtype} values; numbers only")
        if a.ndim == 0 or len(a) == 0:
            raise DataError(f"data: {name} is empty")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0]
            raise DataError(f"data: {name} holds {a[tuple(bad)]} at {bad.tolist()}; "
                            "remove or fill NaN/Inf rows")
    if len(x) != len(y):
        raise DataError(f"data: x has {len(x)} rows but y has {len(y)}")
    x = _fit_features(x, inp)
    binary = binary_output(model) is not None
    y = _classes(y, out, head, binary) if loss == "cross-entropy" else _values(y, out)
    return x, y


def _fit_features(x: np.ndarray, inp) -> np.ndarray:
    want = tuple(inp.shape[1:])
    if all(isinstance(d, int) for d in want):
        if tuple(x.shape[1:]) != want and x.ndim == 2 and x.shape[1] == math.prod(want):
            x = x.reshape(len(x), *want)  # CSV rows of a model that takes [N, 2, 2, 3]
        if tuple(x.shape[1:]) != want:
            raise DataError(f"data: x rows are {_dims(x.shape[1:])} but the model's input "
                            f"'{inp.name}' takes {_dims(inp.shape)}")
    return np.ascontiguousarray(x, dtype=inp.dtype)


def _classes(y: np.ndarray, out, head: dict, binary: bool) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"data: cross-entropy takes one class label per row; y is "
                        f"{_dims(y.shape)}")
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        bad = y[y != np.round(y)][0]
        raise DataError(f"data: label {bad} is not an integer; cross-entropy takes class "
                        "labels (use --loss mse for numeric targets)")
    y = y.astype(np.int64)
    width = out.shape[-1]
    n = 2 if binary else width
    classes = head.get("classes")  # the head's labels, where they name these logits
    if not classes or len(classes) != n:
        classes = list(range(n)) if isinstance(n, int) else None
    if classes is None:
        return y
    index = {c: i for i, c in enumerate(classes)}
    bad = [v for v in np.unique(y) if int(v) not in index]
    if bad:
        shown = (f"{classes[0]}..{classes[-1]}" if classes == list(range(classes[0],
                 classes[-1] + 1)) else ", ".join(map(str, classes)))
        raise DataError(f"data: label {bad[0]} is not a class of the model (classes: {shown})")
    return np.array([index[int(v)] for v in y], np.int64)


def _values(y: np.ndarray, out) -> np.ndarray:
    want = tuple(out.shape[1:])
    if y.ndim == 1 and want == (1,):
        y = y[:, None]
    if all(isinstance(d, int) for d in want) and tuple(y.shape[1:]) != want:
        raise DataError(f"data: y rows are {_dims(y.shape[1:])} but the model's output "
                        f"'{out.name}' gives {_dims(out.shape)}")
    return np.ascontiguousarray(y, dtype=out.dtype)


def _dims(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"
