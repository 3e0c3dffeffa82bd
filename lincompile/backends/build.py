"""A content-addressed build cache for generated C (and later CUDA) libraries.

The library's name is a hash of its sources, the compiler's identity and the flags. A
build happens in a private temporary directory and the result is renamed into place, so
concurrent processes never load a half-written library; a cache hit is a stat and a
``dlopen``. The cache lives in ``$LINCOMPILE_CACHE``, else ``~/.cache/lincompile``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from ..errors import CompileError


def cache_dir() -> Path:
    d = os.environ.get("LINCOMPILE_CACHE") or Path.home() / ".cache" / "lincompile"
    return Path(d)


def compiler() -> str:
    return os.environ.get("CC") or "cc"


@cache
def compiler_id(cc: str) -> str:
    """``cc --version`` (first line) and the target triple: part of every cache key."""
    try:
        ver = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
        mach = subprocess.run([cc, "-dumpmachine"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CompileError(f"C compiler '{cc}' cannot run ({e}); install gcc or clang, or "
                           "set $CC") from None
    return f"{ver.stdout.splitlines()[0] if ver.stdout else '?'} {mach.stdout.strip()}"


@cache
def host_cpu() -> str:
    """The CPU model and feature flags: ``-march=native`` builds differ per CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def cc_line(cflags: list[str], source: str = "model.c", lib: str = "libmodel.so") -> list[str]:
    """The exact command that builds ``lib`` from ``source`` (run in the source's folder)."""
    return [compiler(), *cflags, "-fPIC", "-shared", source, "-o", lib, "-lm"]


def cache_key(files: dict[str, str], cmd: list[str], *extra: str) -> str:
    """A hash of the files, the exact command and ``extra`` (compiler identity, CPU)."""
    h = hashlib.sha256()
    for part in (shlex.join(cmd), *extra):
        h.update(part.encode() + b"\0")
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return h.hexdigest()[:32]


def build(files: dict[str, str], cflags: list[str], main: str = "model.c") -> Path:
    """The shared library built from ``files`` (name -> text) with ``cflags``, from the
    cache when it is there. Compiler failure: CompileError with its message and the path
    of the generated source (kept for inspection)."""
    cmd = cc_line(cflags, main)
    key = cache_key(files, cmd, compiler_id(cmd[0]),
                    host_cpu() if any("native" in f for f in cflags) else "")
    return build_cached(key, files, cmd, "libmodel.so", main)


def build_cached(key: str, files: dict[str, str], cmd: list[str], output: str,
                 source: str | None = None) -> Path:
    """``output``, made by running ``cmd`` in a private folder holding ``files``, unless the
    cache already holds it under ``key``. The result is renamed into place, so it appears
    whole or not at all; on failure the sources are kept and a CompileError says where."""
    root = cache_dir()
    final = root / key / output
    if final.is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        for name, text in files.items():
            (tmp / name).write_text(text)
        try:
            res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CompileError(f"compiler '{cmd[0]}' failed to run: {e}") from None
        if res.returncode != 0 or not (tmp / output).is_file():
            keep = root / f"failed-{key}"
            shutil.rmtree(keep, ignore_errors=True)
            os.replace(tmp, keep)
            where = keep / (source or next(iter(files)))
            msg = (res.stderr or res.stdout).strip()
            raise CompileError(f"{Path(cmd[0]).name} failed on {where} (exit "
                               f"{res.returncode}): {shlex.join(cmd)}\n{msg}")
        dest = root / key
        dest.mkdir(exist_ok=True)
        for name in files:   # sources next to the result, for reading and debugging
            os.replace(tmp / name, dest / name)
        os.replace(tmp / output, final)   # atomic: the result appears whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
