"""Shape arithmetic, folded at import: ``Shape`` and the int64 ops on its result.

Exporters compute a ``Reshape`` target from the input's own shape where the batch is
symbolic: Keras's ``Flatten`` and torch's ``x.view(x.size(0), -1)`` write
``Shape → Gather → Unsqueeze → Concat([·, −1]) → Reshape``. The importer keeps such values
as :class:`Dims` — dims that are ints or the symbolic names of the graph (``"N"``) — instead
of tensors, folds ``Gather``, ``Unsqueeze``, ``Squeeze``, ``Concat``, ``Slice``, ``Cast``,
``Identity`` and integer ``Add``/``Sub``/``Mul``/``Div`` on them, and hands a ``Reshape``
its target with each symbolic dim as ``0`` (copy that input dim) or ``−1``. A value that is
all ints becomes an ordinary constant. Anything else reading a shape is an error naming it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import onnx

from .onnx_import import Const, Importer
from .onnx_import import node_attrs as _attrs

Dim = int | str
FOLDED = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Identity",
          "Add", "Sub", "Mul", "Div"}
def _div(a: int, b: int) -> int:
    """Integer division as onnxruntime does it: truncated toward zero."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


ARITH = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": _div}


@dataclass(frozen=True)
class Dims:
    """A folded shape value: its dims, and whether it is a scalar (0-D) or a vector."""

    values: tuple[Dim, ...]
    scalar: bool = False


def _operand(imp: Importer, name: str) -> Dims | None:
    """``name`` as dims: a folded shape value, or an integer constant of rank ≤ 1."""
    if name in imp.shapes:
        return imp.shapes[name]
    c = imp.const(name)
    if c is not None and c.data.dtype.kind in "iu" and c.data.ndim <= 1:
        return Dims(tuple(int(v) for v in c.data.reshape(-1)), c.data.ndim == 0)
    return None


def fold(imp: Importer, node: onnx.NodeProto) -> bool:
    """Fold ``node`` if it computes on shapes (see the module docstring); True if it did."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in FOLDED:
        return False
    if node.op_type == "Shape":
        x = imp.value(node.input[0])
        at = _attrs(node)
        dims = list(x.shape)[at.get("start", 0):at.get("end", len(x.shape))]
        return _set(imp, node, Dims(tuple(dims)))
    ins = [_operand(imp, i) if i else None for i in node.input]
    if any(d is None for i, d in zip(node.input, ins) if i):
        return False   # (integer constants alone fold too: x.size(1) · x.size(2) is one)
    op, first = node.op_type, ins[0]
    if op in ("Identity", "Cast"):
        if op == "Cast" and _attrs(node).get("to") not in (onnx.TensorProto.INT64,
                                                            onnx.TensorProto.INT32):
            if node.input[0] in imp.shapes:
                raise imp.unsupported("a Cast of a shape to a non-integer type")
            return False
        return _set(imp, node, first)
    if op == "Gather":
        idx = ins[1]
        if _attrs(node).get("axis", 0) != 0 or first.scalar:
            raise imp.unsupported("a Gather of a shape along another axis than 0")
        n = len(first.values)
        picked = tuple(first.values[i % n] for i in idx.values if -n <= i < n)
        if len(picked) != len(idx.values):
            raise imp.unsupported(f"a Gather of index {list(idx.values)} from a shape of "
                                  f"{n} dims")
        return _set(imp, node, Dims(picked, idx.scalar))
    if op in ("Unsqueeze", "Squeeze"):   # a scalar to a 1-vector and back
        if first.scalar != (op == "Unsqueeze") or len(first.values) != 1:
            raise imp.unsupported(f"an {op} of a shape of {len(first.values)} dims")
        return _set(imp, node, Dims(first.values, op == "Squeeze"))
    if op == "Concat":
        return _set(imp, node, Dims(tuple(v for d in ins for v in d.values)))
    if op == "Slice":
        starts, ends = ins[1].values, ins[2].values
        steps = ins[4].values if len(ins) > 4 and ins[4] is not None else (1,)
        return _set(imp, node, Dims(first.values[slice(starts[0], ends[0], steps[0])]))
    a, b = ins[0], ins[1]   # Add, Sub, Mul, Div
    if len(a.values) != len(b.values) and not (a.scalar or b.scalar):
        raise imp.unsupported("integer arithmetic on shapes of different lengths")
    n = max(len(a.values), len(b.values))
    pairs = [(a.values[i % len(a.values)], b.values[i % len(b.values)]) for i in range(n)]
    out = []
    for x, y in pairs:
        if isinstance(x, int) and isinstance(y, int):
            out.append(ARITH[op](x, y))
        elif (op in ("Mul", "Div") and y == 1) or (op in ("Add", "Sub") and y == 0):
            out.append(x)
        elif (op == "Mul" and x == 1) or (op == "Add" and x == 0):
            out.append(y)
        else:
            sym = x if isinstance(x, str) else y
            raise imp.unsupported(f"{op} on the symbolic dim '{sym}' of a shape")
    return _set(imp, node, Dims(tuple(out), a.scalar and b.scalar))


def _set(imp: Importer, node: onnx.NodeProto, dims: Dims) -> bool:
    out = node.output[0]
    if all(isinstance(d, int) for d in dims.values):   # known: an ordinary constant
        data = np.array(dims.values[0] if dims.scalar else list(dims.values), np.int64)
        imp.consts[out] = Const(out, data)
    else:
        imp.shapes[out] = dims
    return True


def reshape_target(imp: Importer, name: str, x_shape: tuple) -> list[int] | None:
    """A folded Reshape target as ints: each symbolic dim ``0`` where it copies the input's
    dim at the same place, else ``−1`` (once); None if ``name`` is no folded shape."""
    dims = imp.shapes.get(name)
    if dims is None:
        return None
    out = []
    for i, d in enumerate(dims.values):
        out.append(d if isinstance(d, int) else 0 if i < len(x_shape) and x_shape[i] == d
                   else -1)
    if out.count(-1) > 1:
        raise imp.unsupported(f"a Reshape to {list(dims.values)}: more than one dim unknown")
    return out
