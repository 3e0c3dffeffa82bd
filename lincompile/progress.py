"""Progress lines for training loops (``lincompile demo``, ``lincompile train``).

On a terminal a bar fills while an epoch runs; every epoch ends in one finished line:

>>> import io
>>> out = io.StringIO()
>>> p = Progress(out, epochs=10)
>>> p.batch(1, 3, 4)          # not a terminal: nothing until the epoch ends
>>> p.epoch(1, 0.5, "test accuracy  97.5%")
>>> out.getvalue()
'epoch  1/10 [##############################] loss 0.5000  test accuracy  97.5%\\n'
"""

from __future__ import annotations

from typing import TextIO

BAR = 30


def bar(done: int, total: int) -> str:
    k = BAR * done // total
    return "[" + "#" * k + "." * (BAR - k) + "]"


class Progress:
    """Writes to ``stream`` (None: nowhere); the bar moves only where it is a terminal."""

    def __init__(self, stream: TextIO | None, epochs: int):
        self.stream, self.epochs = stream, epochs
        self.live = stream is not None and stream.isatty()

    def say(self, *args, **kwargs) -> None:
        if self.stream is not None:
            print(*args, **kwargs, file=self.stream, flush=True)

    def batch(self, epoch: int, done: int, total: int) -> None:
        if self.live:
            self.say(f"\r{self._head(epoch)} {bar(done, total)}", end="")

    def epoch(self, epoch: int, loss: float, metric: str) -> None:
        self.say(("\r" if self.live else "") + f"{self._head(epoch)} {bar(1, 1)} "
                 f"loss {loss:.4f}  {metric}")

    def _head(self, epoch: int) -> str:
        return f"epoch {epoch:>2}/{self.epochs}"
