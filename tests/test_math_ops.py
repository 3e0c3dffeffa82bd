"""neg, abs, sqrt, log, reciprocal, pow by a constant exponent, max and min (torch's ``-x``,
``abs``, ``sqrt``, ``log``, ``reciprocal``, ``x ** p``, ``maximum``, ``minimum``).

Gradients against float64 central differences (inputs kept in each op's domain); every
target against the float64 reference (one graph holds every op, forward and backward, fed
in-domain values); the reference against torch float64; NaN, ±Inf, ±0, out-of-domain
values and max/min ties against torch (its vectorized CPU loops) on every target; ONNX
import of both torch exporters' files, and three SGD steps of such a model like torch.
"""

from __future__ import annotations

import functools
import re
import subprocess

import numpy as np
import pytest
from conftest import COMPILED, TARGETS
from helpers import (
    assert_gradients_match_central_differences,
    assert_trains_like_torch,
    export_torch,
    sum_objective,
)
from onnx import helper
from onnx_models import model

import lincompile as lc
from lincompile.backends.reference import ReferenceExecutable

C = 4   # features of every op's input [N, 3, C]
#: pow cases: name -> exponent (torch's shortcuts 0.5, 2, 3, −0.5, −1, −2; std::pow else)
POWS = {"pow2": 2.0, "pow05": 0.5, "pow3": 3.0, "pow_m05": -0.5, "pow_m1": -1.0,
        "pow_m2": -2.0, "pow15": 1.5, "pow25": 2.5, "pow_m15": -1.5, "pow0": 0.0, "pow1": 1.0}
#: the cases whose op is defined (and smooth) for x > 0 only: fed |x| + 0.5 where it must be
POSITIVE = {"sqrt", "log", "reciprocal", "pow05", "pow_m05", "pow_m1", "pow_m2", "pow15",
            "pow25", "pow_m15"}


def _pow(p):
    return lambda g, x: g.apply("pow", [x], exponent=p)


def _minmax(op, shape=None):
    """``op(x, b)``, ``b`` an input of x's shape or of ``shape`` (broadcast)."""
    def build(g, x):
        name = f"b.{op}{'_row' if shape else ''}"
        return g.apply(op, [x, g.input(name, shape or x.shape, x.dtype)])
    return build


#: case -> build(g, x) -> y
OPS = {
    "neg": lambda g, x: g.apply("neg", [x]),
    "abs": lambda g, x: g.apply("abs", [x]),
    "sqrt": lambda g, x: g.apply("sqrt", [x]),
    "log": lambda g, x: g.apply("log", [x]),
    "reciprocal": lambda g, x: g.apply("reciprocal", [x]),
    **{k: _pow(p) for k, p in POWS.items()},
    "max": _minmax("max"),
    "min": _minmax("min"),
    "max_row": _minmax("max", [C]),
    "min_row": _minmax("min", [3, 1]),
}


def _positive(build):
    def wrapped(g, x):
        half = g.const(np.array(0.5, x.dtype), g.fresh("half"))
        return build(g, g.add(g.apply("abs", [x]), half))
    return wrapped


#: the cases as the central differences see them: |x| + 0.5 into the positive ones
IN_DOMAIN = {k: _positive(f) if k in POSITIVE else f for k, f in OPS.items()}


def objective(cases, dtype: str = "float32", ops=OPS) -> tuple[lc.Graph, list[str]]:
    """L = Σ_k Σ y_k ⊙ r_k over ``cases`` and every y.<case>: see helpers.sum_objective."""
    return sum_objective(ops, cases, lambda k: ["N", 3, C], dtype, "math_ops")


@functools.cache
def grad_graph(dtype: str = "float32") -> lc.Graph:
    g, wrt = objective(OPS, dtype)
    return lc.grad(g, of="L", wrt=wrt)


def in_domain_feeds(batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random feeds of grad_graph(), |x| + 0.5 for the positive cases."""
    feeds = lc.random_feeds(grad_graph(), batch=batch, seed=seed)
    for k in POSITIVE:
        feeds[f"x.{k}"] = np.abs(feeds[f"x.{k}"]) + np.float32(0.5)
    return feeds


def covered_ops() -> set[str]:
    """The IR ops this file checks (for test_ops' coverage test)."""
    return {n.op for n in grad_graph().nodes}


# ------------------------------------------------------------------ gradients and targets
@pytest.mark.parametrize("case", sorted(set(OPS) - {"pow0"}))
def test_gradient_matches_finite_differences(case):
    assert_gradients_match_central_differences(*objective([case], ops=IN_DOMAIN), case)


def test_pow_by_zero_has_a_zero_gradient():
    """x^0 is 1 for every x (NaN too, as torch and C's pow): torch's pow_backward gives 0s."""
    g, wrt = objective(["pow0"])
    gg = lc.grad(g, of="L", wrt=wrt)
    feeds = lc.random_feeds(gg, batch=2, seed=1)
    feeds["x.pow0"][0, 0, :2] = [np.nan, np.inf]
    got = ReferenceExecutable(gg, "float64").run(feeds)
    np.testing.assert_array_equal(got["y.pow0"], np.ones_like(feeds["x.pow0"]))
    np.testing.assert_array_equal(got["x.pow0.grad"], np.zeros_like(feeds["x.pow0"]))


def test_gradient_rules_are_torchs():
    """max/min: a kernel per side on dy's shape, a broadcast side summed back down."""
    made = grad_graph().producers()
    assert made["b.max.grad"].op == "max_grad" and made["b.min.grad"].op == "min_grad"
    row = made["b.max_row.grad"]
    assert (row.op, row.attrs["axes"]) == ("reduce_sum", [0, 1])
    assert {"neg", "abs_grad", "div", "pow_grad", "broadcast_to"} <= covered_ops()


@pytest.mark.parametrize("target", COMPILED)
def test_every_target_matches_the_float64_reference(target):
    for batch in (1, 3):
        report = lc.validate(grad_graph(), ["reference", target], feeds=in_domain_feeds(
            batch, batch))
        assert report.ok, f"{target}, batch {batch}:\n{report}"


def test_float64_graph_on_c_matches_the_reference():
    feeds = {k: v.astype(np.float64) for k, v in in_domain_feeds(3, 5).items()}
    report = lc.validate(grad_graph("float64"), ["reference", "c"], feeds=feeds)
    assert report.ok and max(r.rel for r in report.rows) < 1e-12, str(report)


@pytest.mark.parametrize("portable", [False, True])
def test_saved_graph_loads_back_as_the_same_ops(portable, tmp_path):
    g = grad_graph()
    back = lc.load_onnx(lc.save_onnx(g, tmp_path / "math.onnx", portable=portable))
    key = lambda n: (n.op, str(sorted(n.attrs.items())))
    assert sorted(map(key, back.nodes)) == sorted(map(key, g.nodes))


def test_generated_c_is_warning_free(tmp_path):
    """-std=c99 -Wall -Wextra -pedantic -Werror, float32 and float64 (the pow forms, the
    unused operands of pow by 0)."""
    from lincompile.backends.c import write_c_sources

    for dtype in ("float32", "float64"):
        write_c_sources({"step": grad_graph(dtype)}, tmp_path / dtype)
        res = subprocess.run(["cc", "-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic",
                              "-Werror", "-fopenmp", "-c", "model.c"], cwd=tmp_path / dtype,
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]


def test_nvcc_compiles_the_math_kernels_for_sm80(tmp_path):
    """The generated CUDA of every op and gradient here builds with nvcc, with no warning
    about a generated kernel."""
    from lincompile.backends import cuda
    from lincompile.backends.cuda_build import find_nvcc

    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found: cannot compile the generated CUDA on this machine")
    src = cuda._CudaSource({"step": grad_graph()}, "model", "sm_80", cuda.GPU_TILES)
    for name, text in src.files().items():
        (tmp_path / name).write_text(text)
    res = subprocess.run([nvcc, *cuda.NVCC_FLAGS, "-arch=sm_80", "-Xcompiler", "-fPIC", "-c",
                          "model.cu", "-o", "model.o"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    kernels = set(re.findall(r"\b(k\d+_\w+)\(", src.files()["model.cu"]))
    assert {"pow", "pow_grad", "max", "max_grad", "abs_grad"} <= {
        k.split("_", 1)[1] for k in kernels}
    assert not any(k in res.stderr for k in kernels), res.stderr[-3000:]


# ------------------------------------------------------------------ torch
def _torch_ops(torch):
    ops = {
        "neg": lambda x, b: -x,
        "abs": lambda x, b: torch.abs(x),
        "sqrt": lambda x, b: torch.sqrt(x),
        "log": lambda x, b: torch.log(x),
        "reciprocal": lambda x, b: torch.reciprocal(x),
        "max": torch.maximum, "min": torch.minimum,
        "max_row": torch.maximum, "min_row": torch.minimum,
    }
    ops.update({k: (lambda p: lambda x, b: x ** p)(p) for k, p in POWS.items()})
    return ops


def _vectorized(f, x, b):
    """``f(x, b)`` with every element in torch's vectorized CPU loop: flattened and
    followed by 64 ones (the scalar tail of a loop gets those)."""
    import torch

    tail = lambda v: torch.cat([v.reshape(-1), torch.ones(64, dtype=v.dtype)])
    return f(tail(x), None if b is None else tail(b))[:x.numel()].reshape(x.shape)


def torch_outputs(feeds: dict, dtype: str = "float64") -> dict[str, np.ndarray]:
    """What torch (autograd) gives for grad_graph()'s outputs."""
    torch = pytest.importorskip("torch")
    td = getattr(torch, dtype)
    t = {k: torch.tensor(v, dtype=td, requires_grad=not k.startswith("r."))
         for k, v in feeds.items()}
    out = {}
    for k, f in _torch_ops(torch).items():
        x, b = t[f"x.{k}"], t.get(f"b.{k}")
        y = f(x, b) if k.endswith("_row") else _vectorized(f, x, b)
        (y * t[f"r.{k}"]).sum().backward()
        out[f"y.{k}"] = y.detach().numpy()
    out.update({f"{k}.grad": v.grad.numpy() for k, v in t.items() if v.grad is not None})
    return out


def test_reference_matches_torch_in_float64():
    feeds = in_domain_feeds(3, 7)
    got = ReferenceExecutable(grad_graph(), "float64").run(feeds)
    want = torch_outputs(feeds)
    assert set(want) <= set(got)
    for k, w in want.items():
        np.testing.assert_allclose(got[k], w, rtol=1e-10, atol=1e-12, err_msg=k)


SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0]


def special_feeds() -> dict[str, np.ndarray]:
    """Random feeds (batch 2) with NaN, ±Inf, ±0 and −1 in every x, and in max/min's b
    ties with x, NaN and ±Inf against finite x (a broadcast b: one NaN)."""
    feeds = lc.random_feeds(grad_graph(), batch=2, seed=11)
    for k in OPS:
        x = feeds[f"x.{k}"].reshape(-1)
        x[1:2 * len(SPECIAL):2] = SPECIAL
        b = feeds.get(f"b.{k}")
        if b is not None and b.shape == feeds[f"x.{k}"].shape:
            b = b.reshape(-1)
            b[1:2 * len(SPECIAL):2] = [1.0, -np.inf, np.inf, 0.0, 0.0, -1.0]   # ties
            b[12:19] = [np.nan, np.inf, -np.inf, np.nan, x[16], x[17], x[18]]
        elif b is not None:   # a broadcast b: one NaN, read by a row of x
            b.reshape(-1)[0] = np.nan
    return feeds


@pytest.mark.parametrize("target", TARGETS)
def test_nan_inf_and_zeros_like_torch(target):
    """NaN, ±Inf, ±0, out-of-domain x and max/min ties land where torch puts them (float64;
    torch's float32 kernels put them in the same places)."""
    feeds = special_feeds()
    want = torch_outputs(feeds)
    want32 = torch_outputs(feeds, "float32")
    got = lc.compile(grad_graph(), target).run(feeds)
    for name, w in want.items():
        np.testing.assert_array_equal(np.isnan(want32[name]), np.isnan(w), name)
        np.testing.assert_allclose(got[name], w, rtol=1e-4, atol=1e-5, equal_nan=True,
                                   err_msg=f"{target}: {name}")
    # the edges are there: torch gives NaN, ±Inf and the tie halves in these places
    assert np.isnan(want["x.abs.grad"]).sum() == 0 and np.isinf(want["y.log"]).any()
    assert np.isnan(want["y.max"]).any() and np.isinf(want["x.sqrt.grad"]).any()


# ------------------------------------------------------------------ ONNX import
def test_pow_by_a_computed_or_non_scalar_exponent_is_refused():
    for inits, why in (({}, "constant exponent"),
                       ({"p": np.array([2.0, 3.0], np.float32)}, "scalar exponent")):
        ins = [("x", ["N", 2])] + ([] if inits else [("p", [])])
        m = model([helper.make_node("Pow", ["x", "p"], ["y"], name="pw")], ins,
                  [("y", ["N", 2])], inits)
        with pytest.raises(lc.UnsupportedOpError, match=why) as e:
            lc.load_onnx(m)
        assert "'pw'" in str(e.value) and "\n" not in str(e.value)


def test_max_of_three_inputs_is_refused():
    m = model([helper.make_node("Max", ["x", "x", "x"], ["y"], name="mx")], [("x", ["N", 2])],
              [("y", ["N", 2])])
    with pytest.raises(lc.UnsupportedOpError, match="of two inputs") as e:
        lc.load_onnx(m)
    assert "'mx'" in str(e.value)


def net(torch):
    """Linear → every op of this file (in its domain) → Linear."""
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            h, k = self.a(x), self.b(x)
            pos = torch.abs(k) + 1
            u = -h + torch.abs(k) + torch.sqrt(torch.abs(h) + 1) + torch.log(pos)
            u = u + torch.reciprocal(pos) + h ** 2 + pos ** 0.5 + k.pow(3) + pos ** -1.5
            return self.c(u + torch.maximum(h, k) + torch.minimum(h, k))

    torch.manual_seed(0)
    return Net()


NET_OPS = {"neg", "abs", "sqrt", "log", "reciprocal", "pow", "max", "min"}


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_torch_exports_import_and_train_like_torch(exporter, tmp_path):
    torch = pytest.importorskip("torch")
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    path = export_torch(net(torch), x, tmp_path / f"math_{exporter}.onnx", exporter)
    g = lc.load_onnx(path)
    assert NET_OPS <= {n.op for n in g.nodes}
    assert sorted(n.attrs["exponent"] for n in g.nodes if n.op == "pow") == [-1.5, 0.5, 2, 3]
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((6, 4)).astype(np.float32),
                rng.standard_normal((6, 3)).astype(np.float32)) for _ in range(3)]
    targets = TARGETS if exporter == "torchscript" else ("reference", "onnx")
    assert_trains_like_torch(net(torch), g, batches, targets)
