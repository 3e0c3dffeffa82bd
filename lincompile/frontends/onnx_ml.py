"""scikit-learn's linear models: the ``ai.onnx.ml`` ops skl2onnx writes for them.

- ``Scaler`` (``StandardScaler``): ``y = (x − offset) · scale`` in float32, per feature or one
  value for all, imported as constant ``add``/``mul`` ops (nothing to train);
- ``LinearRegressor`` (``LinearRegression``, ``Ridge``, ``Lasso``, ``SGDRegressor``): one
  trainable Linear, ``weight [targets, C_in]`` from the flattened ``coefficients``, ``bias``
  from ``intercepts``;
- ``LinearClassifier`` (``LogisticRegression``, ``LinearSVC``, ``RidgeClassifier``): one
  trainable Linear computing the class scores before ``post_transform``, which are the logits
  of the classifier head that :mod:`.heads` cuts off (the post-transform, the labels and the
  ``Normalizer``/``ZipMap`` nodes after it stay in the file, untouched). Where the node holds
  skl2onnx's two-class form, rows ``[−w; w]`` and intercepts ``[−b, b]``, the trainable
  parameters are the one row ``w`` and ``b`` and the logits the one column ``z = x·wᵀ + b``.

The parameters live in node attributes, not initializers: the layout map records them as
``{"source": <node>, "attribute": "coefficients", "transform": ...}`` (:mod:`.layout`).
These ops compute in float32 (onnxruntime casts other inputs to float32), so lincompile
imports them for float32 inputs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from ..errors import ShapeError

if TYPE_CHECKING:  # onnx_import imports heads, which imports this module
    from ..ir import Value
    from .onnx_import import Importer

DOMAIN = "ai.onnx.ml"


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _floats(at: dict, name: str) -> np.ndarray:
    return np.array(at.get(name, []), np.float32)


def _text(at: dict, name: str, default: str) -> str:
    v = at.get(name, default)
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


# ------------------------------------------------------------------ LinearClassifier form
@dataclass
class ClassifierForm:
    """What a ``LinearClassifier`` node computes, as lincompile trains it.

    ``rows``: coefficient rows (one per class, as ``intercepts``); ``pair``: skl2onnx's
    two-class form ``[−w; w]``, ``[−b, b]``, trained as the one row ``w``; ``kind``: the head
    kind (``softmax``; ``sigmoid`` for the pair; ``scores`` for ``post_transform`` NONE, whose
    scores are trained as softmax logits); ``error``: why the node is not imported, or None.
    """

    rows: int
    pair: bool
    kind: str
    error: str | None = None


def classifier_form(node: onnx.NodeProto) -> ClassifierForm:
    """The form of a ``LinearClassifier`` node (see :class:`ClassifierForm`)."""
    at = _attrs(node)
    coef, icpt = _floats(at, "coefficients"), _floats(at, "intercepts")
    post = _text(at, "post_transform", "NONE")
    labels = len(at.get("classlabels_ints", []) or at.get("classlabels_strings", []))
    k = icpt.size
    if k == 0:
        return ClassifierForm(0, False, "none", "no intercepts (onnxruntime counts the classes "
                              "by them): one per coefficient row is needed")
    if k == 1:
        return ClassifierForm(1, False, "none", "one coefficient row: onnxruntime and the ONNX "
                              "reference disagree on its scores; lincompile imports one row per "
                              "class, or skl2onnx's two-class rows [-w; w]")
    if coef.size == 0 or coef.size % k:
        return ClassifierForm(k, False, "none", f"{coef.size} coefficients do not make "
                              f"{k} rows (one per intercept)")
    if labels != k:
        return ClassifierForm(k, False, "none", f"{k} coefficient rows but {labels} class "
                              "labels; lincompile imports one row per class")
    rows = coef.reshape(k, -1)
    pair = k == 2 and np.array_equal(rows[0], -rows[1]) and icpt[0] == -icpt[1]
    if post == "SOFTMAX":
        return ClassifierForm(k, False, "softmax")
    if post == "LOGISTIC" and pair:
        return ClassifierForm(k, True, "sigmoid")
    if post == "NONE":
        return ClassifierForm(k, pair, "sigmoid" if pair else "scores")
    what = ("LOGISTIC on independent rows (one-vs-rest)" if post == "LOGISTIC" else post)
    return ClassifierForm(k, pair, "none", f"post_transform {what}: lincompile imports SOFTMAX, "
                          "NONE (scores trained as logits), and LOGISTIC on the two-class rows "
                          "[-w; w]")


def logits_name(node: onnx.NodeProto, taken: set[str]) -> str:
    """The name of a LinearClassifier's scores before ``post_transform`` (a tensor the file
    does not have): ``<node>.logits``, made unique against ``taken``."""
    base = f"{node.name or node.op_type}.logits"
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


# ------------------------------------------------------------------ import functions
def _input(imp: Importer, node: onnx.NodeProto) -> Value:
    """The node's float32 ``[N, C]`` input."""
    x = imp.value(node.input[0])
    if x.dtype != "float32" or len(x.shape) != 2:
        raise imp.unsupported(f"input '{x.name}' is {x!r}: ai.onnx.ml ops compute in float32, "
                              "and lincompile imports them on float32 [N, C] inputs")
    return x


def _source(imp: Importer, node: onnx.NodeProto) -> str:
    """How the layout map names the node: its name where that is its own, else its first
    output (a tensor name, unique in every model)."""
    same = sum(n.name == node.name for n in imp.nodes)
    return node.name if node.name and same == 1 else node.output[0]


def _rows(imp: Importer, node: onnx.NodeProto, coef: np.ndarray, rows: int, x: Value):
    """``coef`` as ``[rows, C_in]``; a ShapeError naming the node where it does not fit."""
    c_in = x.shape[1]
    if coef.size == 0 or coef.size % rows or (isinstance(c_in, int) and coef.size != rows * c_in):
        raise ShapeError(f"ONNX node '{node.name or node.op_type}' ({node.op_type}): "
                         f"{coef.size} coefficients do not make {rows} rows of the "
                         f"{c_in} features of '{x.name}'")
    return coef.reshape(rows, -1)


def scaler(imp: Importer, node: onnx.NodeProto) -> Value:
    """``(x − offset) · scale``, as onnxruntime computes it: float32, ``x + (−offset)`` being
    exactly ``x − offset``; both per feature, or both one value for all."""
    at = _attrs(node)
    x = _input(imp, node)
    offset, scale = _floats(at, "offset"), _floats(at, "scale")
    c_in = x.shape[1]
    if scale.size == 0 or offset.size != scale.size or scale.size not in (1, c_in):
        raise imp.unsupported(f"offset ({offset.size} values) and scale ({scale.size}) must "
                              f"both have one value per feature ({c_in}) or one for all, as "
                              "onnxruntime requires")
    shape = () if scale.size == 1 else (scale.size,)
    base = node.name or node.op_type
    minus = imp.param(imp.tmp(f"{base}.minus_offset"), (-offset).reshape(shape), const=True)
    factor = imp.param(imp.tmp(f"{base}.scale"), scale.reshape(shape), const=True)
    return imp.emit("mul", [imp.emit("add", [x, minus]), factor])


def linear_regressor(imp: Importer, node: onnx.NodeProto) -> Value:
    """One trainable Linear: ``coefficients`` ``[targets × C_in]`` row by row, ``intercepts``
    (optional) ``[targets]``; ``post_transform`` NONE only."""
    at = _attrs(node)
    post = _text(at, "post_transform", "NONE")
    if post != "NONE":
        raise imp.unsupported(f"post_transform {post}: lincompile imports NONE only")
    x = _input(imp, node)
    targets = int(at.get("targets", 1))
    icpt = _floats(at, "intercepts")
    if targets < 1 or icpt.size not in (0, targets):
        raise imp.unsupported(f"{icpt.size} intercepts for {targets} targets (onnxruntime "
                              "ignores them then): give one per target, or none")
    w = _rows(imp, node, _floats(at, "coefficients"), targets, x)
    base, src = node.name or node.op_type, _source(imp, node)
    ins = [x, imp.attribute_param(f"{base}.weight", w, src, "coefficients", "reshape")]
    if icpt.size:
        ins.append(imp.attribute_param(f"{base}.bias", icpt, src, "intercepts", "identity"))
    return imp.emit("linear", ins)


def linear_classifier(imp: Importer, node: onnx.NodeProto) -> None:
    """The class scores before ``post_transform``, bound to the head's logits name."""
    form = classifier_form(node)
    if form.error:
        raise imp.unsupported(form.error)
    head = imp.head
    if head is None or head.kind == "none" or node.output[1:2] != [head.logits]:
        raise imp.unsupported("its label and probability outputs must lead to the model's "
                              "outputs through a classifier head only (Normalizer, ZipMap, "
                              "Cast, ...): lincompile trains the scores before it as logits")
    at = _attrs(node)
    x = _input(imp, node)
    w = _rows(imp, node, _floats(at, "coefficients"), form.rows, x)
    b = _floats(at, "intercepts")
    how = "pair" if form.pair else "reshape"
    if form.pair:  # [−w; w], [−b, b]: the second row is the positive class's logit
        w, b = w[1:], b[1:]
    base, src = node.name or node.op_type, _source(imp, node)
    ins = [x, imp.attribute_param(f"{base}.weight", w, src, "coefficients", how),
           imp.attribute_param(f"{base}.bias", b, src, "intercepts",
                               "pair" if form.pair else "identity")]
    imp.bind(helper.make_node(node.op_type, [], [head.logits]), imp.emit("linear", ins))
    return None


IMPORTERS = {"Scaler": scaler, "LinearRegressor": linear_regressor,
             "LinearClassifier": linear_classifier}
