"""``lincompile validate``: run random feeds through backends and compare with the float64
reference."""

from __future__ import annotations

from .. import TARGETS
from .args import MAX_BATCH, model_flags, number, precision_arg, seed
from .base import FAILED, OK, UsageError, command, load


def _validate_args(p):
    p.add_argument("file", help="an ONNX model or training graph")
    p.add_argument("--targets", default="reference,onnx", metavar="T,...",
                   help="comma-separated backends to check (default: reference,onnx; "
                        f"available: {','.join(TARGETS)})")
    p.add_argument("--batch", type=number(int, 1, MAX_BATCH), default=4, metavar="N",
                   help="batch size N (default 4); the random feeds and outputs may take at "
                        "most 2 GiB")
    p.add_argument("--seed", type=seed, default=0, metavar="S",
                   help="seed of the random feeds, ≥ 0 (default 0)")
    model_flags(p)
    precision_arg(p, "of the Linear products on the C and CUDA targets (c: fp32 or bf16); "
                     "tf32 and bf16 are held to 2e-2 instead of 1e-5")


@command("validate", _validate_args,
         "run random feeds through each backend and compare with the float64 reference",
         "lincompile validate mlp_train.onnx --targets reference,onnx --batch 8")
def validate(a) -> int:
    from .. import validate
    from ..validate import PRECISION_BOUND, PRECISION_TARGETS, REL_BOUND

    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise UsageError(f"unknown target(s) {unknown or a.targets!r}; choose from "
                         f"{', '.join(TARGETS)}")
    graph = load(a.file, a)
    report = validate(graph, targets, batch=a.batch, seed=a.seed, precision=a.precision)
    bound = f"‖out − ref‖/‖ref‖ ≤ {REL_BOUND:g}"
    if a.precision != "fp32" and set(targets) & set(PRECISION_TARGETS):
        bound += (f" ({PRECISION_BOUND[a.precision]:g} for {a.precision} on the C and CUDA "
                  "targets)")
    print(f"validate {a.file}: graph '{graph.name}', batch {a.batch}, seed {a.seed}; "
          f"bound {bound} against the float64 reference")
    print(report)
    bad = report.failures()
    if bad:
        print(f"FAILED: {len(bad)} of {len(report.rows)} outputs exceed the bound")
        return FAILED
    print(f"ok: {len(report.rows)} outputs within the bound on {', '.join(targets)}")
    return OK
