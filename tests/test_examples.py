"""Every script in examples/ runs and does what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args, pre: str = "") -> subprocess.CompletedProcess:
    """``python examples/SCRIPT ARGS``, as a user runs it; ``pre`` runs first if given."""
    cmd = [sys.executable, str(EXAMPLES / script), *map(str, args)]
    if pre:
        cmd = [sys.executable, "-c", f"import runpy, sys; {pre}; sys.argv = {cmd[1:]!r}; "
               f"runpy.run_path({cmd[1]!r}, run_name='__main__')"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_every_example_is_tested():
    tested = {"torch_export.py", "train_onnxruntime.py", "finetune_last_layer.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_torch_export(tmp_path):
    pytest.importorskip("torch")
    r = run("torch_export.py", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "training inputs:  x, target, 0.weight, 0.weight.velocity" in r.stdout
    diff = float(re.search(r"max \|parameter difference\| after one step: (\S+)", r.stdout)[1])
    assert diff < 1e-5
    train = onnx.load(tmp_path / "mlp_train.onnx")
    assert [o.name for o in train.graph.output][:2] == ["loss", "0.weight.next"]


def test_torch_export_without_torch(tmp_path):
    r = run("torch_export.py", tmp_path, pre="sys.modules['torch'] = None")
    assert r.returncode == 0, r.stderr
    assert "needs PyTorch" in r.stdout and "skipping" in r.stdout
    assert not list(tmp_path.iterdir())


def test_train_onnxruntime(tmp_path):
    r = run("train_onnxruntime.py", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    losses = [float(v) for v in re.findall(r"mean loss ([\d.]+)", r.stdout)]
    assert len(losses) == 5 and losses[-1] < losses[0] / 3
    assert float(re.search(r"test accuracy ([\d.]+)%", r.stdout)[1]) > 90
    assert (tmp_path / "digits_trained.onnx").is_file()


def test_finetune_last_layer(tmp_path):
    r = run("finetune_last_layer.py", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "trainable inputs: fc2.weight, fc2.bias" in r.stdout
    before, after = map(float, re.findall(r"on held-out 5-9 \w+ fine-tuning: ([\d.]+)%",
                                          r.stdout))
    assert before < 10 and after > 70
    train = onnx.load(tmp_path / "finetune_train.onnx")
    inputs = {i.name for i in train.graph.input}
    inits = {t.name for t in train.graph.initializer}
    assert {"fc1.weight", "fc1.bias"} <= inits and not inputs & {"fc1.weight", "fc1.bias"}
    assert not any(o.name.startswith("fc1.") for o in train.graph.output)
