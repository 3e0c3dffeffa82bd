"""``lincompile train``: train a model file on the user's data and write the trained copy."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import TARGETS
from .args import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_WORKERS,
    model_flags,
    number,
    optimizer_from,
    precision_arg,
    seed,
    training_args,
)
from .base import OK, UsageError, command


def _train_args(p):
    p.add_argument("model", nargs="?",
                   help="the model, an ONNX file (torch, scikit-learn, Keras, ...)")
    p.add_argument("--data", required=True, metavar="DATA",
                   help=".npz with arrays x and y, or .csv with the target in the last column")
    p.add_argument("-o", "--output", required=True, metavar="TRAINED.onnx",
                   help="where to write the trained model: a copy of MODEL with the trained "
                        "values (never MODEL itself)")
    training_args(p, required=True)
    p.add_argument("--epochs", type=number(int, 1, MAX_EPOCHS), default=10, metavar="E",
                   help="default 10")
    p.add_argument("--batch-size", type=number(int, 1, MAX_BATCH), default=32, metavar="B",
                   help="default 32 (the last minibatch of an epoch may be smaller)")
    p.add_argument("--val-split", type=number(float, 0, 1, hi_open=True), default=0.2,
                   metavar="F", help="fraction of rows held out to score each epoch, in [0, 1) "
                   "(default 0.2; 0: score on the training rows)")
    p.add_argument("--seed", type=seed, default=0, metavar="S",
                   help="seed of the held-out split and the shuffles (default 0)")
    p.add_argument("--target", default="onnx", choices=list(TARGETS),
                   help="where the training step runs (default onnx: onnxruntime)")
    p.add_argument("--workers", type=number(int, 1, MAX_WORKERS), metavar="N",
                   help="data-parallel processes on torch.distributed (needs torch; gloo, or "
                        "NCCL for --target cuda): each runs its shard of every minibatch and "
                        "the gradients are all-reduced (default 1; under torchrun: as many as "
                        "it started)")
    precision_arg(p, "of the Linear products, --target c (fp32 or bf16), cuda or cuda-cpu")
    p.add_argument("--x", default="x", metavar="KEY", help=".npz array of features (default x)")
    p.add_argument("--y", default="y", metavar="KEY", help=".npz array of targets (default y)")
    model_flags(p)


@command("train", _train_args,
         "train a model file on your data and write the trained copy (the batch dim is always "
         "made symbolic)",
         "lincompile train mlp.onnx --data digits.npz -o mlp_trained.onnx --loss cross-entropy "
         "--optimizer adam --lr 0.01 --epochs 5")
def train(a) -> int:
    from ..training_loop import train as run

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
