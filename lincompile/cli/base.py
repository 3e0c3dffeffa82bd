"""What every subcommand shares: exit codes, the usage error, the command registry, and
reading a model file without ever writing over it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import LincompileError

OK, FAILED, USAGE = 0, 1, 2


class UsageError(LincompileError):
    """Bad arguments or an unusable input file: exit code 2."""


@dataclass
class Command:
    name: str
    run: Callable[[argparse.Namespace], int]
    add_args: Callable[[argparse.ArgumentParser], None]
    help: str
    example: str


#: name -> subcommand, in the order ``--help`` lists them (the order the command modules are
#: imported in ``lincompile.cli``); a new subcommand is one function plus one ``@command`` line.
COMMANDS: dict[str, Command] = {}


def command(name: str, add_args: Callable, help: str, example: str):
    def register(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = Command(name, fn, add_args, help, example)
        return fn
    return register


def load(path: str, a: argparse.Namespace | None = None):
    """A model or training graph from an ONNX file (errors say which file), imported as
    ``--dynamic-batch`` and ``--logits`` ask."""
    from .. import load_onnx

    if not Path(path).is_file():
        raise UsageError(f"no such file: '{path}'")
    return load_onnx(path, batch="N" if getattr(a, "dynamic_batch", False) else None,
                     logits=getattr(a, "logits", None))


def dims(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def input_files(path: str | Path, outputs: list[Path]) -> list[Path]:
    """``path`` and, when one of ``outputs`` already exists, the external data files the
    model names (reading only the file's structure)."""
    files = [Path(path)]
    if any(o.exists() for o in outputs):
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception:   # unreadable: load() has said so already
            return files
        tensors = [*proto.graph.initializer, *(a.t for n in proto.graph.node
                                               for a in n.attribute if a.HasField("t"))]
        files += [Path(path).parent / e.value for t in tensors for e in t.external_data
                  if e.key == "location"]
    return files


def refuse_overwrite(inputs: list[str], outputs: list[Path]) -> None:
    """A usage error when an output path is one of the input files (or their data)."""
    from ..files import refuse_inputs

    refuse_inputs(outputs, [f for i in inputs for f in input_files(i, outputs)])


def roles(graph) -> tuple[list, list, list]:
    """(trainable parameters, frozen parameters, optimizer state) of a model or training
    graph: in a training graph a trainable parameter is an input ``P`` with ``P.next`` or
    ``P.grad`` among the outputs."""
    from ..training import STATE_SUFFIXES

    outs = {v.name for v in graph.outputs}
    frozen = [p.value for p in graph.params.values() if not p.const and not p.trainable]
    if graph.meta.get("lincompile.role") != "training" and not any(
            v.name == "loss" for v in graph.outputs):   # a model: its initializers
        return [p.value for p in graph.params.values() if p.trainable and not p.const], \
            frozen, []
    stepped = [v for v in graph.inputs if f"{v.name}.next" in outs or f"{v.name}.grad" in outs]
    names = {v.name for v in stepped}
    state = [v for v in stepped if v.name == "step"
             or any(v.name == f"{p}.{s}" for p in names for s in STATE_SUFFIXES)]
    trainable = [v for v in stepped if v not in state]
    frozen += [p.value for p in graph.params.values() if not p.const and p.trainable]
    return trainable, frozen, state
