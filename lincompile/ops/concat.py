"""concat along the last axis (``torch.cat(xs, dim=-1)``, the join of a multi-branch MLP)
and slice_last (``x[..., start:stop]``, its gradient): strided row copies."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import FLOATS, OpDef, dims_match, expect, fmt_shape, register, same_dtype


def last_axis(axis: int, rank: int) -> bool:
    """``axis`` names the last of ``rank`` axes (``-1`` or ``rank − 1``)."""
    return rank > 0 and -rank <= axis < rank and axis % rank == rank - 1


def _width(x, what: str) -> int:
    if not x.shape or not isinstance(x.shape[-1], int):
        raise ShapeError(f"{what} '{x.name}' {fmt_shape(x.shape)} needs a fixed last dim")
    return x.shape[-1]


def offsets(xs) -> list[int]:
    """Where each input starts in the output's last axis (and the width at the end)."""
    out = [0]
    for x in xs:
        out.append(out[-1] + x.shape[-1])
    return out


def _concat_infer(*xs, axis):
    if len(xs) < 2:
        raise ShapeError(f"concat joins 2 or more tensors, got {len(xs)}")
    first = xs[0]
    expect(first, dtypes=(*FLOATS, "int64"))
    same_dtype(*xs)
    r = len(first.shape)
    if not last_axis(axis, r):
        raise ShapeError(f"concat over axis {axis} of '{first.name}' {fmt_shape(first.shape)}: "
                         "only the last axis (axis=-1) is supported")
    lead = list(first.shape[:-1])
    for x in xs:
        _width(x, "concat input")
        if len(x.shape) != r or not all(map(dims_match, lead, x.shape[:-1])):
            raise ShapeError(f"concat input '{x.name}' has shape {fmt_shape(x.shape)} but "
                             f"'{first.name}' has {fmt_shape(first.shape)}; all dims but the "
                             "last must match")
        lead = [a if isinstance(a, int) else b for a, b in zip(lead, x.shape[:-1])]
    return [(first.dtype, (*lead, offsets(xs)[-1]))]


def _concat_grad(g, dy, *xs, index, **_):
    """Input ``index`` gets its slice of dY."""
    at = offsets(xs)
    return g.slice_last(dy, at[index], at[index + 1])


concat = register(OpDef(
    "concat", ("x0", "x"), _concat_infer,
    lambda *xs, axis: np.concatenate(xs, axis=axis),
    grad=(_concat_grad,), variadic=True,
    onnx=lambda b, ins, outs, axis: b.node("Concat", ins, outs, axis=-1),
    attrs={"axis": -1}, kernel="row_copy",
    doc="join along the last axis (all other dims equal)",
))


def _slice_infer(x, *, start, stop):
    expect(x, dtypes=(*FLOATS, "int64"))
    c = _width(x, "slice_last input")
    if not 0 <= start <= stop <= c:
        raise ShapeError(f"slice [{start}:{stop}] of '{x.name}' {fmt_shape(x.shape)}: needs "
                         f"0 ≤ start ≤ stop ≤ {c}")
    return [(x.dtype, (*x.shape[:-1], stop - start))]


def _slice_onnx(b, ins, outs, start, stop):
    def ints(v, name):
        return b.const(np.array([v], np.int64), name)

    b.node("Slice", [ins[0], ints(start, "starts"), ints(stop, "ends"), ints(-1, "axes")], outs)


slice_last = register(OpDef(
    "slice_last", ("x",), _slice_infer,
    lambda x, *, start, stop: np.ascontiguousarray(x[..., start:stop]),
    onnx=_slice_onnx, attrs={"start": 0, "stop": 0}, kernel="row_copy",
    doc="x[..., start:stop] (the gradient of concat)",
))
