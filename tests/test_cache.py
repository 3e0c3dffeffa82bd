"""The build cache verifies an entry before loading it, and copes with a cache it cannot write.

Each damaged-cache case runs in a fresh Python process (a damaged library may crash the
process that loads it: here that shows as a failed test, not a dead pytest): the process
compiles the graph, runs it and compares with the float64 reference; it must succeed,
print exactly one warning line, and heal the entry (the next process prints none).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lincompile
from lincompile.backends import build
from lincompile.cli import main

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_ROOT = Path(lincompile.__file__).resolve().parents[1]   # the children import this one

CHILD = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {str(ROOT / "tests")!r})
    import numpy as np
    from helpers import mlp
    import lincompile as lc

    target, hidden = sys.argv[1], int(sys.argv[2])
    g = lc.training_graph(mlp((5, hidden, 3)), loss="mse", optimizer=lc.SGD(0.1))
    exe = lc.compile(g, target)
    feeds = lc.random_feeds(g, 9, 0)
    got = exe.run(feeds)
    ref = lc.compile(g, "reference", dtype="float64").run(feeds)
    for k, r in ref.items():
        assert np.allclose(got[k], r, rtol=1e-4, atol=1e-5), k
    print(exe.path)
""")


def child(cache: Path, target: str = "c", hidden: int = 6) -> subprocess.CompletedProcess:
    env = {**os.environ, "LINCOMPILE_CACHE": str(cache), "PYTHONPATH": str(PACKAGE_ROOT)}
    return subprocess.run([sys.executable, "-c", CHILD, target, str(hidden)], env=env,
                          capture_output=True, text=True, timeout=600)


def warnings_of(p: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in p.stderr.splitlines() if ln.startswith("lincompile: warning:")]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A cache holding the C build of the test graph, and the library of another graph
    (same entry points, other shapes: a 'foreign' library that loads and runs)."""
    cache = tmp_path_factory.mktemp("cache")
    paths = {}
    for name, hidden in (("lib", 6), ("foreign", 40)):
        p = child(cache, "c", hidden)
        assert p.returncode == 0 and not p.stderr, p.stderr
        paths[name] = Path(p.stdout.strip())
    return {"cache": cache, **paths}


def damage(how: str, lib: Path, foreign: Path) -> None:
    data = lib.read_bytes()
    if how == "truncated":
        lib.write_bytes(data[: len(data) // 2])   # in place: the SIGBUS case
    elif how == "bit-flipped":
        i = len(data) // 3
        lib.write_bytes(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:])
    elif how == "empty":
        lib.write_bytes(b"")
    elif how == "foreign":
        lib.write_bytes(foreign.read_bytes())
    elif how == "no-digest":
        lib.with_name(lib.name + build.DIGEST).unlink()
    elif how == "garbage-digest":
        lib.with_name(lib.name + build.DIGEST).write_text("0" * 64 + "\n")


@pytest.mark.parametrize("how", ["truncated", "bit-flipped", "empty", "foreign", "no-digest",
                                 "garbage-digest"])
def test_damaged_entry_is_rebuilt_with_one_warning(built, tmp_path, how):
    cache = tmp_path / "cache"
    shutil.copytree(built["cache"], cache)
    lib = cache / built["lib"].relative_to(built["cache"])
    damage(how, lib, cache / built["foreign"].relative_to(built["cache"]))
    p = child(cache)
    assert p.returncode == 0, f"{how}: exit {p.returncode}\n{p.stderr[-2000:]}"
    assert Path(p.stdout.strip()) == lib
    warned = warnings_of(p)
    assert len(warned) == 1 and "damaged" in warned[0] and str(lib) in warned[0], p.stderr
    assert build.verified(lib, quiet=True)   # healed: the next process loads it silently
    again = child(cache)
    assert again.returncode == 0 and not again.stderr, again.stderr


def test_damaged_cuda_cpu_entries_are_rebuilt(built, tmp_path):
    """The emulator's prebuilt kernel object and the model library are both verified."""
    cache = tmp_path / "cache"
    first = child(cache, "cuda-cpu")
    assert first.returncode == 0 and not first.stderr, first.stderr
    lib = Path(first.stdout.strip())
    objs = list(cache.glob("*/lc_kernels.o"))
    assert len(objs) == 1
    damage("truncated", lib, lib)
    damage("bit-flipped", objs[0], objs[0])
    p = child(cache, "cuda-cpu")
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(warnings_of(p)) == 2, p.stderr


def test_unwritable_cache_falls_back_to_a_private_one(tmp_path):
    """A cache path below a regular file cannot be made (root ignores chmod; this it
    cannot): the build goes to a private temporary cache, with one warning naming
    LINCOMPILE_CACHE, and nothing is left behind."""
    (tmp_path / "file").write_text("not a folder")
    p = child(tmp_path / "file" / "cache")
    assert p.returncode == 0, p.stderr[-2000:]
    warned = warnings_of(p)
    assert len(warned) == 1 and "LINCOMPILE_CACHE" in warned[0], p.stderr
    assert not Path(p.stdout.strip()).exists()   # the private cache is removed at exit


def test_concurrent_builds_give_no_warning(tmp_path, monkeypatch, capfd):
    """Threads building the same new entry at once: one wins the rename, the others find
    its verified result; none of them takes the others' work for damage."""
    from concurrent.futures import ThreadPoolExecutor

    import lincompile as lc

    monkeypatch.setenv("LINCOMPILE_CACHE", str(tmp_path))
    g = lc.Graph("race")
    g.output(g.sigmoid(g.input("x", ["N", 3])))
    with ThreadPoolExecutor(4) as pool:
        paths = {e.path for e in pool.map(lambda _: lc.compile(g, "c"), range(4))}
    assert len(paths) == 1 and build.verified(paths.pop(), quiet=True)
    assert "warning" not in capfd.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp left


def test_verified_reports_each_kind_of_damage(tmp_path, capfd):
    lib = tmp_path / "libx.so"
    assert not build.verified(lib)   # absent: not a hit, and not damage either
    assert capfd.readouterr().err == ""
    lib.write_bytes(b"\x7fELF...")
    assert not build.verified(lib)
    assert "no digest recorded" in capfd.readouterr().err
    (tmp_path / "libx.so.sha256").write_text(build.sha256(lib) + "\n")
    assert build.verified(lib)
    lib.write_bytes(b"\x7fELF..!")
    assert not build.verified(lib)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "does not match" in err


# ------------------------------------------------------------------ lincompile cache
def test_cache_info_and_clear_touch_only_lincompile_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LINCOMPILE_CACHE", str(tmp_path))
    key = "0123456789abcdef0123456789abcdef"
    for d in (key, f"failed-{key}", f".{key}-x1y2", "jinja"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f").write_bytes(b"x" * 1000)
    (tmp_path / "notes.txt").write_text("the user's own file")
    (tmp_path / "mine").mkdir()
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "LINCOMPILE_CACHE" in out
    assert "entries: 1 builds" in out and "0.0 MB" in out
    info = build.cache_info()
    assert (info.entries, info.bytes, info.writable) == (1, 4000, True)
    assert main(["cache", "clear"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "notes.txt"]
    assert build.cache_info().entries == 0


def test_cache_command_usage_error(capsys):
    assert main(["cache", "wipe"]) == 2
    assert "invalid choice" in capsys.readouterr().err
