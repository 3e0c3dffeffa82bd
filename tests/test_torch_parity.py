"""One training step against torch autograd + torch.optim (skipped without torch)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import mlp, teacher_data, torch_mlp

import lincompile as lc

torch = pytest.importorskip("torch")

CASES = {
    "sgd": (lc.SGD(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd-wd": (lc.SGD(0.1, weight_decay=0.01),
               lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01)),
    "sgd-momentum": (lc.SGD(0.1, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    "sgd-momentum-wd": (lc.SGD(0.1, momentum=0.8, weight_decay=0.01),
                        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, weight_decay=0.01)),
    "adam": (lc.Adam(0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    "adam-l2": (lc.Adam(0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
                lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                                           weight_decay=0.1)),
    "adamw": (lc.AdamW(0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
    "adamw-wd": (lc.AdamW(0.01, weight_decay=0.3),
                 lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.3)),
}
STATE = {"velocity": "momentum_buffer", "m": "exp_avg", "v": "exp_avg_sq"}


@pytest.mark.parametrize("loss", ["cross-entropy", "mse"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_three_steps_match_torch(case, loss, target):
    act = "tanh" if loss == "mse" else "relu"
    m = mlp((8, 6, 3), act=act, seed=4)
    ours, make_opt = CASES[case]
    t = lc.training_graph(m, loss=loss, optimizer=ours)
    exe = lc.compile(t, target)
    model = torch_mlp(m, act)
    opt = make_opt(list(model.parameters()))
    crit = torch.nn.CrossEntropyLoss() if loss == "cross-entropy" else torch.nn.MSELoss()
    names = dict(zip(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"], model.parameters()))

    x, y = teacher_data(16, 8, 3, seed=5)
    tgt = y if loss == "cross-entropy" else np.eye(3, dtype=np.float32)[y]
    state = dict(t.initial_state)
    for _ in range(3):
        out = exe.run({"x": x, "target": tgt, "lr": np.float32(ours.lr), **state})
        opt.zero_grad()
        ref_loss = crit(model(torch.from_numpy(x)), torch.from_numpy(tgt))
        ref_loss.backward()
        opt.step()
        np.testing.assert_allclose(out["loss"], ref_loss.item(), rtol=1e-5)
        for k in set(state) - {"step"}:
            pname = next(p for p in names if k == p or k.startswith(p + "."))
            p, suffix = names[pname], k[len(pname) + 1:]   # "", "velocity", "m" or "v"
            want = opt.state[p][STATE[suffix]] if suffix else p
            np.testing.assert_allclose(out[f"{k}.next"], want.detach().numpy(),
                                       rtol=2e-5, atol=2e-7, err_msg=f"{case}: {k}")
        state = {k: out[f"{k}.next"] for k in state}
    if "step" in state:
        assert state["step"] == 3
