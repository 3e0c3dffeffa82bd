"""The buffer plan of a generated entry point (shared by the C and CUDA backends).

Every tensor of a graph lives in one of four places: a caller's input or output pointer,
a baked parameter array, or a slot of the workspace. Workspace slots are reused: a linear
scan over the steps gives each new tensor a free slot and frees a slot after the last
read of every tensor in it (views included). Sizes are monomials ``coef · N^power`` of the
runtime batch ``N``, so the workspace layout is computed at run time from N with no
allocation, and slots only hold tensors whose sizes grow alike (the same power of N).

>>> s = Size.of_shape(("N", 128)) * Size(4)
>>> s, s.c()
(Size(coef=512, power=1), '512 * bn')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..ir import Value

ALIGN = 64  # bytes; every slot starts on a cache line


@dataclass(frozen=True, order=True)
class Size:
    """``coef · N^power`` (elements or bytes), N the runtime batch."""

    coef: int
    power: int = 0

    def __mul__(self, other: Size) -> Size:
        return Size(self.coef * other.coef, self.power + other.power)

    @staticmethod
    def of_shape(shape: Sequence[int | str]) -> Size:
        s = Size(1)
        for d in shape:
            s = s * (Size(1, 1) if isinstance(d, str) else Size(int(d)))
        return s

    def c(self, n: str = "bn") -> str:
        """As a C ``size_t`` expression of the variable ``n``."""
        if self.coef == 0 or self.power == 0:
            return f"(size_t){self.coef}" if self.coef > 2**31 - 1 else str(self.coef)
        factors = [n] * self.power
        if self.coef != 1:
            factors.insert(0, f"(size_t){self.coef}" if self.coef > 2**31 - 1 else str(self.coef))
        return " * ".join(factors)


class Step(Protocol):
    """What the planner needs of one generated kernel call."""

    inputs: list[Value]
    outputs: list[Value]
    view: bool             # output may share the input's storage (reshape, flatten, ...)
    elementwise: bool      # out[i] depends on inputs[..][i] only, read before written
    scratch: list[Size]    # bytes of temporary buffers used only during the step


@dataclass(frozen=True)
class Storage:
    kind: str    # "in" | "out" | "param" | "slot"
    index: int   # argument, parameter or slot number


@dataclass
class Plan:
    """Where every tensor lives, the slot sizes, and what the entry must copy."""

    where: dict[str, Storage] = field(default_factory=dict)   # tensor name -> storage
    slots: list[Size] = field(default_factory=list)            # bytes per slot
    scratch: dict[int, list[int]] = field(default_factory=dict)  # step -> scratch slots
    copies: list[tuple[int, str]] = field(default_factory=list)  # (output index, tensor)
    inplace: list[tuple[int, int]] = field(default_factory=list)  # (output, input) may alias
    views: set[int] = field(default_factory=set)               # steps that emit no code


def make_plan(inputs: Sequence[Value], params: Sequence[str], outputs: Sequence[Value],
              steps: Sequence[Step]) -> Plan:
    """Assign storage to every tensor of ``steps`` (in execution order)."""
    p = Plan()
    for i, v in enumerate(inputs):
        p.where[v.name] = Storage("in", i)
    for i, name in enumerate(params):
        p.where[name] = Storage("param", i)
    produced = {v.name for s in steps for v in s.outputs}
    out_slot: dict[str, int] = {}
    for j, v in enumerate(outputs):
        if v.name in produced and v.name not in out_slot:
            out_slot[v.name] = j
        else:  # an input, a parameter, or a repeat: copied into place at the end
            p.copies.append((j, v.name))

    root: dict[str, str] = {}   # view -> the tensor whose storage it shares
    for k, s in enumerate(steps):
        if s.view and s.outputs[0].name not in out_slot:
            src = s.inputs[0].name
            root[s.outputs[0].name] = root.get(src, src)
            p.views.add(k)
    last: dict[str, int] = {}
    for k, s in enumerate(steps):
        for v in s.inputs:
            last[root.get(v.name, v.name)] = k

    free: list[int] = []

    def take(size: Size) -> int:
        same = [i for i in free if p.slots[i].power == size.power]
        fits = [i for i in same if p.slots[i].coef >= size.coef]
        if fits:
            i = min(fits, key=lambda i: p.slots[i].coef)
        elif same:
            i = max(same, key=lambda i: p.slots[i].coef)
            p.slots[i] = size
        else:
            p.slots.append(size)
            return len(p.slots) - 1
        free.remove(i)
        return i

    for k, s in enumerate(steps):
        if k in p.views:
            p.where[s.outputs[0].name] = p.where[root[s.outputs[0].name]]
            continue
        dead = {root.get(v.name, v.name) for v in s.inputs if last.get(
            root.get(v.name, v.name)) == k}
        reuse = _overwritable(s, dead, root, p.where)
        for v in s.outputs:
            if v.name in out_slot:
                p.where[v.name] = Storage("out", out_slot[v.name])
            elif reuse is not None:
                p.where[v.name] = p.where[reuse]
                dead.discard(reuse)
            else:
                p.where[v.name] = Storage("slot", take(Size.of_shape(v.shape) * Size(
                    _itemsize(v))))
        p.scratch[k] = [take(b) for b in s.scratch]
        free.extend(p.scratch[k])
        dead |= {v.name for v in s.outputs if v.name not in last}   # never read
        for name in dead:
            st = p.where[name]
            if st.kind == "slot" and st.index not in free:
                free.append(st.index)

    # X.next may be written over X when the step that makes it reads X last, elementwise.
    producer = {v.name: k for k, s in enumerate(steps) for v in s.outputs}
    in_index = {v.name: i for i, v in enumerate(inputs)}
    out_names = {v.name for v in outputs}
    for j, v in enumerate(outputs):
        if v.name not in out_slot or out_slot[v.name] != j or not v.name.endswith(".next"):
            continue
        src = v.name[:-len(".next")]
        k = producer.get(v.name)
        if src not in in_index or k is None or src in out_names:
            continue
        x = inputs[in_index[src]]
        if (steps[k].elementwise and last.get(src) == k and x.shape == v.shape
                and x.dtype == v.dtype and all(u.shape == v.shape for u in steps[k].inputs
                                               if root.get(u.name, u.name) == src)):
            p.inplace.append((j, in_index[src]))
    return p


def _overwritable(step: Step, dead: set[str], root: dict[str, str],
                  where: dict[str, Storage]) -> str | None:
    """The tensor whose workspace slot the one output of an elementwise ``step`` may take
    over (an input of the same shape and dtype read for the last time here, not a view
    of a tensor that something else reads): the working set stays smaller and the output
    lands on cache lines just read. None when there is none."""
    if not step.elementwise or len(step.outputs) != 1:
        return None
    y = step.outputs[0]
    for v in step.inputs:
        name = root.get(v.name, v.name)
        if (name in dead and where[name].kind == "slot" and v.shape == y.shape
                and v.dtype == y.dtype):
            return name
    return None


def _itemsize(v: Value) -> int:
    return 4 if v.dtype == "float32" else 8
