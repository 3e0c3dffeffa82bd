"""The IR: typed values, nodes and graphs, and the builder that makes them.

>>> import lincompile as lc
>>> g = lc.Graph("mlp", seed=0)
>>> x = g.input("x", ["N", 4])
>>> _ = g.output(g.linear(g.relu(g.linear(x, 8, name="fc1")), 3, name="fc2"))
>>> g.outputs[0]
fc2: float32[N, 3]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from .arrays import aligned_copy
from .errors import LincompileError, ShapeError
from .ops import get_op
from .ops.base import fmt_shape

Dim = Union[int, str]  # noqa: UP007  (a runtime alias, Python 3.10)
DTYPES = ("float32", "float64", "int64")


@dataclass(eq=False)
class Value:
    """A tensor in the graph, defined once: by an input, a parameter or a node."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def __repr__(self) -> str:
        return f"{self.name}: {self.dtype}{fmt_shape(self.shape)}"


@dataclass(eq=False)
class Node:
    """One op application: ``outputs = op(inputs; attrs)``."""

    op: str
    name: str
    inputs: list[Value]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Param:
    """A named initial value: trainable, frozen, or a constant the graph itself made."""

    value: Value
    data: np.ndarray
    trainable: bool = True
    const: bool = False


class Graph:
    """Inputs, parameters, nodes in topological order, outputs; plus builder methods."""

    def __init__(self, name: str = "model", seed: int = 0):
        self.name = name
        self.inputs: list[Value] = []
        self.params: dict[str, Param] = {}
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        #: ``lincompile.*`` metadata (lr, loss, optimizer) written into exported files.
        self.meta: dict[str, str] = {}
        #: For training graphs: the starting value of every state input (params, m, v, …).
        self.initial_state: dict[str, np.ndarray] = {}
        self.values: dict[str, Value] = {}
        self.rng = np.random.default_rng(seed)
        #: bindings of the symbolic dims that check_dims has accepted
        self._dims_ok: set[tuple] = set()

    # ------------------------------------------------------------------ definitions
    def _define(self, name: str, dtype: str, shape: Sequence[Dim]) -> Value:
        if not isinstance(name, str) or not name:
            raise ShapeError(f"a tensor name must be a non-empty string, got {name!r}")
        if name in self.values:
            raise ShapeError(f"tensor '{name}' is already defined in graph '{self.name}'")
        if dtype not in DTYPES:
            raise ShapeError(f"tensor '{name}': dtype {dtype!r} is not one of {DTYPES}")
        for d in shape:
            if not (isinstance(d, str) and d) and not (isinstance(d, (int, np.integer)) and d >= 0):
                raise ShapeError(f"tensor '{name}': dim {d!r} must be an int ≥ 0 or a name")
        v = Value(name, dtype, tuple(d if isinstance(d, str) else int(d) for d in shape))
        self.values[name] = v
        return v

    def fresh(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2``… if taken (by a tensor or a node)."""
        taken = self.values.keys() | {n.name for n in self.nodes}
        if base not in taken:
            return base
        return next(f"{base}_{i}" for i in range(1, len(taken) + 2) if f"{base}_{i}" not in taken)

    def input(self, name: str, shape: Sequence[Dim], dtype: str = "float32") -> Value:
        """Declare a graph input; a str dim (``"N"``) is symbolic."""
        v = self._define(name, dtype, shape)
        self.inputs.append(v)
        return v

    def param(self, name: str, data: np.ndarray, trainable: bool = True) -> Value:
        """Declare a named parameter with its initial value."""
        data = np.asarray(data, order="C")
        v = self._define(name, str(data.dtype), data.shape)
        self.params[name] = Param(v, data, trainable)
        return v

    def const(self, data: np.ndarray, name: str = "const") -> Value:
        """A constant made by lincompile itself (frozen, never a trainable parameter)."""
        data = np.asarray(data, order="C")
        v = self._define(self.fresh(name), str(data.dtype), data.shape)
        self.params[v.name] = Param(v, data, trainable=False, const=True)
        return v

    def output(self, value: Value, name: str | None = None) -> Value:
        """Mark ``value`` as a graph output, renaming it to ``name`` if given."""
        if name is not None and name != value.name:
            self.rename(value, name)
        self.outputs.append(value)
        return value

    def rename(self, value: Value, name: str) -> None:
        if name in self.values:
            raise ShapeError(f"cannot rename '{value.name}' to '{name}': name already used")
        del self.values[value.name]
        value.name = name
        self.values[name] = value

    def apply(self, op: str, inputs: Sequence[Value], name: str | None = None,
              outputs: Sequence[str] | None = None, **attrs: Any) -> Any:
        """Add a node of ``op``; returns its output value (a tuple if several)."""
        opdef = get_op(op)
        name = name or self.fresh(op)
        where = f"node '{name}' ({op})"
        if any(n.name == name for n in self.nodes):
            raise ShapeError(f"{where}: a node with this name already exists")
        attrs = opdef.check_attrs(attrs, name)
        inputs = list(inputs)
        most = opdef.max_inputs
        if len(inputs) < opdef.min_inputs or (most is not None and len(inputs) > most):
            takes = list(opdef.inputs) + (["..."] if most is None else [])
            raise ShapeError(f"{where}: takes inputs {takes}, got {len(inputs)}")
        for v in inputs:
            if not isinstance(v, Value) or self.values.get(v.name) is not v:
                raise ShapeError(f"{where}: input {v!r} is not a value of graph '{self.name}'")
        try:
            types = opdef.infer(*inputs, **attrs)
        except ShapeError as e:
            raise ShapeError(f"{where}: {e}") from None
        names = list(outputs) if outputs else (
            [name] if len(types) == 1 else [f"{name}.{i}" for i in range(len(types))])
        outs = [self._define(n, dt, sh) for n, (dt, sh) in zip(names, types)]
        self.nodes.append(Node(op, name, inputs, outs, attrs))
        return outs[0] if len(outs) == 1 else tuple(outs)

    # ------------------------------------------------------------------ builder API
    def linear(self, x: Value, out_features: int, bias: bool = True,
               name: str | None = None) -> Value:
        """A Linear layer with new parameters ``name.weight`` [out, in] and ``name.bias``,
        initialised as torch.nn.Linear does (U(−1/√in, 1/√in))."""
        name = name or self.fresh("linear")
        fan_in = x.shape[-1] if x.shape else None
        if not isinstance(fan_in, int) or fan_in <= 0:
            raise ShapeError(f"linear '{name}': input '{x.name}' {fmt_shape(x.shape)} needs a "
                             "fixed feature dim")
        bound = 1 / math.sqrt(fan_in)
        dt = np.dtype(x.dtype)
        w = self.param(f"{name}.weight",
                       self.rng.uniform(-bound, bound, (out_features, fan_in)).astype(dt))
        ins = [x, w]
        if bias:
            ins.append(self.param(f"{name}.bias",
                                  self.rng.uniform(-bound, bound, out_features).astype(dt)))
        return self.apply("linear", ins, name=name)

    def matmul(self, a: Value, b: Value, trans_a: bool = False, trans_b: bool = False,
               name: str | None = None) -> Value:
        return self.apply("matmul", [a, b], name, trans_a=trans_a, trans_b=trans_b)

    def reduce_sum(self, x: Value, axes: Sequence[int] | None = None, keepdims: bool = False,
                   name: str | None = None) -> Value:
        return self.apply("reduce_sum", [x], name,
                          axes=None if axes is None else list(axes), keepdims=keepdims)

    def broadcast_to(self, v: Value, like: Value, name: str | None = None) -> Value:
        return self.apply("broadcast_to", [v, like], name)

    def add(self, a: Value, b: Value, name: str | None = None) -> Value:
        return self.apply("add", [a, b], name)

    def mul(self, a: Value, b: Value, name: str | None = None) -> Value:
        return self.apply("mul", [a, b], name)

    def div(self, a: Value, b: Value, name: str | None = None) -> Value:
        return self.apply("div", [a, b], name)

    def concat(self, xs: Sequence[Value], axis: int = -1, name: str | None = None) -> Value:
        """Join ``xs`` (equal leading dims) along the last axis, as ``torch.cat(xs, -1)``."""
        return self.apply("concat", list(xs), name, axis=axis)

    def slice_last(self, x: Value, start: int, stop: int, name: str | None = None) -> Value:
        """``x[..., start:stop]``."""
        return self.apply("slice_last", [x], name, start=int(start), stop=int(stop))

    def relu(self, x: Value, name: str | None = None) -> Value:
        return self.apply("relu", [x], name)

    def sigmoid(self, x: Value, name: str | None = None) -> Value:
        return self.apply("sigmoid", [x], name)

    def tanh(self, x: Value, name: str | None = None) -> Value:
        return self.apply("tanh", [x], name)

    def leaky_relu(self, x: Value, alpha: float = 0.01, name: str | None = None) -> Value:
        return self.apply("leaky_relu", [x], name, alpha=float(alpha))

    def gelu(self, x: Value, approximate: str = "none", name: str | None = None) -> Value:
        """torch.nn.GELU: the erf form, or ``approximate="tanh"``."""
        return self.apply("gelu", [x], name, approximate=approximate)

    def silu(self, x: Value, name: str | None = None) -> Value:
        return self.apply("silu", [x], name)

    def softmax(self, x: Value, name: str | None = None) -> Value:
        """Softmax over the last axis."""
        return self.apply("softmax", [x], name)

    def log_softmax(self, x: Value, name: str | None = None) -> Value:
        """Log-softmax over the last axis."""
        return self.apply("log_softmax", [x], name)

    def layer_norm(self, x: Value, eps: float = 1e-5, elementwise_affine: bool = True,
                   name: str | None = None) -> Value:
        """torch.nn.LayerNorm over the last dim, with new parameters ``name.weight`` (ones)
        and ``name.bias`` (zeros) unless ``elementwise_affine=False``."""
        name = name or self.fresh("layer_norm")
        c = x.shape[-1] if x.shape else None
        if not isinstance(c, int):
            raise ShapeError(f"layer_norm '{name}': input '{x.name}' {fmt_shape(x.shape)} needs "
                             "a fixed last dim")
        ins = [x]
        if elementwise_affine:
            dt = np.dtype(x.dtype)
            ins += [self.param(f"{name}.weight", np.ones(c, dt)),
                    self.param(f"{name}.bias", np.zeros(c, dt))]
        return self.apply("layer_norm", ins, name=name, epsilon=float(eps))

    def flatten(self, x: Value, axis: int = 1, name: str | None = None) -> Value:
        return self.apply("flatten", [x], name, axis=axis)

    def reshape(self, x: Value, shape: Sequence[int], name: str | None = None) -> Value:
        return self.apply("reshape", [x], name, shape=[int(d) for d in shape])

    def mse(self, pred: Value, target: Value, name: str | None = None) -> Value:
        return self.apply("mse", [pred, target], name)

    def softmax_cross_entropy(self, logits: Value, labels: Value,
                              name: str | None = None) -> Value:
        return self.apply("softmax_cross_entropy", [logits, labels], name)

    # ------------------------------------------------------------------ inspection
    def producers(self) -> dict[str, Node]:
        return {v.name: n for n in self.nodes for v in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        uses: dict[str, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                uses.setdefault(v.name, []).append(n)
        return uses

    def trainable(self) -> list[Value]:
        return [p.value for p in self.params.values() if p.trainable and not p.const]

    def verify(self) -> Graph:
        """Check that every value is defined once before use and every type is consistent."""
        defined: dict[str, Value] = {}

        def define(v: Value, where: str) -> None:
            if v.name in defined:
                raise LincompileError(f"graph '{self.name}': tensor '{v.name}' defined twice "
                                      f"(again by {where})")
            defined[v.name] = v

        for v in self.inputs:
            define(v, "an input")
        for p in self.params.values():
            define(p.value, "a parameter")
            if tuple(p.data.shape) != p.value.shape or str(p.data.dtype) != p.value.dtype:
                raise ShapeError(f"parameter '{p.value.name}' holds {p.data.dtype}"
                                 f"{list(p.data.shape)} but is declared {p.value!r}")
        for n in self.nodes:
            where = f"node '{n.name}' ({n.op})"
            for v in n.inputs:
                if defined.get(v.name) is not v:
                    raise LincompileError(f"{where}: input '{v.name}' is used before it is "
                                          "defined (or is not in this graph)")
            opdef = get_op(n.op)
            try:
                types = opdef.infer(*n.inputs, **n.attrs)
            except ShapeError as e:
                raise ShapeError(f"{where}: {e}") from None
            got = [(v.dtype, v.shape) for v in n.outputs]
            if len(types) != len(got) or any(
                t[0] != o[0] or len(t[1]) != len(o[1]) for t, o in zip(types, got)
            ):
                raise ShapeError(f"{where}: outputs are {n.outputs} but the op gives {types}")
            for v in n.outputs:
                define(v, where)
        for v in self.outputs:
            if defined.get(v.name) is not v:
                raise LincompileError(f"graph '{self.name}': output '{v.name}' is never defined")
        return self

    def check_dims(self, dims: Mapping[str, int]) -> None:
        """Check that every op takes the graph's inputs with the symbolic dims set to
        ``dims`` (``{"N": 32}``), and gives the shapes the graph declares.

        A shape rule lets a symbolic dim stand for any size, so a graph can tie one to a
        fixed size or to another symbolic dim (``matmul`` of ``[2, 3]ᵀ`` and ``[N, 4]``
        needs N = 2); backends size their buffers by the declared shapes. Raises a
        ShapeError naming the first node that cannot take ``dims``; each binding is
        checked once.
        """
        key = (len(self.nodes), tuple(sorted(dims.items())))
        if key in self._dims_ok:
            return
        dims = dict(dims)
        given = ", ".join(f"{k}={v}" for k, v in sorted(dims.items()))

        def fixed(v: Value) -> Value:
            return Value(v.name, v.dtype, tuple(dims.get(d, d) if isinstance(d, str) else d
                                                for d in v.shape))

        env: dict[str, Value] = {}
        for n in self.nodes:
            where = f"node '{n.name}' ({n.op}) cannot take {given}"
            try:
                types = get_op(n.op).infer(*(env.get(v.name) or fixed(v) for v in n.inputs),
                                           **n.attrs)
            except ShapeError as e:
                raise ShapeError(f"{where}: {e}") from None
            for v, (dtype, shape) in zip(n.outputs, types):
                for d, c in zip(v.shape, shape):
                    if isinstance(d, str) and isinstance(c, int):
                        d = dims.setdefault(d, c)   # a symbol no input binds: bind it here
                    if isinstance(d, int) and isinstance(c, int) and d != c:
                        raise ShapeError(f"{where}: it computes '{v.name}' as "
                                         f"{fmt_shape(shape)}, declared {fmt_shape(v.shape)}")
                env[v.name] = Value(v.name, dtype, tuple(shape))
        if len(self._dims_ok) > 64:
            self._dims_ok.clear()
        self._dims_ok.add(key)

    def clone(self, name: str | None = None) -> Graph:
        """A deep copy (new Value/Node objects; parameter arrays are copied, onto 64-byte
        lines: a training graph's initial state comes from here)."""
        g = Graph(name or self.name)
        g.rng = self.rng
        g.meta, g.initial_state = dict(self.meta), dict(self.initial_state)
        vmap: dict[int, Value] = {}

        def cp(v: Value) -> Value:
            if id(v) not in vmap:
                vmap[id(v)] = g.values[v.name] = Value(v.name, v.dtype, v.shape)
            return vmap[id(v)]

        g.inputs = [cp(v) for v in self.inputs]
        g.params = {k: Param(cp(p.value), aligned_copy(p.data), p.trainable, p.const)
                    for k, p in self.params.items()}
        g.nodes = [Node(n.op, n.name, [cp(v) for v in n.inputs], [cp(v) for v in n.outputs],
                        dict(n.attrs)) for n in self.nodes]
        g.outputs = [cp(v) for v in self.outputs]
        return g

    def __str__(self) -> str:
        sig = ", ".join(map(repr, self.inputs))
        lines = [f"graph {self.name}({sig}) -> ({', '.join(map(repr, self.outputs))})"]
        for p in self.params.values():
            kind = "const" if p.const else "trainable" if p.trainable else "frozen"
            lines.append(f"  param {p.value!r}  ({kind})")
        for n in self.nodes:
            attrs = {k: v for k, v in n.attrs.items() if v is not None and v is not False}
            a = f"[{', '.join(f'{k}={v}' for k, v in attrs.items())}]" if attrs else ""
            outs = ", ".join(map(repr, n.outputs))
            lines.append(f"  {outs} = {n.op}{a}({', '.join(v.name for v in n.inputs)})")
        return "\n".join(lines)
