"""Property-based: random Linear layer shapes and activations, forward + training step,
on every backend against the float64 reference."""

from __future__ import annotations

from conftest import TARGETS
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import lincompile as lc


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 9), c_in=st.integers(1, 12), c_out=st.integers(1, 12),
       bias=st.booleans(), act=st.sampled_from(["relu", "sigmoid", "tanh", None]),
       loss=st.sampled_from(["mse", "cross-entropy"]), seed=st.integers(0, 2**16))
def test_random_linear_layer_trains_identically_everywhere(n, c_in, c_out, bias, act, loss, seed):
    assume(loss == "mse" or c_out > 1)  # one logit is refused for cross-entropy
    g = lc.Graph("prop", seed=seed)
    y = g.linear(g.input("x", ["N", c_in]), c_out, bias=bias, name="fc")
    g.output(getattr(g, act)(y) if act else y)
    t = lc.training_graph(g, loss=loss, optimizer=lc.SGD(0.1, momentum=0.5))
    for graph in (g, t):
        report = lc.validate(graph, TARGETS, batch=n, seed=seed)
        assert report.ok, str(report)
