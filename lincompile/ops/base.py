"""The op declaration: one record holds everything lincompile knows about an op.

An op's shape rule, numpy reference, gradient rule, ONNX lowering and kernel
template live together in one :class:`OpDef`, registered once with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import ShapeError, UnsupportedOpError

if TYPE_CHECKING:
    from ..ir import Dim, Value

#: A shape rule returns one ``(dtype, shape)`` per output.
TensorType = tuple[str, tuple["Dim", ...]]
FLOATS = ("float32", "float64")


@dataclass(frozen=True)
class OpDef:
    """Everything about one op.

    ``inputs`` names the inputs (a trailing ``?`` marks an optional one); ``variadic``: the
    last one repeats (any number of inputs from ``min_inputs`` on, as in ``concat``).
    ``grad`` has one rule per input, ``None`` where no gradient flows; a rule is
    ``rule(g, dy, *inputs, y=output, **attrs) -> Value`` and builds IR nodes in ``g``
    (a variadic op's last rule serves every repeat; its rules are told which input by
    ``index=i``).
    ``grad=None`` as a whole means the op is not differentiable at all.
    ``onnx(b, ins, outs, **attrs)`` emits the ONNX nodes (see ``backends/onnx_builder``);
    ``onnx_functions`` names the ``lincompile.*`` local functions it may call, which the
    importer maps back to this op; ``function_attrs`` gives the attributes a function's
    name implies (``GeluTanh`` is ``gelu`` with ``approximate="tanh"``); ``onnx_derived``
    maps float attributes the lowering adds for precision (``1 − β`` exactly, which a
    float32 ``β`` cannot give) to how they follow from the others: the importer checks them
    against the others and drops them again.
    ``domains`` hints what random feeds suit each input ("label", "nonneg", "count",
    "positive"), for validation.
    """

    name: str
    inputs: tuple[str, ...]
    infer: Callable[..., list[TensorType]]
    reference: Callable[..., Any]
    grad: tuple[Callable[..., Value] | None, ...] | None = None
    onnx: Callable[..., None] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    kernel: str | None = None
    onnx_functions: tuple[str, ...] = ()
    function_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    onnx_derived: Mapping[str, Callable[[dict], float]] = field(default_factory=dict)
    domains: tuple[str | None, ...] = ()
    doc: str = ""
    variadic: bool = False

    @property
    def min_inputs(self) -> int:
        return sum(1 for n in self.inputs if not n.endswith("?"))

    @property
    def max_inputs(self) -> int | None:
        """The most inputs a node may have (None: no limit, a variadic op)."""
        return None if self.variadic else len(self.inputs)

    def grad_rule(self, i: int) -> Callable[..., Value] | None:
        """The gradient rule of input ``i`` (None where no gradient flows)."""
        if self.grad is None:
            return None
        if self.variadic:   # one rule for all repeats: it is told which input
            rule = self.grad[min(i, len(self.grad) - 1)]
            return None if rule is None else partial(rule, index=i)
        return self.grad[i] if i < len(self.grad) else None

    def input_name(self, i: int) -> str:
        return self.inputs[min(i, len(self.inputs) - 1) if self.variadic else i].rstrip("?")

    def domain(self, i: int) -> str | None:
        return self.domains[i] if i < len(self.domains) else None

    def check_attrs(self, attrs: dict[str, Any], node: str) -> dict[str, Any]:
        unknown = sorted(set(attrs) - set(self.attrs))
        if unknown:
            raise ShapeError(
                f"node '{node}' ({self.name}): unknown attribute(s) {unknown}; "
                f"'{self.name}' takes {sorted(self.attrs) or 'none'}"
            )
        return {**self.attrs, **attrs}


OPS: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    """Add an op declaration to the registry (once per name)."""
    if op.name in OPS:
        raise ValueError(f"op '{op.name}' declared twice")
    OPS[op.name] = op
    return op


def get_op(name: str) -> OpDef:
    """The declaration of IR op ``name``, or an error listing the declared ops."""
    try:
        return OPS[name]
    except KeyError:
        raise UnsupportedOpError(
            f"unknown op '{name}'; lincompile declares: {', '.join(sorted(OPS))}"
        ) from None


# ----------------------------------------------------------------- shape helpers
def fmt_shape(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def dims_match(a: Dim, b: Dim) -> bool:
    """Two dims can be equal: ints must match, a symbolic dim matches anything."""
    return a == b or isinstance(a, str) or isinstance(b, str)


def expect(v: Value, *, rank: int | None = None, dtypes: Sequence[str] = FLOATS,
           what: str = "input") -> None:
    """Raise a ShapeError naming ``v`` unless it has the given rank and a dtype in ``dtypes``."""
    if v.dtype not in dtypes:
        raise ShapeError(f"{what} '{v.name}' has dtype {v.dtype}, expected {' or '.join(dtypes)}")
    if rank is not None and len(v.shape) != rank:
        raise ShapeError(
            f"{what} '{v.name}' has shape {fmt_shape(v.shape)} (rank {len(v.shape)}), "
            f"expected rank {rank}"
        )


def same_dtype(*vs: Value) -> str:
    """The common dtype of ``vs``, or a ShapeError naming the odd one."""
    for v in vs[1:]:
        if v.dtype != vs[0].dtype:
            raise ShapeError(
                f"'{v.name}' has dtype {v.dtype} but '{vs[0].name}' has {vs[0].dtype}; "
                "they must match"
            )
    return vs[0].dtype


def same_shape(a: Value, b: Value) -> tuple[Dim, ...]:
    if len(a.shape) != len(b.shape) or not all(map(dims_match, a.shape, b.shape)):
        raise ShapeError(
            f"'{a.name}' has shape {fmt_shape(a.shape)} but '{b.name}' has "
            f"{fmt_shape(b.shape)}; they must match"
        )
    return tuple(x if isinstance(x, int) else y for x, y in zip(a.shape, b.shape))


def broadcast(a: Value, b: Value) -> tuple[Dim, ...]:
    """numpy broadcasting of two shapes, with symbolic dims."""
    ra, rb = list(a.shape), list(b.shape)
    n = max(len(ra), len(rb))
    ra, rb = [1] * (n - len(ra)) + ra, [1] * (n - len(rb)) + rb
    out: list[Dim] = []
    for x, y in zip(ra, rb):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif isinstance(x, str) or isinstance(y, str):
            out.append(y if isinstance(x, str) else x)
        else:
            raise ShapeError(
                f"shapes {fmt_shape(a.shape)} of '{a.name}' and {fmt_shape(b.shape)} of "
                f"'{b.name}' do not broadcast"
            )
    return tuple(out)


def scalar(v: Value, dtypes: Sequence[str], what: str) -> None:
    if v.shape != () or v.dtype not in dtypes:
        raise ShapeError(
            f"{what} '{v.name}' must be a {' or '.join(dtypes)} scalar, got "
            f"{v.dtype}{fmt_shape(v.shape)}"
        )
