"""Optimizer updates against an independent float64 transcription of torch.optim's documented
algorithms (no torch needed; test_torch_parity.py runs torch itself where it is installed).

The transcriptions below follow the pseudo-code of the torch.optim documentation (SGD,
Adam, AdamW), with dampening 0, no Nesterov, no amsgrad, no maximize — the cases lincompile
implements. ``t`` is the 1-based number of the update being made, so ``t = step + 1`` for
lincompile's ``step`` input (the number of updates already made). None of it calls
lincompile. The gradients of the training-graph tests are closed forms of a single Linear
layer's loss, also written here.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TARGETS

import lincompile as lc

CPU_TARGETS = [t for t in TARGETS if t != "cuda"]


# ------------------------------------------------------------------ torch.optim, transcribed
def sgd(theta, g, buf, *, lr, momentum, weight_decay, t):
    """torch.optim.SGD: g ← g + λθ; b ← μb + g (b ← g at t = 1); θ ← θ − γb.
    Returns (θ, b); b is None without momentum."""
    if weight_decay != 0:
        g = g + weight_decay * theta
    if momentum != 0:
        buf = g if t == 1 else momentum * buf + g   # dampening τ = 0
        g = buf
    return theta - lr * g, buf


def adam(theta, g, m, v, *, lr, beta1, beta2, eps, weight_decay, t, decoupled):
    """torch.optim.Adam (L2: g ← g + λθ) and AdamW (decoupled: θ ← θ − γλθ first), then
    m ← β1m + (1−β1)g; v ← β2v + (1−β2)g²; m̂ = m/(1−β1ᵗ); v̂ = v/(1−β2ᵗ);
    θ ← θ − γ m̂ / (√v̂ + ε)."""
    if decoupled:
        theta = theta - lr * weight_decay * theta
    elif weight_decay != 0:
        g = g + weight_decay * theta
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    return theta - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def torch_step(opt, theta, g, state: dict, lr: float, t: int) -> tuple[np.ndarray, dict]:
    """One update of ``opt`` (a lincompile optimizer's hyperparameters, read as torch's)."""
    if isinstance(opt, lc.SGD):
        theta, buf = sgd(theta, g, state.get("velocity"), lr=lr, momentum=opt.momentum,
                         weight_decay=opt.weight_decay, t=t)
        return theta, ({"velocity": buf} if opt.momentum else {})
    theta, m, v = adam(theta, g, state["m"], state["v"], lr=lr, beta1=opt.betas[0],
                       beta2=opt.betas[1], eps=opt.eps, weight_decay=opt.weight_decay, t=t,
                       decoupled=isinstance(opt, lc.AdamW))
    return theta, {"m": m, "v": v}


OPTIMIZERS = {
    "sgd": lc.SGD(0.1),
    "sgd-wd": lc.SGD(0.1, weight_decay=0.05),
    "sgd-momentum": lc.SGD(0.1, momentum=0.9),
    "sgd-momentum-wd": lc.SGD(0.05, momentum=0.8, weight_decay=0.01),
    "adam": lc.Adam(0.01),
    "adam-l2": lc.Adam(0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    "adamw": lc.AdamW(0.01),
    "adamw-wd": lc.AdamW(0.02, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.3),
}
LRS = [1.0, 0.5, 0.25, 0.8]   # a schedule: each step's lr is fed, times the optimizer's lr


def assert_close(got, want, what: str, rel: float = 2e-5) -> None:
    """float32 ``got`` against the float64 transcription, norm-wise (DESIGN's 1e-5 bound,
    doubled: Adam's division by √v̂ + ε amplifies float32 rounding a little)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    err, norm = np.linalg.norm(got - want), np.linalg.norm(want)
    assert err <= rel * norm + 1e-7, f"{what}: ‖out − torch formula‖ = {err:.3g}, ‖·‖ = {norm:.3g}"


# ------------------------------------------------------------------ the update ops alone
SHAPE = (3, 5)


def update_graph() -> lc.Graph:
    """Every optimizer's update node side by side (one build per target): inputs
    ``NAME.p``, ``NAME.grad``, ``NAME.S`` for each state S, a shared ``step``, ``NAME.lr``."""
    g = lc.Graph("updates")
    step = g.input("step", [], "int64")
    for name, opt in OPTIMIZERS.items():
        p, grad = g.input(f"{name}.p", list(SHAPE)), g.input(f"{name}.grad", list(SHAPE))
        state = [g.input(f"{name}.{s}", list(SHAPE)) for s in opt.state()]
        extra = [step] if isinstance(opt, lc.Adam) else []
        outs = g.apply(opt.op, [p, grad, *state, *extra, g.input(f"{name}.lr", [])],
                       name=f"{name}.update",
                       outputs=[f"{name}.p.next", *(f"{name}.{s}.next" for s in opt.state())],
                       **opt.attrs())
        for v in outs if isinstance(outs, tuple) else (outs,):
            g.output(v)
    return g.verify()


@pytest.mark.parametrize("start", [0, 7], ids=["fresh", "step7"])
def test_updates_follow_the_torch_formulas_over_several_steps(start, target):
    """Four updates with fresh gradients and a learning-rate schedule, from a zero state
    (torch's first step) or after 7 updates, with nonzero momentum / moments."""
    exe = lc.compile(update_graph(), target)
    rng = np.random.default_rng(start)
    p, state, want_p, want_state = {}, {}, {}, {}
    for name, opt in OPTIMIZERS.items():
        p[name] = rng.standard_normal(SHAPE).astype(np.float32)
        state[name] = {s: np.zeros(SHAPE, np.float32) for s in opt.state()}
        if start:
            state[name] = {s: (np.abs(rng.standard_normal(SHAPE)) * 0.1 if s == "v"
                               else rng.standard_normal(SHAPE)).astype(np.float32)
                           for s in opt.state()}
        want_p[name] = p[name].astype(np.float64)
        want_state[name] = {k: v.astype(np.float64) for k, v in state[name].items()}
    for i, scale in enumerate(LRS):
        t = start + i + 1
        grads = {name: rng.standard_normal(SHAPE).astype(np.float32) for name in OPTIMIZERS}
        lrs = {name: np.float32(opt.lr * scale) for name, opt in OPTIMIZERS.items()}
        feeds = {"step": np.int64(t - 1)}
        for name in OPTIMIZERS:
            feeds.update({f"{name}.p": p[name], f"{name}.grad": grads[name],
                          f"{name}.lr": lrs[name],
                          **{f"{name}.{k}": v for k, v in state[name].items()}})
        out = exe.run(feeds)
        for name, opt in OPTIMIZERS.items():
            g64 = grads[name].astype(np.float64)
            # this step from the target's own state, and the whole run from the start
            one_p, one_state = torch_step(opt, p[name].astype(np.float64), g64,
                                          {k: v.astype(np.float64)
                                           for k, v in state[name].items()}, float(lrs[name]), t)
            want_p[name], want_state[name] = torch_step(opt, want_p[name], g64,
                                                        want_state[name], float(lrs[name]), t)
            assert_close(out[f"{name}.p.next"], one_p, f"{name} step {t}: p")
            for k in state[name]:
                assert_close(out[f"{name}.{k}.next"], one_state[k], f"{name} step {t}: {k}")
            p[name] = out[f"{name}.p.next"]
            state[name] = {k: out[f"{name}.{k}.next"] for k in state[name]}
    for name in OPTIMIZERS:
        assert_close(p[name], want_p[name], f"{name}: p after {len(LRS)} steps", rel=1e-4)


# ------------------------------------------------------------------ whole training steps
def linear_model(seed: int = 0) -> lc.Graph:
    g = lc.Graph("lin", seed=seed)
    g.output(g.linear(g.input("x", ["N", 6]), 4, name="fc"), name="y")
    return g


def loss_grads(loss: str, w, b, x, target) -> dict[str, np.ndarray]:
    """Closed-form gradients of torch's mean-reduced losses of y = x·Wᵀ + b, in float64."""
    y = x @ w.T + b
    if loss == "mse":    # mean over all N·C elements of (y − target)²
        dy = 2 * (y - target) / y.size
    else:                # cross-entropy: mean over N of −log softmax(y)[n, target[n]]
        z = np.exp(y - y.max(axis=1, keepdims=True))
        dy = z / z.sum(axis=1, keepdims=True)
        dy[np.arange(len(target)), target] -= 1
        dy /= len(target)
    return {"fc.weight": dy.T @ x, "fc.bias": dy.sum(axis=0)}


#: optimizer and loss of the training-graph tests (a build each on c and cuda-cpu)
TRAINING = [("sgd", "mse"), ("sgd-wd", "cross-entropy"), ("sgd-momentum-wd", "mse"),
            ("adam-l2", "cross-entropy"), ("adamw-wd", "mse")]


@pytest.mark.parametrize("name, loss", TRAINING)
def test_training_graph_steps_follow_the_torch_formula(name, loss, target):
    """A Linear layer trained 4 steps (fused kernels included: plain SGD takes dW into the
    update on c and cuda-cpu), from step 3 with nonzero optimizer state; every step is the
    transcription applied to the closed-form gradient at the target's own state."""
    opt = OPTIMIZERS[name]
    t_graph = lc.training_graph(linear_model(), loss=loss, optimizer=opt)
    exe = lc.compile(t_graph, target)
    rng = np.random.default_rng(3)
    state = dict(t_graph.initial_state)
    for k in state:
        if k != "step" and k not in ("fc.weight", "fc.bias"):
            a = rng.standard_normal(state[k].shape)
            state[k] = (np.abs(a) * 0.01 if k.endswith(".v") else a * 0.1).astype(np.float32)
    if "step" in state:
        state["step"] = np.int64(3)
    for i, scale in enumerate(LRS):
        x = rng.standard_normal((5, 6)).astype(np.float32)
        tgt = (rng.integers(0, 4, 5) if loss == "cross-entropy"
               else rng.standard_normal((5, 4)).astype(np.float32))
        lr = np.float32(opt.lr * scale)
        out = exe.run({"x": x, "target": tgt, "lr": lr, **state})
        t = 3 + i + 1   # resumed after 3 updates: SGD's velocity is torch's buffer, t > 1
        f64 = {k: np.asarray(v, np.float64) for k, v in state.items()}
        grads = loss_grads(loss, f64["fc.weight"], f64["fc.bias"], x.astype(np.float64), tgt)
        for p in ("fc.weight", "fc.bias"):
            sub = {s: f64[f"{p}.{s}"] for s in opt.state()}
            want_p, want_s = torch_step(opt, f64[p], grads[p], sub, float(lr), t)
            assert_close(out[f"{p}.next"], want_p, f"{name}/{loss} step {t}: {p}")
            for s, w in want_s.items():
                assert_close(out[f"{p}.{s}.next"], w, f"{name}/{loss} step {t}: {p}.{s}")
        if "step" in state:
            assert out["step.next"] == state["step"] + 1
        state = {k: out[f"{k}.next"] for k in state}
