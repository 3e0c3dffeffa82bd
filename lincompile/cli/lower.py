"""``lincompile lower``: rewrite ``ai.onnx.preview.training`` nodes into standard ONNX ops."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .base import OK, UsageError, command


def _lower_args(p):
    p.add_argument("file", help="an ONNX model with ai.onnx.preview.training nodes (Adagrad, "
                   "Momentum, Adam, Gradient)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx",
                   help="where to write the lowered model (never the input file)")


@command("lower", _lower_args,
         "rewrite a model's ai.onnx.preview.training nodes into standard ONNX ops, so stock "
         "onnxruntime runs it",
         "lincompile lower train_preview.onnx -o train_standard.onnx")
def lower(a) -> int:
    import onnx

    from ..lower import lower_file
    from ..ops.preview import DOMAIN

    if not Path(a.file).is_file():
        raise UsageError(f"no such file: '{a.file}'")
    before = [n.op_type for n in onnx.load(a.file, load_external_data=False).graph.node
              if n.domain == DOMAIN]
    path = lower_file(a.file, a.output)
    counts = ", ".join(f"{k} ×{c}" for k, c in sorted(Counter(before).items()))
    print(f"wrote {path}: {len(before)} {DOMAIN} node(s) in standard ops"
          + (f" ({counts})" if counts else ""))
    return OK
