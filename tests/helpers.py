"""Small test helpers (models, training loops), shared by several test files."""

from __future__ import annotations

import numpy as np

import lincompile as lc


def mlp(sizes=(20, 16, 4), act="relu", seed=0, name="mlp") -> lc.Graph:
    """A Linear/activation stack with torch's default initialization."""
    g = lc.Graph(name, seed=seed)
    h = g.input("x", ["N", sizes[0]])
    for i, n in enumerate(sizes[1:], 1):
        h = g.linear(h, n, name=f"fc{i}")
        if i < len(sizes) - 1:
            h = getattr(g, act)(h)
    g.output(h)
    return g


def teacher_data(n=64, d_in=20, classes=4, seed=0):
    """A learnable classification problem: labels from a fixed random linear teacher."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((d_in, classes)), axis=1).astype(np.int64)
    return x, y


def train(exe: lc.Executable, graph: lc.Graph, batches, lr: float, steps: int):
    """Run ``steps`` training steps, feeding every ``S.next`` back as ``S``; returns the
    loss curve and the final state."""
    state = dict(graph.initial_state)
    losses = []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        out = exe.run({"x": x, "target": y, "lr": np.float32(lr), **state})
        losses.append(float(out["loss"]))
        state = {k: out[f"{k}.next"] for k in state}
    return np.array(losses), state


def torch_mlp(g: lc.Graph, act: str):
    """The torch twin of ``mlp((a, b, c), act)``: fc1, the activation, fc2, with ``g``'s
    weights (torch imported here, so modules without it can import this file)."""
    import torch

    layers = []
    for name in ("fc1", "fc2"):
        w = g.params[f"{name}.weight"].data
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(g.params[f"{name}.bias"].data))
        layers += [lin, {"relu": torch.nn.ReLU(), "tanh": torch.nn.Tanh()}[act]]
    return torch.nn.Sequential(*layers[:-1])


def sum_objective(ops: dict, cases, shape, dtype: str = "float32",
                  name: str = "ops") -> tuple[lc.Graph, list[str]]:
    """Outputs ``L = Σ_k Σ y_k ⊙ r_k`` (r_k fed) and every ``y.<case>``, where
    ``y_k = ops[k](g, x.<k>)`` reads its own input of ``shape(k)``. Returns the graph and the
    inputs to differentiate (all but the r_k)."""
    g = lc.Graph(name)
    ys, total = [], None
    for k in cases:
        y = ops[k](g, g.input(f"x.{k}", shape(k), dtype))
        s = g.reduce_sum(g.mul(y, g.input(f"r.{k}", y.shape, dtype)))
        total = s if total is None else g.add(total, s)
        ys.append((y, f"y.{k}"))
    g.output(total, name="L")
    for y, out in ys:
        g.output(y, name=out)
    return g.verify(), [v.name for v in g.inputs if not v.name.startswith("r.")]


def assert_gradients_match_central_differences(g: lc.Graph, wrt: list[str], case: str,
                                               batch: int = 2, seed: int = 5) -> None:
    """lc.grad of ``L`` in float64 against float64 central differences, ≤ 1e-6 relative."""
    from test_ops import central_differences

    from lincompile.backends.reference import ReferenceExecutable

    gg = lc.grad(g, of="L", wrt=wrt)
    feeds = lc.random_feeds(gg, batch=batch, seed=seed)
    grads = ReferenceExecutable(gg, "float64").run(feeds)
    for w in wrt:
        fd = central_differences(g, feeds, w)
        err = np.linalg.norm(grads[f"{w}.grad"] - fd) / np.linalg.norm(fd)
        assert err <= 1e-6, f"{case}: d/d{w} relative error {err:.2e}"
