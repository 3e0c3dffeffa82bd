"""A small training step per precision, for compute-sanitizer (benchmarks/gpu_check.sh).

Builds the 30-37-129-7 MLP training step (cross-entropy, SGD with momentum) for target
"cuda" in each precision, runs it on numpy feeds at N = 1, 13 and 130 and, with torch,
twice from a bound CUDA graph; every output must be finite and the loss within the
precision's bound of the float64 reference. Exit 0 when all ran.

    compute-sanitizer --tool memcheck --error-exitcode 9 python benchmarks/sanitize_cuda.py

``--target cuda-cpu`` runs the same steps on the CPU emulator (no graph replay): a check
of this script where there is no GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lincompile as lc
from lincompile.backends.reference import ReferenceExecutable
from lincompile.validate import PRECISION_BOUND


def model() -> lc.Graph:
    g = lc.Graph("san", seed=0)
    h = g.input("x", ["N", 30])
    for i, n in enumerate((37, 129, 7), 1):
        h = g.linear(h, n, name=f"fc{i}")
        h = g.relu(h) if n != 7 else h
    g.output(h)
    return lc.training_graph(g.verify(), loss="cross-entropy", optimizer=lc.SGD(0.05, 0.9))


def main(argv=None) -> int:
    target = "cuda-cpu" if argv and "--target" in argv and "cuda-cpu" in argv else "cuda"
    t = model()
    for prec in ("fp32", "tf32", "bf16"):
        exe = lc.compile(t, target, precision=prec)
        for n in (1, 13, 130):
            feeds = lc.random_feeds(t, n, seed=n)
            feeds.update({k: np.asarray(v, feeds[k].dtype) for k, v in t.initial_state.items()})
            got = exe.run(feeds)
            ref = ReferenceExecutable(t, "float64").run(feeds)
            assert all(np.isfinite(v).all() for v in got.values()), (prec, n)
            err = abs(float(got["loss"]) - float(ref["loss"])) / abs(float(ref["loss"]))
            assert err <= PRECISION_BOUND[prec], (prec, n, err)
        how = "on numpy feeds"
        if target == "cuda":
            try:
                import torch
            except ImportError:
                torch = None
            if torch is not None:
                dev = {k: torch.from_numpy(np.array(v)).cuda() for k, v in feeds.items()}
                bound = exe.bind(dev)
                bound()
                bound()   # the second call replays the captured graph
                torch.cuda.synchronize()
                assert bound.captured and all(torch.isfinite(v).all()
                                              for v in bound.outputs.values())
                how += " and from a CUDA graph"
        print(f"sanitize_cuda: {prec} on {target} ran at N = 1, 13, 130 {how}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
