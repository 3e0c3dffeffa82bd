"""``lincompile explain``: the chain-rule table of docs/derivation.md, filled in for each
Linear of a graph.

For every ``linear`` node: its forward pass, the element-form partial derivatives, and the
three gradients in element form and matrix form, with the graph's own tensor names and
shapes. ``T.grad`` is ∂loss/∂T, as lincompile's training graphs name it.

>>> import lincompile as lc
>>> g = lc.Graph("m"); x = g.input("x", ["N", 3]); _ = g.output(g.linear(x, 2, name="fc"))
>>> print(explain(g).splitlines()[3])
  forward   fc[n, o] = fc.bias[o] + Σ_k fc.weight[o, k] · x[n, k]
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .errors import LincompileError
from .ir import Graph, Node, Value
from .ops.base import fmt_shape

FORMATS = ("text", "markdown", "latex")


@dataclass
class Row:
    """One gradient: its tensor, element form, matrix form and shapes (a ``·`` b → c)."""

    grad: Value
    element: tuple[str, str]  # (left side, right side)
    matrix: tuple[str, str]
    shapes: str
    computed_by: str = ""


@dataclass
class Layer:
    node: Node
    forward: tuple[str, str]
    forward_matrix: tuple[str, str]
    forward_shapes: str
    partials: list[tuple[str, str, str]]  # (∂out/∂X, value, nonzero when)
    rows: list[Row]


def _s(v: Value | tuple) -> str:
    return fmt_shape(v.shape if isinstance(v, Value) else v)


def is_training(graph: Graph) -> bool:
    return graph.meta.get("lincompile.role") == "training" or any(
        v.name == "loss" or v.name.endswith(".grad") for v in graph.outputs)


def linears(graph: Graph) -> list[Node]:
    """The graph's Linear layers: ``linear`` nodes whose weight is a parameter or an input
    (not a gradient computed inside a training graph)."""
    given = {v.name for v in graph.inputs} | set(graph.params)
    return [n for n in graph.nodes if n.op == "linear" and n.inputs[1].name in given]


def layer(graph: Graph, n: Node) -> Layer:
    x, w, *rest = n.inputs
    b, y = (rest[0] if rest else None), n.outputs[0]
    # rows: an input [*, C_in] is the matrix of its rows (leading dims flattened)
    N, c_out, c_in = "·".join(map(str, x.shape[:-1])), w.shape[0], w.shape[1]
    dy = f"{y.name}.grad"
    fwd = f"Σ_k {w.name}[o, k] · {x.name}[n, k]"
    rows = [
        Row(x, (f"{x.name}.grad[i, j]", f"Σ_q {w.name}[q, j] · {dy}[i, q]"),
            (f"{x.name}.grad", f"{dy} · {w.name}"), f"{_s((N, c_out))}·{_s((c_out, c_in))} → "
            f"{_s((N, c_in))}"),
        Row(w, (f"{w.name}.grad[i, j]", f"Σ_p {dy}[p, i] · {x.name}[p, j]"),
            (f"{w.name}.grad", f"{dy}ᵀ · {x.name}"),
            f"{_s((c_out, N))}·{_s((N, c_in))} → {_s((c_out, c_in))}"),
    ]
    partials = [(x.name + "[i, j]", f"{w.name}[q, j]", "p = i"),
                (w.name + "[i, j]", f"{x.name}[p, j]", "q = i")]
    if b is not None:
        rows.append(Row(b, (f"{b.name}.grad[j]", f"Σ_p {dy}[p, j]"),
                        (f"{b.name}.grad", f"1ᵀ · {dy}"),
                        f"{_s((1, N))}·{_s((N, c_out))} → {_s((c_out,))}"))
        partials.append((b.name + "[j]", "1", "q = j"))
    if is_training(graph):
        producers = graph.producers()
        for r in rows:
            p = producers.get(f"{r.grad.name}.grad")
            frozen = r.grad.name in graph.params
            r.computed_by = (f"computed by node '{p.name}' ({p.op})" if p else
                             "not computed (a frozen parameter)" if frozen else
                             "not computed (nothing needs it)")
    return Layer(
        n, (f"{y.name}[n, o]", (f"{b.name}[o] + " if b is not None else "") + fwd),
        (y.name, f"{x.name} · {w.name}ᵀ" + (f" + {b.name}" if b is not None else "")),
        f"{_s(x)}·{_s((c_in, c_out))} → {_s(y)}", partials, rows)


def _header(graph: Graph, n: Node, esc: Callable[[str], str] = str) -> str:
    """One line naming the layer; ``esc`` escapes each name and symbolic dim for a format."""
    x, w = n.inputs[:2]
    s = lambda v: "[" + ", ".join(esc(str(d)) for d in v.shape) + "]"
    bias = (f", bias {esc(n.inputs[2].name)} {s(n.inputs[2])}" if len(n.inputs) > 2
            else ", no bias")
    return (f"Linear '{esc(n.name)}': {esc(x.name)} {s(x)} → {esc(n.outputs[0].name)} "
            f"{s(n.outputs[0])}; weight {esc(w.name)} {s(w)} = [C_out, C_in]{bias}")


def _text(graph: Graph, layers: list[Layer]) -> list[str]:
    out = []
    for L in layers:
        y = L.node.outputs[0].name
        out += [_header(graph, L.node),
                f"  forward   {L.forward[0]} = {L.forward[1]}",
                f"            {L.forward_matrix[0]} = {L.forward_matrix[1]}   "
                f"{L.forward_shapes}",
                "  partials  (nonzero only when the condition holds)"]
        out += [f"            ∂{y}[p, q] / ∂{a} = {v}   when {c}" for a, v, c in L.partials]
        out.append(f"  gradients (chain rule, summing over every (p, q) of {y}.grad)")
        for r in L.rows:
            out += [f"            {r.element[0]} = {r.element[1]}",
                    f"            {r.matrix[0]} = {r.matrix[1]}   {r.shapes}"]
            if r.computed_by:
                out.append(f"              in this graph: {r.computed_by}")
        out.append("")
    return out


#: Characters that could start markup, a link, an autolink, an entity or HTML inside a
#: line of Markdown text (GitHub's flavour and common extensions); escaped with "\\".
_MD_SPECIAL = set("\\`*_{}[]<>#|~&$:")


def _printable(s: str) -> str:
    """``s`` with control characters (newlines, tabs, …) shown as U+FFFD: one line stays one
    line."""
    return "".join("\ufffd" if ord(c) < 32 or ord(c) == 127 else c for c in s)


def _md(s: str) -> str:
    """``s`` as literal Markdown text (CommonMark backslash escapes)."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in _printable(s))


def _code(s: str, table: bool = True) -> str:
    """``s`` as a Markdown code span, whatever backticks it holds; in a table cell a ``|``
    must be escaped even inside code (GitHub's table syntax)."""
    s = _printable(s)
    if table:
        s = s.replace("|", "\\|")
    fence = "`" * (max((len(r) for r in re.findall("`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _markdown(graph: Graph, layers: list[Layer]) -> list[str]:
    out = []
    for L in layers:
        y = L.node.outputs[0].name
        out += [f"### {_header(graph, L.node, _md)}", "",
                f"Forward: {_code(f'{L.forward[0]} = {L.forward[1]}', False)}, i.e. "
                f"{_code(f'{L.forward_matrix[0]} = {L.forward_matrix[1]}', False)} "
                f"({_code(L.forward_shapes, False)}).", "",
                "| partial derivative | is nonzero only when | value |", "|---|---|---|"]
        out += [f"| {_code(f'∂{y}[p, q] / ∂{a}')} | {c} | {_code(v)} |"
                for a, v, c in L.partials]
        out += ["", "| gradient | element form | matrix form | shapes |", "|---|---|---|---|"]
        out += [f"| {_code(r.grad.name + '.grad')} | {_code(f'{r.element[0]} = {r.element[1]}')}"
                f" | {_code(f'{r.matrix[0]} = {r.matrix[1]}')} | {_code(r.shapes)} |"
                for r in L.rows]
        computed = [f"{_code(r.grad.name + '.grad', False)} {_md(r.computed_by)}"
                    for r in L.rows if r.computed_by]
        if computed:
            out += ["", "In this graph: " + "; ".join(computed) + "."]
        out.append("")
    return out


_TEX = {"_": r"\_", "{": r"\{", "}": r"\}", "#": r"\#", "%": r"\%", "&": r"\&", "$": r"\$",
        "^": r"\wedge{}", "~": r"\sim{}", "\\": r"\backslash{}"}
_TEXT = {**_TEX, "^": r"\textasciicircum{}", "~": r"\textasciitilde{}",
         "\\": r"\textbackslash{}", "→": r"$\to$"}
_MATH = {"Σ_k": r"\sum_k", "Σ_p": r"\sum_p", "Σ_q": r"\sum_q", "·": r"\cdot", "ᵀ": "^\\top",
         "→": r"\to", "∂": r"\partial "}


def _tex(s: str, names: list[str]) -> str:
    """``s`` as LaTeX math: tensor names in ``\\mathtt``, the rest translated."""
    parts, i = [], 0
    ordered = sorted(names, key=len, reverse=True)
    while i < len(s):
        name = next((n for n in ordered if s.startswith(n, i)), None)
        if name and (i == 0 or not (s[i - 1].isalnum() or s[i - 1] in "._")):
            parts.append(r"\mathtt{" + "".join(_TEX.get(c, c) for c in name) + "}")
            i += len(name)
            continue
        sym = next((k for k in _MATH if s.startswith(k, i)), None)
        parts.append(_MATH[sym] + " " if sym else _TEX.get(s[i], s[i]))
        i += len(sym) if sym else 1
    return "".join(parts)


def _latex(graph: Graph, layers: list[Layer]) -> list[str]:
    out = []
    for L in layers:
        names = [v.name for v in (*L.node.inputs, *L.node.outputs)]
        names += [n + ".grad" for n in names]
        y = L.node.outputs[0].name
        t = lambda s: _tex(s, names)
        head = "".join(_TEXT.get(c, c) for c in _header(graph, L.node))
        out += [r"\paragraph{" + head + "}",
                r"\begin{align*}",
                f"{t(L.forward[0])} &= {t(L.forward[1])} \\\\",
                f"{t(L.forward_matrix[0])} &= {t(L.forward_matrix[1])}"
                f" && {t(L.forward_shapes)} \\\\[4pt]"]
        out += [rf"\frac{{\partial {t(y + '[p, q]')}}}{{\partial {t(a)}}} &= {t(v)}"
                rf" && \text{{if }} {c},\ 0 \text{{ otherwise}} \\" for a, v, c in L.partials]
        out[-1] += "[4pt]"
        for k, r in enumerate(L.rows):
            end = "" if k == len(L.rows) - 1 else r" \\"
            out += [f"{t(r.element[0])} &= {t(r.element[1])} \\\\",
                    f"{t(r.matrix[0])} &= {t(r.matrix[1])} && {t(r.shapes)}{end}"]
        out += [r"\end{align*}", ""]
    return out


def explain(graph: Graph, fmt: str = "text") -> str:
    """The derivation of every Linear of ``graph`` in ``fmt`` (text, markdown or latex)."""
    render = {"text": _text, "markdown": _markdown, "latex": _latex}.get(fmt)
    if render is None:
        raise LincompileError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    nodes = linears(graph)
    role = "training" if is_training(graph) else "model"
    head = (f"graph '{graph.name}' ({role}): {len(nodes)} Linear layer(s); "
            "T.grad is ∂loss/∂T for the scalar loss")
    if not nodes:
        head = f"graph '{graph.name}' ({role}) has no Linear layer: nothing to explain"
    first = {"text": head, "markdown": "## " + head.replace(f"'{graph.name}'",
                                                            f"'{_md(graph.name)}'", 1),
             "latex": "% " + head}[fmt]
    return "\n".join([first, "", *render(graph, [layer(graph, n) for n in nodes])]).rstrip() + "\n"
