"""``lincompile compile``: generate standalone C or CUDA sources (and a Makefile) for a
model's forward pass and, with ``--train``, its training step."""

from __future__ import annotations

from pathlib import Path

from .args import (
    MAX_THREADS,
    arch,
    model_flags,
    number,
    optimizer_from,
    precision_arg,
    training_args,
)
from .base import OK, UsageError, command, load, refuse_overwrite

#: The files ``compile`` writes into its output folder, per target.
GENERATED = {"c": ("model.c", "model.h", "Makefile"),
             "cuda": ("model.cu", "model.h", "Makefile", "cuda_cpu.h")}


def _compile_args(p):
    p.add_argument("model", help="an ONNX model or training graph")
    p.add_argument("--target", default="c", choices=["c", "cuda"],
                   help="what to generate (default c): C99, or CUDA kernels with host entry "
                        "points")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                   help="folder for model.c (or model.cu), model.h and a Makefile")
    p.add_argument("--arch", type=arch, default=None,
                   help="GPU architecture the CUDA Makefile builds for: sm_NN[a] or compute_NN "
                        "(default sm_90; sm_90a with --precision tf32/bf16, whose wgmma "
                        "kernels need it)")
    precision_arg(p, "of the Linear products (c: fp32 or bf16)")
    p.add_argument("--prefix", default="model", help="C name prefix of the entry points "
                   "(<prefix>_forward, <prefix>_train_step); a C identifier")
    p.add_argument("--threads", type=number(int, 1, MAX_THREADS), default=1, metavar="N",
                   help=f"OpenMP threads for the GEMMs, 1 to {MAX_THREADS} (default 1)")
    p.add_argument("--force", action="store_true",
                   help="replace model.c, model.h, Makefile, … in OUTDIR even if lincompile "
                        "did not write them")
    p.add_argument("--train", action="store_true",
                   help="also generate the training step (needs --loss and --optimizer)")
    training_args(p, required=False)
    model_flags(p)


@command("compile", _compile_args,
         "generate standalone C (or CUDA) for a model's forward pass and, with --train, its "
         "training step",
         "lincompile compile mlp.onnx --target c -o mlp_c --train --loss cross-entropy "
         "--optimizer sgd --lr 0.1")
def compile_(a) -> int:
    from .. import training_graph
    from ..backends.c import write_c_sources
    from ..files import refuse_foreign

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
        from ..backends.cuda import write_cuda_sources

        paths = write_cuda_sources(graphs, a.output, prefix=a.prefix, arch=a.arch,
                                   precision=a.precision, force=a.force)
    else:
        if a.precision == "tf32":
            raise UsageError("--precision tf32 needs --target cuda (target c: fp32 or bf16)")
        paths = write_c_sources(graphs, a.output, prefix=a.prefix, threads=a.threads,
                                precision=a.precision, force=a.force)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    twins = ("", "_argv") if a.target == "c" else ("",)   # C: each entry's one-array twin
    entries = [f"{a.prefix}_{e}{twin}" for e in graphs for twin in twins]
    entries += [f"{a.prefix}_{e}_init" for e, g in graphs.items() if g.initial_state]
    entries.append(f"{a.prefix}_workspace_size")
    if a.target == "c" and a.precision == "bf16":
        entries.append(f"{a.prefix}_bf16_kernel")
    print(f"entry points: {', '.join(entries)} (documented in model.h); build: "
          f"make -C {a.output}")
    return OK
