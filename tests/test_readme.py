"""README's command samples are real output: run them in the order shown, compare.

Each sample is a fenced block whose first line is ``$ lincompile …`` (the quick start's
``lincompile demo`` block too), run in one scratch folder in README order, so later samples
see the files earlier ones wrote; the ``python`` block before the ``train`` sample runs first
(it needs scikit-learn and skl2onnx). Output is compared line by line: a ``...`` line skips
output, timings are ignored, numbers agree within 2 % (or are both below 1e-4: rounding
noise, which differs between CPUs). ``python tests/test_readme.py`` rewrites the samples with
fresh output (keeping each ``...`` elision).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"```\n(\$ lincompile [^\n]*)\n(.*?)```", re.S)
DEMO = re.compile(r"```bash\npip install \.\nlincompile demo\n```\n\n```\n(.*?)```", re.S)
SETUP = re.compile(r"```python\n(import numpy as np\nfrom sklearn[^`]*?)```", re.S)
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?%?")
TIMING = re.compile(r"\bin \d+(?:\.\d+)? (?:s|ms|µs)\b")


def samples(text: str) -> list[tuple[str, str, int]]:
    """(command, expected output, position) of every sample, in README order."""
    out = [("lincompile demo", m.group(1), m.start()) for m in DEMO.finditer(text)]
    out += [(m.group(1)[2:], m.group(2), m.start()) for m in BLOCK.finditer(text)]
    return sorted(out, key=lambda s: s[2])


def run(command: str, cwd: Path) -> str:
    args = command.split()[1:]
    r = subprocess.run([sys.executable, "-m", "lincompile", *args], cwd=cwd, text=True,
                       capture_output=True, timeout=600,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, f"{command}: {r.stderr}"
    return r.stdout


def _num(tok: str) -> float:
    return float(tok.rstrip("%").replace(",", ""))


def lines_match(want: str, got: str) -> bool:
    want, got = TIMING.sub("in T s", want), TIMING.sub("in T s", got)
    if NUMBER.sub("#", want) != NUMBER.sub("#", got):
        return False
    for a, b in zip(NUMBER.findall(want), NUMBER.findall(got)):
        x, y = _num(a), _num(b)
        if not (x == y or math.isclose(x, y, rel_tol=0.02) or max(abs(x), abs(y)) < 1e-4):
            return False
    return True


def compare(command: str, expected: str, got: str) -> None:
    """Every expected line appears in order; ``...`` skips any number of output lines."""
    out = got.splitlines()
    i = 0
    skip = False
    for want in expected.splitlines():
        if want.strip() == "...":
            skip = True
            continue
        while skip and i < len(out) and not lines_match(want, out[i]):
            i += 1
        assert i < len(out), f"{command}: expected line missing: {want!r}\noutput:\n{got}"
        assert lines_match(want, out[i]), (f"{command}: line {i + 1} differs\n  README: "
                                           f"{want}\n  output: {out[i]}")
        i, skip = i + 1, False
    assert skip or i == len(out), f"{command}: extra output lines:\n" + "\n".join(out[i:])


def fresh(expected: str, got: str) -> str:
    """``got`` with the README's ``...`` elisions kept (for rewriting a sample)."""
    if "..." not in expected.splitlines():
        return got
    keep = [w for w in expected.splitlines() if w.strip() != "..."]
    out = got.splitlines()
    firsts = [next(j for j, o in enumerate(out) if lines_match(k, o)) for k in keep[:1]]
    start = firsts[0] if firsts else len(out) - len(keep)
    return "...\n" + "\n".join(out[start:]) + "\n"


def run_all(folder: Path, update: bool = False) -> str:
    text = README.read_text()
    setup = SETUP.search(text)
    new = text
    for command, expected, _ in samples(text):
        if command.startswith("lincompile train"):
            if setup is None:
                raise AssertionError("the train sample needs the python block before it")
            subprocess.run([sys.executable, "-c", setup.group(1)], cwd=folder, check=True,
                           timeout=300)
        got = run(command, folder)
        if update:
            new = new.replace(f"$ {command}\n{expected}", f"$ {command}\n{fresh(expected, got)}")
            if command == "lincompile demo":
                new = new.replace(expected, got)
        else:
            compare(command, expected, got)
    return new


def test_readme_samples_are_real_output(tmp_path):
    for mod in ("sklearn", "skl2onnx"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"the train sample builds its model with {mod}: pip install "
                        "'.[producers]'")
    assert len(samples(README.read_text())) >= 8
    run_all(tmp_path)


if __name__ == "__main__":   # regenerate the samples
    with tempfile.TemporaryDirectory() as d:
        README.write_text(run_all(Path(d), update=True))
    print(f"rewrote the samples of {README}")
