"""The ``lincompile`` command line.

Each subcommand is one function registered in :data:`COMMANDS` with its arguments, help
and example. Exit codes: 0 ok, 1 validation failed, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import TARGETS, __version__
from .errors import LincompileError

OK, FAILED, USAGE = 0, 1, 2


class UsageError(LincompileError):
    """Bad arguments or an unusable input file: exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise UsageError(f"{message} (see '{self.prog} -h')")


@dataclass
class Command:
    name: str
    run: Callable[[argparse.Namespace], int]
    add_args: Callable[[argparse.ArgumentParser], None]
    help: str
    example: str


#: name -> subcommand; a new subcommand is one function plus one ``@command`` line.
COMMANDS: dict[str, Command] = {}


def command(name: str, add_args: Callable, help: str, example: str):
    def register(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = Command(name, fn, add_args, help, example)
        return fn
    return register


# ------------------------------------------------------------------------------- helpers
def load(path: str, a: argparse.Namespace | None = None):
    """A model or training graph from an ONNX file (errors say which file), imported as
    ``--dynamic-batch`` and ``--logits`` ask."""
    from . import load_onnx

    if not Path(path).is_file():
        raise UsageError(f"no such file: '{path}'")
    return load_onnx(path, batch="N" if getattr(a, "dynamic_batch", False) else None,
                     logits=getattr(a, "logits", None))


def _model_flags(p) -> None:
    """How a command reads a model file."""
    p.add_argument("--dynamic-batch", action="store_true",
                   help="make a leading (batch) dim that the file fixes symbolic, N")
    p.add_argument("--logits", metavar="NAME",
                   help="import the model up to this tensor (default: the logits before a "
                        "classifier head such as Softmax, found from the outputs)")


def _dims(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _number(kind: type, lo: float, hi: float | None = None, lo_open: bool = False,
            hi_open: bool = False):
    """An argparse type: a finite ``kind`` in the range from ``lo`` to ``hi`` (open ends
    excluded), else one line saying what is allowed."""
    f = lambda x: f"{x:g}" if kind is float else str(x)
    rng = (f"in {'(' if lo_open else '['}{f(lo)}, {f(hi)}{')' if hi_open else ']'}"
           if hi is not None else f"{'>' if lo_open else '≥'} {f(lo)}")

    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got '{s}'") from None
        if not (math.isfinite(v) and (v > lo if lo_open else v >= lo) and (
                hi is None or (v < hi if hi_open else v <= hi))):
            raise argparse.ArgumentTypeError(f"must be a finite number {rng}, got '{s}'"
                                             if kind is float else f"must be {rng}, got '{s}'")
        return v
    parse.__name__ = kind.__name__
    return parse


def _betas(s: str) -> tuple[float, float]:
    try:
        b1, b2 = (float(b) for b in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B1,B2 (two floats), got '{s}'") from None
    if not (0 <= b1 < 1 and 0 <= b2 < 1):   # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"betas must lie in [0, 1), got '{s}'")
    return b1, b2


def _arch(s: str) -> str:
    from .backends.cuda import check_arch

    try:
        return check_arch(s)
    except LincompileError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


#: Bounds of the integer arguments: sane, and far below what would overflow anything.
_seed = _number(int, 0, 2**63 - 1)
MAX_BATCH, MAX_EPOCHS, MAX_THREADS, MAX_WORKERS = 2**31 - 1, 100_000, 1024, 4096


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
    from .files import refuse_inputs

    refuse_inputs(outputs, [f for i in inputs for f in input_files(i, outputs)])


def roles(graph) -> tuple[list, list, list]:
    """(trainable parameters, frozen parameters, optimizer state) of a model or training
    graph: in a training graph a trainable parameter is an input ``P`` with ``P.next`` or
    ``P.grad`` among the outputs."""
    from .training import STATE_SUFFIXES

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


# ------------------------------------------------------------------------------- commands
def _export_args(p):
    p.add_argument("model", nargs="?", help="the model, an ONNX file (e.g. from "
                   "torch.onnx.export)")
    p.add_argument("-o", "--output", required=True, metavar="TRAIN.onnx",
                   help="where to write the training graph")
    p.add_argument("--state", metavar="PATH", help="where to write the starting state (default: "
                   "TRAIN.state.npz beside TRAIN.onnx)")
    _training_args(p, required=True)
    p.add_argument("--portable", action="store_true",
                   help="write one flat graph of standard ops (no local functions, one opset "
                        "import) that every ONNX runtime runs: OpenVINO, tract, onnx.reference")
    p.add_argument("--split", action="store_true",
                   help="write two graphs instead of one, for data-parallel loops: "
                        "TRAIN.grad.onnx (loss and every P.grad) and TRAIN.update.onnx (P, "
                        "P.grad, state and lr -> P.next and state .next)")
    _model_flags(p)


def _training_args(p, required: bool):
    p.add_argument("--loss", required=required, choices=["cross-entropy", "mse"])
    p.add_argument("--optimizer", required=required,
                   choices=["sgd", "adam", "adamw", "adagrad", "none"],
                   help="'none' writes loss and P.grad outputs only")
    p.add_argument("--lr", type=_number(float, 0, lo_open=True), metavar="F",
                   help="learning rate recorded in the file (lincompile.lr), > 0; default: "
                        "the optimizer's (sgd and adagrad 0.01, adam/adamw 0.001)")
    p.add_argument("--momentum", type=_number(float, 0, 1), metavar="F",
                   help="sgd only, in [0, 1], default 0")
    p.add_argument("--weight-decay", type=_number(float, 0), metavar="F",
                   help="≥ 0, default 0 (adamw: 0.01)")
    p.add_argument("--betas", type=_betas, metavar="B1,B2",
                   help="adam/adamw, each in [0, 1), default 0.9,0.999")
    p.add_argument("--eps", type=_number(float, 0, lo_open=True), metavar="F",
                   help="adam/adamw, > 0, default 1e-8; adagrad, default 1e-10")
    p.add_argument("--lr-decay", type=_number(float, 0), metavar="F",
                   help="adagrad only, ≥ 0, default 0")
    p.add_argument("--initial-accumulator-value", type=_number(float, 0),
                   metavar="F", help="adagrad only, ≥ 0, default 0")
    p.add_argument("--freeze", nargs="+", action="extend", default=[], metavar="NAME",
                   help="parameters to keep fixed (they stay initializers)")
    p.add_argument("--emit-grads", action="store_true", help="also output every P.grad")


def optimizer_from(a: argparse.Namespace):
    """The optimizer the flags ask for (None for 'none'); flags that do not apply to it
    are usage errors rather than silently ignored."""
    from .training import SGD, Adagrad, Adam, AdamW

    allowed = {"sgd": {"lr", "momentum", "weight_decay"}, "none": set(),
               "adam": {"lr", "weight_decay", "betas", "eps"},
               "adagrad": {"lr", "lr_decay", "weight_decay", "initial_accumulator_value",
                           "eps"}}
    allowed["adamw"] = allowed["adam"]
    given = {k for k in ("lr", "momentum", "weight_decay", "betas", "eps", "lr_decay",
                         "initial_accumulator_value") if getattr(a, k) is not None}
    bad = sorted(given - allowed[a.optimizer])
    if bad:
        flags = ", ".join("--" + b.replace("_", "-") for b in bad)
        raise UsageError(f"{flags} does not apply to --optimizer {a.optimizer}")
    kwargs = {k: getattr(a, k) for k in given}
    cls = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "adagrad": Adagrad}.get(a.optimizer)
    return cls(**kwargs) if cls else None


@command("export-training", _export_args,
         "write the training step of a model as a standard ONNX file",
         "lincompile export-training mlp.onnx -o mlp_train.onnx --loss cross-entropy "
         "--optimizer sgd --lr 0.1 --momentum 0.9")
def export_training(a) -> int:

    from . import save_onnx, training_graph
    from .files import save_npz
    from .frontends.layout import start_state

    opt = optimizer_from(a)
    if a.split and opt is None:
        raise UsageError("--split needs an optimizer (the gradient graph alone is "
                         "--optimizer none)")
    if a.split and a.emit_grads:
        raise UsageError("--emit-grads does not apply with --split: the gradient graph always "
                         "outputs every P.grad")
    out = Path(a.output)
    stem = out.name[:-5] if out.name.endswith(".onnx") else out.name
    state_path = Path(a.state) if a.state else out.with_name(stem + ".state.npz")
    # --split: -o TRAIN.onnx names the pair TRAIN.grad.onnx and TRAIN.update.onnx
    outs = ([out.with_name(f"{stem}.{part}.onnx") for part in ("grad", "update")] if a.split
            else [out])
    refuse_overwrite([a.model], [*outs, *(o.with_name(o.name + ".data") for o in outs),
                                 state_path])
    model = load(a.model, a)
    made = training_graph(model, loss=a.loss, optimizer=opt, frozen=a.freeze,
                          emit_grads=a.emit_grads, split=a.split)
    graphs = list(made) if a.split else [made]
    for g, o in zip(graphs, outs):
        path = save_onnx(g, o, portable=a.portable)
        what = {"grad": "gradient graph", "update": "update graph"}.get(
            g.meta.get("lincompile.split"), "training step")
        print(f"wrote {path}: {what} of '{model.name}' ({a.loss}, "
              f"{'no optimizer' if opt is None else opt}"
              f"{', portable form' if a.portable else ''})")
        print("  inputs:  " + ", ".join(f"{v.name} {_dims(v.shape)}" for v in g.inputs))
        print("  outputs: " + ", ".join(v.name for v in g.outputs))
    first, last = graphs[0], graphs[-1]   # the loss side; the side that holds every state
    frozen, state = roles(first)[1], roles(last)[2]
    if frozen:
        print("  frozen:  " + ", ".join(v.name for v in frozen))
    if "lincompile.logits" in first.meta:
        print(f"  logits:  {first.meta['lincompile.logits']}")
    moved = [f"{k} (from {m['source']}, {m['transform']}d)" if m["transform"] != "identity"
             else f"{k} (from {m['source']})" for k, m in
             json.loads(first.meta["lincompile.params"]).items()
             if m["transform"] != "identity" or m["source"] != k]
    if moved:
        print("  layout:  " + ", ".join(moved))
    feeds = start_state(last)
    save_npz(state_path, feeds)
    print(f"wrote {state_path}: the starting state, in this graph's layout (parameters"
          + (f", each P.sum at {opt.initial_accumulator_value:g}"
             if getattr(opt, "initial_accumulator_value", 0) else
             ", optimizer state at zero" if state else "")
          + (", step 0" if "step" in feeds else "")
          + (f", lr {float(feeds['lr']):g}" if "lr" in feeds else "") + ")")
    data = [v.name for v in first.inputs if v.name not in feeds]
    data = ", ".join(data[:-1]) + " and " + data[-1] if len(data) > 1 else data[0]
    if a.split:
        data += " for the gradient graph, its P.grad outputs for the update graph"
    print(f"start from dict(np.load('{state_path}')) plus {data}; feed each X.next back as X "
          "(docs/training-graphs.md)")
    return OK


def _validate_args(p):
    p.add_argument("file", help="an ONNX model or training graph")
    p.add_argument("--targets", default="reference,onnx", metavar="T,...",
                   help="comma-separated backends to check (default: reference,onnx; "
                        f"available: {','.join(TARGETS)})")
    p.add_argument("--batch", type=_number(int, 1, MAX_BATCH), default=4, metavar="N",
                   help="batch size N (default 4); the random feeds and outputs may take at "
                        "most 2 GiB")
    p.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help="seed of the random feeds, ≥ 0 (default 0)")
    _model_flags(p)
    _precision_arg(p, "of the Linear products on the CUDA targets (cuda, cuda-cpu); tf32 "
                      "and bf16 are held to 2e-2 instead of 1e-5")


def _precision_arg(p, what: str):
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32",
                   help=f"{what} (default fp32; tf32: tensor cores with tf32 operands; bf16: "
                        "bf16 operands, fp32 accumulation, like torch.autocast)")


@command("validate", _validate_args,
         "run random feeds through each backend and compare with the float64 reference",
         "lincompile validate mlp_train.onnx --targets reference,onnx --batch 8")
def validate(a) -> int:
    from . import validate
    from .validate import PRECISION_BOUND, PRECISION_TARGETS, REL_BOUND

    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise UsageError(f"unknown target(s) {unknown or a.targets!r}; choose from "
                         f"{', '.join(TARGETS)}")
    graph = load(a.file, a)
    report = validate(graph, targets, batch=a.batch, seed=a.seed, precision=a.precision)
    bound = f"‖out − ref‖/‖ref‖ ≤ {REL_BOUND:g}"
    if a.precision != "fp32" and set(targets) & set(PRECISION_TARGETS):
        bound += f" ({PRECISION_BOUND[a.precision]:g} for {a.precision} on the CUDA targets)"
    print(f"validate {a.file}: graph '{graph.name}', batch {a.batch}, seed {a.seed}; "
          f"bound {bound} against the float64 reference")
    print(report)
    bad = report.failures()
    if bad:
        print(f"FAILED: {len(bad)} of {len(report.rows)} outputs exceed the bound")
        return FAILED
    print(f"ok: {len(report.rows)} outputs within the bound on {', '.join(targets)}")
    return OK


def _explain_args(p):
    p.add_argument("file", help="an ONNX model or training graph")
    p.add_argument("--format", choices=["text", "markdown", "latex"], default="text")
    _model_flags(p)


@command("explain", _explain_args,
         "print each Linear's forward and chain-rule gradients with real names and shapes",
         "lincompile explain mlp.onnx --format markdown > derivation.md")
def explain(a) -> int:
    from .explain import explain

    print(explain(load(a.file, a), a.format), end="")
    return OK


def _info_args(p):
    p.add_argument("file", help="an ONNX model or training graph")
    _model_flags(p)


@command("info", _info_args,
         "list inputs, outputs, parameters, op counts and metadata of a model file",
         "lincompile info mlp_train.onnx")
def info(a) -> int:
    import onnx

    graph = load(a.file, a)
    proto = onnx.load(a.file, load_external_data=False)   # opset, producer, ONNX node types
    trainable, frozen, state = roles(graph)
    role = "training graph" if any(v.name == "loss" for v in graph.outputs) else "model"
    part = graph.meta.get("lincompile.split")
    if part in ("grad", "update"):
        role = f"{'gradient' if part == 'grad' else 'update'} graph of a split training step"
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                default="?")
    print(f"{a.file}: graph '{graph.name}', {role}, opset {opset}, producer "
          f"{proto.producer_name or '?'} {proto.producer_version}".rstrip())
    w = max(len(v.name) for v in [*graph.inputs, *graph.outputs, *trainable, *frozen])
    sw = max(len(_dims(v.shape)) for v in [*trainable, *frozen, graph.inputs[0]])
    row = lambda v, extra="": f"  {v.name:<{w}}  {v.dtype:<7} {_dims(v.shape):<{sw}}{extra}"
    print(f"inputs ({len(graph.inputs)}):")
    print("\n".join(row(v).rstrip() for v in graph.inputs))
    print(f"outputs ({len(graph.outputs)}):")
    print("\n".join(row(v).rstrip() for v in graph.outputs))
    size = lambda v: math.prod(v.shape)
    n_train, n_frozen = sum(map(size, trainable)), sum(map(size, frozen))
    print(f"parameters: {len(trainable)} trainable ({n_train:,} values), {len(frozen)} frozen "
          f"({n_frozen:,} values)")
    for v in trainable:
        print(row(v, f" {size(v):>9,}  trainable{_source(graph, v.name)}"))
    for v in frozen:
        print(row(v, f" {size(v):>9,}  frozen"))
    if state:
        print(f"optimizer state ({len(state)}): " + ", ".join(v.name for v in state))
    _print_head(graph)
    ops = Counter(n.op for n in graph.nodes)
    onnx_ops = Counter(n.op_type for n in proto.graph.node)
    print("ops: " + ", ".join(f"{k} ×{c}" for k, c in sorted(ops.items())))
    print("onnx nodes: " + ", ".join(f"{k} ×{c}" for k, c in sorted(onnx_ops.items())))
    if graph.meta:   # the file's metadata_props
        print("metadata:")
        for k, v in sorted(graph.meta.items()):
            print(f"  {k} = {v}")
    return OK


#: The files ``compile`` writes into its output folder, per target.
GENERATED = {"c": ("model.c", "model.h", "Makefile"),
             "cuda": ("model.cu", "model.h", "Makefile", "cuda_cpu.h")}


def _print_head(graph) -> None:
    """Which tensor is trained as the logits, and the classifier head left out after it."""
    head = json.loads(graph.meta.get("lincompile.head", "{}"))
    logits = graph.meta.get("lincompile.logits") or head.get("logits")
    if logits:
        print(f"logits: {logits}" + (" (trained by cross-entropy)"
                                     if "lincompile.logits" in graph.meta else ""))
    if head:
        what = ("after the chosen logits" if head["kind"] == "none" else
                f"classifier head ({head['kind']})")
        print(f"{what}, left out (a trained copy keeps it): {', '.join(head['nodes'])}"
              + (f" -> {', '.join(head['outputs'])}" if head["outputs"] else ""))


def _source(graph, name: str) -> str:
    """Where a trainable parameter comes from in the model file, where not the same name."""
    m = json.loads(graph.meta.get("lincompile.params", "{}")).get(name)
    if not m or (m["source"] == name and m["transform"] == "identity"):
        return ""
    return f"  (file: {m['source']}" + (f", {m['transform']}d)" if m["transform"] != "identity"
                                         else ")")


def _compile_args(p):
    p.add_argument("model", help="an ONNX model or training graph")
    p.add_argument("--target", default="c", choices=["c", "cuda"],
                   help="what to generate (default c): C99, or CUDA kernels with host entry "
                        "points")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                   help="folder for model.c (or model.cu), model.h and a Makefile")
    p.add_argument("--arch", type=_arch, default="sm_90",
                   help="GPU architecture the CUDA Makefile builds for: sm_NN or compute_NN "
                        "(default sm_90)")
    _precision_arg(p, "of the Linear products, --target cuda only")
    p.add_argument("--prefix", default="model", help="C name prefix of the entry points "
                   "(<prefix>_forward, <prefix>_train_step); a C identifier")
    p.add_argument("--threads", type=_number(int, 1, MAX_THREADS), default=1, metavar="N",
                   help=f"OpenMP threads for the GEMMs, 1 to {MAX_THREADS} (default 1)")
    p.add_argument("--force", action="store_true",
                   help="replace model.c, model.h, Makefile, … in OUTDIR even if lincompile "
                        "did not write them")
    p.add_argument("--train", action="store_true",
                   help="also generate the training step (needs --loss and --optimizer)")
    _training_args(p, required=False)
    _model_flags(p)


@command("compile", _compile_args,
         "generate standalone C (or CUDA) for a model's forward pass and, with --train, its "
         "training step",
         "lincompile compile mlp.onnx --target c -o mlp_c --train --loss cross-entropy "
         "--optimizer sgd --lr 0.1")
def compile_(a) -> int:
    from . import training_graph
    from .backends.c import write_c_sources
    from .files import refuse_foreign

    graph = load(a.model, a)
    out = Path(a.output)
    refuse_overwrite([a.model], [out / f for f in GENERATED[a.target]])
    refuse_foreign([out / f for f in GENERATED[a.target]], a.force, "--force")
    is_training = graph.meta.get("lincompile.role") == "training"
    if a.train and is_training:
        raise UsageError(f"{a.model} already is a training graph; drop --train")
    if a.train and (a.loss is None or a.optimizer is None):
        raise UsageError("--train needs --loss and --optimizer")
    if not a.train and (a.loss or a.optimizer or a.freeze or a.emit_grads):
        raise UsageError("--loss, --optimizer, --freeze and --emit-grads need --train")
    graphs = {"train_step" if is_training else "forward": graph}
    if a.train:
        graphs["train_step"] = training_graph(graph, loss=a.loss, optimizer=optimizer_from(a),
                                              frozen=a.freeze, emit_grads=a.emit_grads)
    if a.target == "cuda":
        from .backends.cuda import write_cuda_sources

        paths = write_cuda_sources(graphs, a.output, prefix=a.prefix, arch=a.arch,
                                   precision=a.precision, force=a.force)
    else:
        if a.precision != "fp32":
            raise UsageError("--precision tf32/bf16 needs --target cuda")
        paths = write_c_sources(graphs, a.output, prefix=a.prefix, threads=a.threads,
                                force=a.force)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    entries = [f"{a.prefix}_{e}" for e in graphs]
    entries += [f"{a.prefix}_{e}_init" for e, g in graphs.items() if g.initial_state]
    entries.append(f"{a.prefix}_workspace_size")
    print(f"entry points: {', '.join(entries)} (documented in model.h); build: "
          f"make -C {a.output}")
    return OK


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

    from .lower import lower_file
    from .ops.preview import DOMAIN

    if not Path(a.file).is_file():
        raise UsageError(f"no such file: '{a.file}'")
    before = [n.op_type for n in onnx.load(a.file, load_external_data=False).graph.node
              if n.domain == DOMAIN]
    path = lower_file(a.file, a.output)
    counts = ", ".join(f"{k} ×{c}" for k, c in sorted(Counter(before).items()))
    print(f"wrote {path}: {len(before)} {DOMAIN} node(s) in standard ops"
          + (f" ({counts})" if counts else ""))
    return OK


def _train_args(p):
    p.add_argument("model", nargs="?",
                   help="the model, an ONNX file (torch, scikit-learn, Keras, ...)")
    p.add_argument("--data", required=True, metavar="DATA",
                   help=".npz with arrays x and y, or .csv with the target in the last column")
    p.add_argument("-o", "--output", required=True, metavar="TRAINED.onnx",
                   help="where to write the trained model: a copy of MODEL with the trained "
                        "values (never MODEL itself)")
    _training_args(p, required=True)
    p.add_argument("--epochs", type=_number(int, 1, MAX_EPOCHS), default=10, metavar="E",
                   help="default 10")
    p.add_argument("--batch-size", type=_number(int, 1, MAX_BATCH), default=32, metavar="B",
                   help="default 32 (the last minibatch of an epoch may be smaller)")
    p.add_argument("--val-split", type=_number(float, 0, 1, hi_open=True), default=0.2,
                   metavar="F", help="fraction of rows held out to score each epoch, in [0, 1) "
                   "(default 0.2; 0: score on the training rows)")
    p.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help="seed of the held-out split and the shuffles (default 0)")
    p.add_argument("--target", default="onnx", choices=list(TARGETS),
                   help="where the training step runs (default onnx: onnxruntime)")
    p.add_argument("--workers", type=_number(int, 1, MAX_WORKERS), metavar="N",
                   help="data-parallel processes on torch.distributed (needs torch; gloo, or "
                        "NCCL for --target cuda): each runs its shard of every minibatch and "
                        "the gradients are all-reduced (default 1; under torchrun: as many as "
                        "it started)")
    _precision_arg(p, "of the Linear products, --target cuda or cuda-cpu only")
    p.add_argument("--x", default="x", metavar="KEY", help=".npz array of features (default x)")
    p.add_argument("--y", default="y", metavar="KEY", help=".npz array of targets (default y)")
    _model_flags(p)


@command("train", _train_args,
         "train a model file on your data and write the trained copy (the batch dim is always "
         "made symbolic)",
         "lincompile train mlp.onnx --data digits.npz -o mlp_trained.onnx --loss cross-entropy "
         "--optimizer adam --lr 0.01 --epochs 5")
def train(a) -> int:
    from .training_loop import train as run

    if a.optimizer == "none":
        raise UsageError("train needs an optimizer: --optimizer sgd, adam, adamw or adagrad")
    if a.emit_grads:
        raise UsageError("--emit-grads does not apply to train")
    if Path(a.data).suffix.lower() == ".csv" and (a.x, a.y) != ("x", "y"):
        raise UsageError("--x and --y name arrays of a .npz file; a .csv has its target last")
    if not Path(a.model).is_file():
        raise UsageError(f"no such file: '{a.model}'")
    run(a.model, a.data, loss=a.loss, optimizer=optimizer_from(a), epochs=a.epochs,
        batch_size=a.batch_size, val_split=a.val_split, seed=a.seed, target=a.target,
        logits=a.logits, freeze=a.freeze, x_key=a.x, y_key=a.y, workers=a.workers,
        out=a.output, stream=sys.stdout, precision=a.precision)
    return OK


def _demo_args(p):
    p.add_argument("--epochs", type=_number(int, 1, MAX_EPOCHS), default=10, metavar="E",
                   help="default 10")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="adam",
                   help="default adam (lr 0.01); sgd uses lr 0.1, momentum 0.9")
    p.add_argument("--lr", type=_number(float, 0, lo_open=True), metavar="F",
                   help="override the learning rate (> 0)")
    p.add_argument("--batch-size", type=_number(int, 1, MAX_BATCH), default=32, metavar="B",
                   help="default 32")
    p.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help="seed of the split, init and shuffles (≥ 0)")
    p.add_argument("--out", default="lincompile-demo", metavar="DIR",
                   help="where to write the training graph and the trained model "
                        "(default ./lincompile-demo)")
    p.add_argument("--force", action="store_true",
                   help="replace files of the same names in DIR even if lincompile did not "
                        "write them")


@command("demo", _demo_args,
         "train a 64-32-10 MLP on the bundled handwritten digits in onnxruntime",
         "lincompile demo --epochs 5 --optimizer sgd --out /tmp/digits")
def demo(a) -> int:
    from .demo import MODEL_FILE, TRAIN_FILE, run
    from .files import refuse_foreign

    out = Path(a.out)
    refuse_foreign([out / TRAIN_FILE, out / MODEL_FILE], a.force, "--force")
    run(epochs=a.epochs, optimizer=a.optimizer, out=a.out, lr=a.lr, batch_size=a.batch_size,
        seed=a.seed, force=a.force)
    return OK


def _cache_args(p):
    p.add_argument("action", choices=["info", "clear"],
                   help="info: where the build cache is, its entries and size; clear: delete "
                        "what lincompile keeps there")


@command("cache", _cache_args,
         "show where the cache of built C/CUDA libraries is and its size, or clear it",
         "lincompile cache info")
def cache_(a) -> int:
    import os

    from .backends.build import cache_info, clear_cache

    info = cache_info()
    where = ("from $LINCOMPILE_CACHE" if os.environ.get("LINCOMPILE_CACHE")
             else "default; set LINCOMPILE_CACHE to move it")
    if a.action == "clear":
        removed, freed = clear_cache()
        print(f"removed {removed} entries ({freed / 1e6:.1f} MB) from {info.path}")
        return OK
    print(f"cache:   {info.path} ({where})")
    if not info.writable:
        print("         not writable: each process builds into a private temporary cache")
    print(f"entries: {info.entries} builds")
    print(f"size:    {info.bytes / 1e6:.1f} MB")
    return OK


# ------------------------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="lincompile", formatter_class=fmt,
                description="Compile Linear-layer networks into chain-rule training graphs.",
                epilog="example:\n  lincompile demo\n  lincompile info model.onnx\n\n"
                       "'lincompile COMMAND -h' shows each command's options and an example.")
    p.add_argument("--version", action="version", version=f"lincompile {__version__}")
    p.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for c in COMMANDS.values():
        s = sub.add_parser(c.name, help=c.help, description=c.help[0].upper() + c.help[1:] + ".",
                           epilog=f"example:\n  {c.example}", formatter_class=fmt,
                           parents=[common])
        c.add_args(s)
        s.set_defaults(run=c.run)
    return p


def _model_after_freeze(a: argparse.Namespace) -> None:
    """``--freeze A B MODEL.onnx``: argparse gives MODEL to ``--freeze`` too (it takes one
    or more names); take the last one back as the model when no model came otherwise."""
    if "model" not in a or a.model is not None:
        return
    if getattr(a, "freeze", None) and a.freeze[-1].lower().endswith(".onnx"):
        a.model = a.freeze.pop()
    else:
        raise UsageError(f"the following arguments are required: model (see 'lincompile "
                         f"{a.command} -h')")


def main(argv: list[str] | None = None) -> int:
    try:  # never die on printing Σ or ∂ to a non-UTF-8 terminal
        sys.stdout.reconfigure(errors="replace")
    except (AttributeError, ValueError):
        pass
    verbose = "--verbose" in (sys.argv[1:] if argv is None else argv)
    try:
        a = parser().parse_args(argv)
        verbose = a.verbose
        if a.command is None:
            parser().print_help(sys.stderr)
            return USAGE
        _model_after_freeze(a)
        return a.run(a)
    except KeyboardInterrupt:
        print("lincompile: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line unless --verbose
        if verbose:
            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, OSError) and e.filename:
            msg = f"{e.strerror or e}: '{e.filename}'"
        elif not isinstance(e, LincompileError):
            msg = f"{type(e).__name__}: {msg} (a bug? rerun with --verbose and report it)"
        print(f"lincompile: error: {msg}", file=sys.stderr)
        return USAGE


if __name__ == "__main__":
    sys.exit(main())
