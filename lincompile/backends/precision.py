"""What the Linear products compute in, one table for the C and CUDA backends.

- ``fp32``: float32 operands and sums (the default, exact as the reference allows);
- ``tf32``: operands rounded to TF32 on tensor cores, float32 sums (CUDA only);
- ``bf16``: mixed precision as ``torch.autocast(dtype=torch.bfloat16)``: the products'
  operands (activations, and a bf16 copy of each weight made inside the step) rounded to
  bfloat16, float32 sums; master weights, optimizer state, losses, softmax and reductions
  stay float32.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import CompileError

PRECISIONS = ("fp32", "tf32", "bf16")
#: The precisions of target ``c`` (no TF32 unit on CPUs).
C_PRECISIONS = ("fp32", "bf16")


def check_precision(precision: object, allowed: Sequence[str] = PRECISIONS,
                    target: str | None = None) -> str:
    """``precision`` if it is one of ``allowed``, else a CompileError naming them."""
    if precision not in allowed:
        where = f" on target {target}" if target else ""
        raise CompileError(f"precision must be one of {', '.join(allowed)}{where}, got "
                           f"{precision!r}")
    return str(precision)
