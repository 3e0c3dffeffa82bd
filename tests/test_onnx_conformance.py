"""ONNX's own node test cases, an outside oracle, through ``lc.load_onnx`` and every target.

The cases are built in memory by ``onnx.backend.test.loader.load_model_tests(kind="node")``
(onnx ≥ 1.23 ships no ``backend/test/data/node`` on disk). Every case of the op families
below is either in scope (run on every target, compared with the case's expected outputs)
or listed out of scope with a reason (and then must be rejected with a clear error, never
imported into a different computation). The summary line
``onnx node tests: P passed, F failed, S out of scope`` is printed at the end of the pytest run.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections import Counter

import numpy as np
import pytest
from conftest import TARGETS

import lincompile as lc

#: The op families of the issue, by case name; each case is in scope or out of scope.
FAMILY = re.compile(r"^test_(gemm|matmul|relu|sigmoid|tanh|add|sub|mul|flatten|identity|sce)"
                    r"(_|$)")

IN_SCOPE = (
    # Gemm: every attribute and every shape of C (all 11 cases)
    "test_gemm_all_attributes", "test_gemm_alpha", "test_gemm_beta",
    "test_gemm_default_matrix_bias", "test_gemm_default_no_bias",
    "test_gemm_default_scalar_bias", "test_gemm_default_single_elem_vector_bias",
    "test_gemm_default_vector_bias", "test_gemm_default_zero_bias", "test_gemm_transposeA",
    "test_gemm_transposeB",
    "test_matmul_2d",
    "test_relu", "test_sigmoid", "test_sigmoid_example", "test_tanh", "test_tanh_example",
    # float32, same shape or a trailing-dim (bias) broadcast
    "test_add", "test_add_bcast", "test_sub", "test_sub_bcast", "test_sub_example",
    "test_mul", "test_mul_bcast", "test_mul_example",
    "test_flatten_axis0", "test_flatten_axis1", "test_flatten_axis2", "test_flatten_axis3",
    "test_flatten_default_axis", "test_flatten_negative_axis1", "test_flatten_negative_axis2",
    "test_flatten_negative_axis3", "test_flatten_negative_axis4",
    "test_identity",
    # 2-D float32 logits, int64 labels, mean reduction: torch.nn.CrossEntropyLoss()
    "test_sce_mean",
)

#: Every SoftmaxCrossEntropyLoss case ONNX has; only test_sce_mean is torch's default loss.
SCE_CASES = (
    "test_sce_NCd1_mean_weight_negative_ii", "test_sce_NCd1_mean_weight_negative_ii_log_prob",
    "test_sce_NCd1d2d3_none_no_weight_negative_ii",
    "test_sce_NCd1d2d3_none_no_weight_negative_ii_log_prob",
    "test_sce_NCd1d2d3_sum_weight_high_ii", "test_sce_NCd1d2d3_sum_weight_high_ii_log_prob",
    "test_sce_NCd1d2d3d4d5_mean_weight", "test_sce_NCd1d2d3d4d5_mean_weight_log_prob",
    "test_sce_NCd1d2d3d4d5_none_no_weight", "test_sce_NCd1d2d3d4d5_none_no_weight_log_prob",
    "test_sce_mean", "test_sce_mean_3d", "test_sce_mean_3d_log_prob", "test_sce_mean_log_prob",
    "test_sce_mean_no_weight_ii", "test_sce_mean_no_weight_ii_3d",
    "test_sce_mean_no_weight_ii_3d_log_prob", "test_sce_mean_no_weight_ii_4d",
    "test_sce_mean_no_weight_ii_4d_log_prob", "test_sce_mean_no_weight_ii_log_prob",
    "test_sce_mean_weight", "test_sce_mean_weight_ii", "test_sce_mean_weight_ii_3d",
    "test_sce_mean_weight_ii_3d_log_prob", "test_sce_mean_weight_ii_4d",
    "test_sce_mean_weight_ii_4d_log_prob", "test_sce_mean_weight_ii_log_prob",
    "test_sce_mean_weight_log_prob", "test_sce_none", "test_sce_none_log_prob",
    "test_sce_none_weights", "test_sce_none_weights_log_prob", "test_sce_sum",
    "test_sce_sum_log_prob",
)
_INTS = ("int8", "int16", "uint8", "uint16", "uint32", "uint64")

#: Case → why it is out of scope. Each must be rejected by load_onnx with a LincompileError.
OUT_OF_SCOPE = {
    # lincompile computes in float32/float64; int64 only for class labels and step counts
    **{f"test_{op}_{t}": "integer tensors" for op in ("add", "sub", "mul") for t in _INTS},
    # lincompile's values are tensors only
    "test_identity_sequence": "a sequence input",
    "test_identity_opt": "an optional input",
    # the IR's matmul is [*, K] · [K, N] (Linear layers); batched and vector products are not
    "test_matmul_3d": "3-D MatMul", "test_matmul_4d": "4-D MatMul",
    "test_matmul_bcast": "broadcast 4-D MatMul", "test_matmul_1d_3d": "1-D × 3-D MatMul",
    "test_matmul_4d_1d": "4-D × 1-D MatMul", "test_matmul_1d_1d": "1-D × 1-D MatMul",
    # Relu's opset-18 function body (CastLike, Max): ops outside lincompile's vocabulary
    "test_relu_expanded_ver18": "function expansion into CastLike/Max",
    # lincompile's loss is torch.nn.CrossEntropyLoss(): 2-D logits, mean, one output, no
    # class weights, no ignore_index. Each other case uses at least one of these.
    **{n: "log_prob output, weights, ignore_index, N-D logits or reduction none/sum"
       for n in SCE_CASES if n != "test_sce_mean"},
    # the function expansions (LogSoftmax, NegativeLogLikelihoodLoss, Transpose of data...)
    **{f"{n}_expanded": "function expansion into ops outside lincompile's vocabulary"
       for n in SCE_CASES},
}

RTOL, ATOL = 1e-5, 1e-6  # float32: a few ulps of the largest products and sums involved
RESULTS: Counter = Counter()


@functools.cache
def node_cases() -> dict:
    """ONNX's node test cases of our op families, by name (built once, ~7 s)."""
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():  # onnx's case generators warn about overflow in casts
        warnings.simplefilter("ignore")
        cases = load_model_tests(kind="node")
    return {c.name: c for c in cases if FAMILY.match(c.name)}


def summary() -> str | None:
    """The conformance summary, once this module's cases have run (printed by the
    ``pytest_terminal_summary`` hook in conftest.py, after the progress lines)."""
    if not RESULTS["passed"] + RESULTS["failed"]:
        return None
    return (f"ONNX conformance on targets {', '.join(TARGETS)}: passed/failed count case × "
            f"target pairs ({len(IN_SCOPE)} cases), out of scope counts cases\n"
            f"onnx node tests: {RESULTS['passed']} passed, {RESULTS['failed']} failed, "
            f"{len(OUT_OF_SCOPE)} out of scope")


def run_case(case, target: str) -> None:
    """Import the case's model, run every data set, compare with the expected outputs."""
    model = case.model
    graph = lc.load_onnx(model)
    inits = {t.name for t in model.graph.initializer}
    in_names = [v.name for v in model.graph.input if v.name not in inits]
    exe = lc.compile(graph, target)
    for inputs, expected in case.data_sets:
        out = exe.run(dict(zip(in_names, inputs)))
        for vi, want in zip(model.graph.output, expected):
            got = out[vi.name]
            assert got.dtype == want.dtype and got.shape == want.shape, vi.name
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=vi.name)


@pytest.mark.parametrize("name", IN_SCOPE)
def test_node_case(name, target):
    try:
        run_case(node_cases()[name], target)
    except BaseException:
        RESULTS["failed"] += 1
        raise
    RESULTS["passed"] += 1


@pytest.mark.parametrize("name", sorted(OUT_OF_SCOPE))
def test_out_of_scope_case_is_rejected_clearly(name):
    with pytest.raises(lc.LincompileError) as e:
        lc.load_onnx(node_cases()[name].model)
    assert "\n" not in str(e.value)


def test_every_case_of_the_families_is_in_scope_or_listed():
    names = set(node_cases())
    assert not set(IN_SCOPE) & set(OUT_OF_SCOPE)
    assert names == set(IN_SCOPE) | set(OUT_OF_SCOPE), (
        f"unlisted: {sorted(names - set(IN_SCOPE) - set(OUT_OF_SCOPE))}, "
        f"gone: {sorted(set(IN_SCOPE) | set(OUT_OF_SCOPE) - names)}")
    assert len([n for n in IN_SCOPE if n.startswith("test_gemm")]) == 11
