"""Hardening: shapes that must be exact, the user's files, absurd arguments, reserved names,
empty batches, hostile names in Markdown and oversized validation feeds."""

from __future__ import annotations

import math
import os
import re
import subprocess

import numpy as np
import onnx
import pytest
from conftest import TARGETS
from onnx import TensorProto, helper

import lincompile as lc
from lincompile.backends.c import write_c_sources, write_files
from lincompile.backends.cuda import write_cuda_sources
from lincompile.cli import main
from lincompile.errors import OptimizerError, OverwriteError
from lincompile.explain import explain

CPU_TARGETS = [t for t in ("reference", "onnx", "c", "cuda-cpu") if t in TARGETS]


@pytest.fixture
def cli(capsys, monkeypatch):
    """``lincompile ARGS`` in this process (what tests/test_cli.py runs as a subprocess)."""
    def run(*args, cwd=None) -> subprocess.CompletedProcess:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)
    return run


def assert_one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lincompile: error: "), r.stderr
    assert "a bug?" not in lines[0] and "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def small(name: str = "m", fc: str = "fc", d_in: int = 4, d_out: int = 3) -> lc.Graph:
    g = lc.Graph(name, seed=0)
    x = g.input("x", ["N", d_in])
    g.output(g.linear(g.relu(g.linear(x, 5, name=f"{fc}1")), d_out, name=f"{fc}2"), name="y")
    return g


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.onnx"
    lc.save_onnx(small(), path)
    return path


# ---------------------------------------------------------------------------- 1. reshape
RESHAPES_OK = [  # input shape, target shape: inferred exactly
    (["N", 4, 2], [0, -1]),
    (["N", 4, 2], [-1, 8]),
    (["N", 4, 2], [0, 2, 2, 2]),
    (["N", 8], [-1, 2, 4]),
    (["N", 6], [0, 3, -1]),
    ([3, 4], [-1, 6]),
    (["N", 3], [3, -1]),
]
RESHAPES_REFUSED = [  # the result is not one symbolic or fixed dim per axis
    (["N", 4], [-1, 2]),       # 2·N rows
    (["N", 4], [-1]),          # 4·N
    (["N", 4, 2], [-1, 4]),    # 2·N rows
    (["N", 4], [8]),           # only right for N = 2
    (["N", 4], [0, 8]),        # N·8 ≠ N·4
    (["N", 4, 2], [-1, 3]),    # not even an integer
    (["N", 4], [0, 0, 0]),     # copies a dim that is not there
    (["N", 4], [0, -2]),
]


@pytest.mark.parametrize("in_shape, spec", RESHAPES_OK)
def test_reshape_inference_is_exact_at_every_batch(in_shape, spec):
    g = lc.Graph("r")
    x = g.input("x", in_shape)
    y = g.output(g.reshape(g.mul(x, x), spec), name="y")
    for n in (3, 5):
        a = np.random.default_rng(n).standard_normal(
            [n if isinstance(d, str) else d for d in in_shape]).astype(np.float32)
        want = (a * a).reshape([a.shape[i] if d == 0 else d for i, d in enumerate(spec)])
        assert [n if isinstance(d, str) else d for d in y.shape] == list(want.shape)
        for t in ("reference", "onnx"):
            got = lc.compile(g, t).run({"x": a})["y"]
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("in_shape, spec", RESHAPES_REFUSED)
def test_reshape_that_a_shape_cannot_hold_is_refused_in_the_builder(in_shape, spec):
    g = lc.Graph("r")
    x = g.input("x", in_shape)
    with pytest.raises(lc.ShapeError, match=r"cannot reshape") as e:
        g.reshape(x, spec)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("in_shape, spec", RESHAPES_REFUSED[:5])
def test_reshape_that_a_shape_cannot_hold_is_refused_at_import(in_shape, spec, tmp_path,
                                                                cli):
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    graph = helper.make_graph(
        [node], "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                       [f"d{i}" for i in range(len(spec))])],
        [helper.make_tensor("shape", TensorProto.INT64, [len(spec)], spec)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "r.onnx")
    with pytest.raises(lc.LincompileError, match=r"cannot reshape"):
        lc.load_onnx(tmp_path / "r.onnx")
    assert_one_line_error(cli("validate", tmp_path / "r.onnx"), "cannot reshape")


def test_training_through_an_exact_reshape_validates():
    g = lc.Graph("r", seed=0)
    x = g.input("x", ["N", 4, 2])
    g.output(g.linear(g.reshape(x, [0, -1]), 3, name="fc"))
    t = lc.training_graph(g, "mse", lc.SGD(0.1))
    for n in (3, 5):
        assert lc.validate(t, ["onnx"], batch=n).ok


# ---------------------------------------------------------------------------- 2. files
def test_export_training_never_writes_over_its_input(model_file, tmp_path, cli):
    original = model_file.read_bytes()
    os.symlink(model_file, tmp_path / "link.onnx")
    os.link(model_file, tmp_path / "hard.onnx")
    (tmp_path / "sub").mkdir()
    train = ["--loss", "mse", "--optimizer", "sgd"]
    for src, out in [(model_file, model_file), (model_file, tmp_path / "sub" / ".." / "m.onnx"),
                     ("m.onnx", model_file), (model_file, tmp_path / "link.onnx"),
                     (tmp_path / "link.onnx", model_file), (model_file, tmp_path / "hard.onnx")]:
        r = cli("export-training", src, "-o", out, *train, cwd=tmp_path)
        assert_one_line_error(r, "refusing to write", "input")
        assert model_file.read_bytes() == original
    assert cli("export-training", model_file, "-o", tmp_path / "t.onnx", *train).returncode == 0


def test_export_training_never_writes_over_the_inputs_external_data(tmp_path, cli):
    g = small()
    lc.save_onnx(g, tmp_path / "m.onnx", external_data=True)
    data = (tmp_path / "m.onnx.data").read_bytes()
    r = cli("export-training", "m.onnx", "-o", "m.onnx.data", "--loss", "mse",
            "--optimizer", "sgd", cwd=tmp_path)
    assert_one_line_error(r, "refusing to write", "m.onnx.data")
    assert (tmp_path / "m.onnx.data").read_bytes() == data


def test_save_onnx_with_external_data_round_trips_and_replaces(tmp_path):
    g = small()
    path = tmp_path / "w.onnx"
    (tmp_path / "w.onnx.data").write_bytes(b"stale" * 1000)   # onnx alone would append
    for _ in range(2):
        lc.save_onnx(g, path, external_data=True)
    want = sum(p.data.nbytes for p in g.params.values())
    assert (tmp_path / "w.onnx.data").stat().st_size < want + 4096
    back = lc.load_onnx(path)
    for k, p in g.params.items():
        np.testing.assert_array_equal(back.params[k].data, p.data)
    assert sorted(os.listdir(tmp_path)) == ["w.onnx", "w.onnx.data"]


def test_an_interrupted_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    lc.save_onnx(small(), path)
    before = path.read_bytes()

    def torn(model, f, *a, **k):   # half a file, then the process "dies"
        with open(f, "wb") as out:
            out.write(model.SerializeToString()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save_model", torn)
    with pytest.raises(KeyboardInterrupt):
        lc.save_onnx(small("other", d_out=7), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_an_interrupted_write_of_sources_leaves_the_old_files(tmp_path):
    write_c_sources({"forward": small()}, tmp_path)
    before = {p: p.read_text() for p in tmp_path.iterdir()}
    with pytest.raises(TypeError):   # the second file fails half-way through the set
        write_files({"model.c": "/* new */", "model.h": object()}, tmp_path)
    assert {p: p.read_text() for p in tmp_path.iterdir()} == before


def test_compile_never_replaces_the_users_own_files(model_file, tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("Makefile", "model.c", "model.h"):
        (out / name).write_text(f"my own {name}\n")
        r = cli("compile", model_file, "-o", out)
        assert_one_line_error(r, "refusing to replace", name, "--force")
        assert (out / name).read_text() == f"my own {name}\n"
        (out / name).unlink()
    assert cli("compile", model_file, "-o", out).returncode == 0
    assert cli("compile", model_file, "-o", out).returncode == 0      # its own files: fine
    assert cli("compile", model_file, "--target", "cuda", "-o", out).returncode == 0
    (out / "Makefile").write_text("mine\n")
    assert cli("compile", model_file, "-o", out, "--force").returncode == 0
    assert (out / "Makefile").read_text().startswith("# Generated by lincompile")
    with pytest.raises(OverwriteError):   # the Python API refuses too
        (out / "model.h").write_text("mine\n")
        write_cuda_sources({"forward": small()}, out)
    assert sorted(os.listdir(out)) == ["Makefile", "cuda_cpu.h", "model.c", "model.cu",
                                       "model.h"]
    write_cuda_sources({"forward": small()}, out, force=True)
    (out / "cuda_cpu.h").write_text("mine\n")
    with pytest.raises(OverwriteError, match="cuda_cpu.h"):
        write_cuda_sources({"forward": small()}, out)
    assert (out / "cuda_cpu.h").read_text() == "mine\n"


def test_compile_never_writes_over_its_input_even_with_force(model_file, tmp_path, cli):
    (tmp_path / "Makefile").write_bytes(model_file.read_bytes())   # an ONNX file so named
    r = cli("compile", "Makefile", "-o", ".", "--force", cwd=tmp_path)
    assert_one_line_error(r, "refusing to write", "input")
    assert (tmp_path / "Makefile").read_bytes() == model_file.read_bytes()


def test_demo_refuses_to_replace_a_file_it_did_not_write(tmp_path, cli):
    (tmp_path / "digits_mlp.onnx").write_text("mine")
    r = cli("demo", "--epochs", "1", "--out", tmp_path)
    assert_one_line_error(r, "refusing to replace", "digits_mlp.onnx", "--force")
    assert (tmp_path / "digits_mlp.onnx").read_text() == "mine"
    assert not (tmp_path / "digits_mlp_train.onnx").exists()   # refused before training
    from lincompile.demo import run
    with pytest.raises(OverwriteError):
        run(epochs=1, out=tmp_path)


# ---------------------------------------------------------------------------- 3. arguments
@pytest.mark.parametrize("cmd, args, flag", [
    ("export-training", ["--optimizer", "sgd", "--lr", "nan"], "--lr"),
    ("export-training", ["--optimizer", "sgd", "--lr", "inf"], "--lr"),
    ("export-training", ["--optimizer", "sgd", "--lr", "1e400"], "--lr"),
    ("export-training", ["--optimizer", "sgd", "--momentum", "5"], "--momentum"),
    ("export-training", ["--optimizer", "sgd", "--momentum", "nan"], "--momentum"),
    ("export-training", ["--optimizer", "sgd", "--weight-decay", "nan"], "--weight-decay"),
    ("export-training", ["--optimizer", "sgd", "--weight-decay", "-inf"], "--weight-decay"),
    ("export-training", ["--optimizer", "adam", "--eps", "nan"], "--eps"),
    ("export-training", ["--optimizer", "adam", "--eps", "inf"], "--eps"),
    ("export-training", ["--optimizer", "adam", "--betas", "nan,0.9"], "--betas"),
    ("export-training", ["--optimizer", "adamw", "--betas", "0.9,1"], "--betas"),
    ("compile", ["--train", "--optimizer", "sgd", "--lr", "nan"], "--lr"),
    ("compile", ["--threads", "0"], "--threads"),
    ("compile", ["--threads", "100000"], "--threads"),
    ("compile", ["--target", "cuda", "--arch", "sm_90$(shell touch pwned)"], "--arch"),
    ("compile", ["--target", "cuda", "--arch", "sm_90 -Xcompiler -O0"], "--arch"),
    ("compile", ["--target", "cuda", "--arch", "90"], "--arch"),
    ("validate", ["--seed", "-5"], "--seed"),
    ("validate", ["--batch", "0"], "--batch"),
    ("validate", ["--batch", "1e3"], "--batch"),
    ("demo", ["--lr", "nan"], "--lr"),
    ("demo", ["--seed", "-5"], "--seed"),
    ("demo", ["--batch-size", "0"], "--batch-size"),
    ("demo", ["--epochs", "1000000000"], "--epochs"),
])
def test_absurd_arguments_are_one_line_usage_errors(cmd, args, flag, model_file, tmp_path,
                                                    cli):
    where = {"export-training": [model_file, "-o", tmp_path / "t.onnx", "--loss", "mse"],
             "compile": [model_file, "-o", tmp_path / "out"] + (
                 ["--loss", "mse"] if "--train" in args else []),
             "validate": [model_file], "demo": ["--out", tmp_path / "demo"]}[cmd]
    r = cli(cmd, *where, *args, cwd=tmp_path)
    assert_one_line_error(r, flag)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]   # nothing written


@pytest.mark.parametrize("make", [
    lambda: lc.SGD(math.nan), lambda: lc.SGD(math.inf), lambda: lc.SGD(-0.1),
    lambda: lc.SGD(0.1, momentum=5), lambda: lc.SGD(0.1, momentum=math.nan),
    lambda: lc.SGD(0.1, weight_decay=math.nan), lambda: lc.SGD(0.1, weight_decay=-1),
    lambda: lc.SGD(True), lambda: lc.SGD("0.1"),
    lambda: lc.Adam(math.nan), lambda: lc.Adam(eps=math.nan), lambda: lc.Adam(eps=math.inf),
    lambda: lc.Adam(eps=-1e-8), lambda: lc.Adam(betas=(math.nan, 0.999)),
    lambda: lc.Adam(betas=(0.9, 1.0)), lambda: lc.Adam(betas=(0.9,)),
    lambda: lc.AdamW(weight_decay=math.nan), lambda: lc.AdamW(betas=(-0.1, 0.9)),
])
def test_optimizer_classes_refuse_what_torch_refuses_and_non_finite_values(make):
    with pytest.raises(OptimizerError):
        make()


def test_optimizer_classes_accept_torchs_edge_values():
    lc.SGD(0.0, momentum=0.0, weight_decay=0.0)
    lc.Adam(0.0, betas=(0.0, 0.0), eps=0.0)
    lc.AdamW(np.float32(0.01), betas=[0.5, 0.5])   # a list is kept as a tuple
    assert lc.AdamW(betas=[0.5, 0.5]).betas == (0.5, 0.5)


def test_cuda_arch_is_checked_in_the_python_api(tmp_path):
    from lincompile.backends import cuda

    for bad in ("sm_90$(shell id)", "sm_90\nall:", "compute_", "sm_9", 90):
        with pytest.raises(lc.CompileError, match="arch"):
            write_cuda_sources({"forward": small()}, tmp_path / "o", arch=bad)
        with pytest.raises(lc.CompileError, match="arch"):
            cuda.compile(small(), arch=bad)
    assert not (tmp_path / "o").exists()
    for good in ("sm_90", "sm_90a", "compute_80", "sm_100"):
        assert cuda.check_arch(good) == good


# ---------------------------------------------------------------------------- 4. step, names
@pytest.fixture(scope="module")
def adam_graph():
    return lc.training_graph(small(), "cross-entropy", lc.Adam(0.01))


@pytest.mark.parametrize("target", CPU_TARGETS)
def test_step_must_be_a_non_negative_integer(adam_graph, target):
    exe = lc.compile(adam_graph, target)
    feeds = lc.random_feeds(adam_graph, batch=3)
    assert np.isfinite(exe.run(feeds)["loss"])
    for bad in (2.5, 3.0, math.nan, True, np.array(-1, np.int64), -4, 2**70, 2**63 - 1):
        with pytest.raises(lc.FeedError, match="'step'"):
            exe.run({**feeds, "step": bad})


@pytest.mark.parametrize("name", [
    "fc1.weight.grad", "fc2.bias.next", "fc1.weight.m", "fc1.bias.v", "fc1.weight.velocity",
    "fc2.weight.m.next", "step", "step.next", "lr", "loss", "target"])
def test_training_graph_names_are_reserved(name):
    g = lc.Graph("m", seed=0)
    x = g.input("x", ["N", 4])
    h = g.relu(g.linear(x, 5, name="fc1"), name=name)
    g.output(g.linear(h, 3, name="fc2"), name="y")
    with pytest.raises(lc.LincompileError, match=re.escape(f"'{name}'")) as e:
        lc.training_graph(g, "cross-entropy", lc.Adam())
    assert "\n" not in str(e.value)


def test_frozen_parameters_keep_their_dotted_names_free():
    g = lc.Graph("m", seed=0)
    x = g.input("x", ["N", 4])
    h = g.relu(g.linear(x, 5, name="fc1"), name="fc1.weight.grad")
    g.output(g.linear(h, 3, name="fc2"), name="y")
    t = lc.training_graph(g, "mse", lc.SGD(0.1), frozen=["fc1.weight"])
    assert "fc2.weight.next" in {v.name for v in t.outputs}


# ---------------------------------------------------------------------------- 5. N = 0
@pytest.mark.parametrize("target", CPU_TARGETS)
@pytest.mark.parametrize("loss", ["mse", "cross-entropy"])
def test_an_empty_batch_is_a_feed_error_for_training_and_empty_for_forward(target, loss):
    model = small()
    outs = lc.compile(model, target).run({"x": np.zeros((0, 4), np.float32)})
    assert outs["y"].shape == (0, 3) and outs["y"].dtype == np.float32
    t = lc.training_graph(model, loss, lc.Adam(0.01))
    with pytest.raises(lc.FeedError, match=r"N=0"):
        lc.compile(t, target).run(lc.random_feeds(t, batch=0))


@pytest.mark.parametrize("target", CPU_TARGETS)
@pytest.mark.parametrize("loss", ["mse", "cross-entropy"])
def test_a_mean_loss_over_an_empty_batch_is_nan_as_in_torch(target, loss):
    """A model whose output is a mean loss: over N = 0 it is 0 / 0 = NaN (torch's mean of an
    empty tensor), never 0; onnxruntime's SoftmaxCrossEntropyLoss cannot run on an empty
    batch, which target onnx says in one line."""
    torch = pytest.importorskip("torch", reason="the reference for the mean of nothing")
    m = lc.Graph("empty", seed=0)
    h = m.linear(m.input("x", ["N", 4]), 3, name="fc")
    x = np.zeros((0, 4), np.float32)
    if loss == "mse":
        m.output(m.mse(h, m.input("t", ["N", 3])), name="loss")
        feeds = {"x": x, "t": np.zeros((0, 3), np.float32)}
        want = torch.nn.functional.mse_loss(torch.zeros(0, 3), torch.zeros(0, 3))
    else:
        m.output(m.softmax_cross_entropy(h, m.input("t", ["N"], "int64")), name="loss")
        feeds = {"x": x, "t": np.zeros(0, np.int64)}
        want = torch.nn.functional.cross_entropy(torch.zeros(0, 3), torch.zeros(0).long())
    assert torch.isnan(want)
    if target == "onnx" and loss == "cross-entropy":
        with pytest.raises(lc.FeedError, match=r"SoftmaxCrossEntropyLoss cannot take an empty"):
            lc.compile(m, target).run(feeds)
        return
    with np.errstate(all="ignore"):
        assert np.isnan(lc.compile(m, target).run(feeds)["loss"])


# ---------------------------------------------------------------------------- 6. markdown
HOSTILE = ["<script>alert(1)</script>", "a|b", "`tick`", "**bold**", "[x](http://e.vil)",
           "line\nbreak", "&amp;", "$x$"]


def hostile_graph() -> lc.Graph:
    g = lc.Graph(HOSTILE[0], seed=0)
    x = g.input(HOSTILE[1], [HOSTILE[2], 3])
    h = g.relu(g.linear(x, 4, name=HOSTILE[3]))
    g.output(g.linear(h, 2, name=HOSTILE[4]), name=HOSTILE[5])
    return g


@pytest.mark.parametrize("training", [False, True])
def test_markdown_escapes_hostile_names(training):
    g = hostile_graph()
    g = lc.training_graph(g, "mse", lc.SGD(0.1)) if training else g
    md = explain(g, "markdown")
    for line in md.splitlines():   # every table row keeps its 3 or 4 cells
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line)[1:-1]
            assert len(cells) in (3, 4), line
    assert len(re.findall(r"^#{2,3} ", md, re.M)) == 3   # one title, one heading per Linear
    markdown_it = pytest.importorskip("markdown_it", reason="renders the Markdown to check it")
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    assert "<script" not in html and "<a " not in html and "<strong>" not in html
    assert html.count("<h3>") == 2 and html.count("<table>") == 4
    rows = re.findall(r"<tr>(.*?)</tr>", html, re.S)
    assert all(r.count("<td>") in (0, 3, 4) for r in rows)
    for name in ("a|b", "**bold**", "[x](http://e.vil)", "`tick`"):
        assert name in html.replace("&quot;", '"')   # shown literally, as text or code


# ---------------------------------------------------------------------------- 7. validate
def test_validate_refuses_feeds_that_would_not_fit(model_file, cli):
    with pytest.raises(lc.FeedError, match="GiB"):
        lc.validate(small(), ["reference"], batch=100_000_000)
    r = cli("validate", model_file, "--batch", "100000000")
    assert_one_line_error(r, "GiB", "smaller batch")
    assert cli("validate", model_file, "--batch", "1000").returncode == 0
