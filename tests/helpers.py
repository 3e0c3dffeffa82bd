"""Small test helpers (models, training loops), shared by several test files."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

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


def export_torch(module, example, path, exporter: str):
    """``module`` exported by torch's TorchScript or dynamo exporter (opset 18, the batch dim
    symbolic, input ``x``); skips when the dynamo exporter's onnxscript is absent."""
    import pytest
    import torch

    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
    kw = ({"dynamic_shapes": {"x": {0: torch.export.Dim("N")}}} if exporter == "dynamo" else
          {"dynamic_axes": {"x": {0: "N"}}})
    torch.onnx.export(module, (example,), str(path), input_names=["x"], opset_version=18,
                      dynamo=exporter == "dynamo", **kw)
    return path


def assert_trains_like_torch(module, graph: lc.Graph, batches, targets) -> None:
    """On every target: ``graph`` (imported from ``module``'s file) computes what ``module``
    does, and 3 steps of SGD with momentum on MSE give torch's losses and final parameters
    (under torch's names), within 1e-4."""
    import torch

    from lincompile.frontends.layout import start_state

    x0 = batches[0][0]
    want = module(torch.from_numpy(x0)).detach().numpy()
    train = lc.training_graph(graph, "mse", lc.SGD(0.05, momentum=0.9))
    opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(module(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    final = {k: v.detach().numpy() for k, v in module.named_parameters()}
    for target in targets:
        got = lc.compile(graph, target).run({"x": x0})[graph.outputs[0].name]
        assert np.abs(got - want).max() <= 1e-5 * max(1, np.abs(want).max()), target
        step, state = lc.compile(train, target), start_state(train)
        for (x, y), lv in zip(batches, losses):
            out = step.run({"x": x, "target": y, **state})
            assert abs(float(out["loss"]) - lv) <= 1e-4 * max(1, abs(lv)), (target, lv)
            state = {k: out.get(f"{k}.next", v) for k, v in state.items()}
        for k, w in final.items():   # the parameters keep torch's names and layouts
            assert state[k].shape == w.shape, (target, k)
            assert np.abs(state[k] - w).max() <= 1e-4, (target, k)


def autocast_mlp_loss(torch, x: np.ndarray, target: np.ndarray, params: dict, layers: int = 3):
    """torch.autocast(cpu, bfloat16)'s cross-entropy of the relu MLP ``fc1 … fc<layers>``
    whose weights and biases are the tensors ``params`` (the oracle of the bf16 steps)."""
    h = torch.tensor(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(1, layers + 1):
            h = torch.nn.functional.linear(h, params[f"fc{i}.weight"], params[f"fc{i}.bias"])
            h = torch.relu(h) if i < layers else h
        return torch.nn.functional.cross_entropy(h.float(), torch.tensor(target))


def build_c_library(src: str, flags: list[str], folder: Path) -> ctypes.CDLL:
    """``src`` built as a shared library in ``folder`` (C99, every warning an error), loaded."""
    (folder / "g.c").write_text(src)
    r = subprocess.run(["cc", *flags, "-std=c99", "-Wall", "-Wextra", "-Werror", "-fPIC",
                        "-shared", str(folder / "g.c"), "-o", str(folder / "g.so"), "-lm"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return ctypes.CDLL(str(folder / "g.so"))


SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=all"]


def sanitizer_missing(tmp_path: Path, env: dict) -> str | None:
    """Why ASan/UBSan cannot run here (a trivial program does not build or run), or None."""
    src = tmp_path / "probe.c"
    src.write_text("#include <stdlib.h>\nint main(void) { char *p = malloc(4); p[0] = 0; "
                   "free(p); return 0; }\n")
    try:
        subprocess.run(["cc", *SANITIZE, str(src), "-o", str(tmp_path / "probe")], check=True,
                       capture_output=True, text=True, timeout=120)
        subprocess.run([str(tmp_path / "probe")], check=True, capture_output=True, text=True,
                       env=env, timeout=60)
    except subprocess.CalledProcessError as e:
        return (e.stderr or e.stdout or f"exit {e.returncode}").strip()[:200]
    return None
