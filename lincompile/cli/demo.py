"""``lincompile demo``: train a small MLP on the bundled digits in onnxruntime."""

from __future__ import annotations

from pathlib import Path

from .args import MAX_BATCH, MAX_EPOCHS, number, seed
from .base import OK, command


def _demo_args(p):
    p.add_argument("--epochs", type=number(int, 1, MAX_EPOCHS), default=10, metavar="E",
                   help="default 10")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="adam",
                   help="default adam (lr 0.01); sgd uses lr 0.1, momentum 0.9")
    p.add_argument("--lr", type=number(float, 0, lo_open=True), metavar="F",
                   help="override the learning rate (> 0)")
    p.add_argument("--batch-size", type=number(int, 1, MAX_BATCH), default=32, metavar="B",
                   help="default 32")
    p.add_argument("--seed", type=seed, default=0, metavar="S",
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
    from ..demo import MODEL_FILE, TRAIN_FILE, run
    from ..files import refuse_foreign

    out = Path(a.out)
    refuse_foreign([out / TRAIN_FILE, out / MODEL_FILE], a.force, "--force")
    run(epochs=a.epochs, optimizer=a.optimizer, out=a.out, lr=a.lr, batch_size=a.batch_size,
        seed=a.seed, force=a.force)
    return OK
