"""A content-addressed, verified build cache for generated C and CUDA libraries.

The library's name is a hash of its sources, the compiler's identity and the flags. A
build happens in a private temporary directory, records the sha256 of what it built beside
it (``libmodel.so.sha256``) and is renamed into place, so concurrent processes never load a
half-written library. A cache hit is verified before it is returned: an entry whose digest
is missing or does not match (truncated, bit-flipped, replaced) is rebuilt, with a one-line
warning on stderr, and never loaded. The cache lives in ``$LINCOMPILE_CACHE``, else
``~/.cache/lincompile``; when that cannot be written, a private temporary cache (removed at
exit) is used instead, with a one-line warning. See docs/cache.md.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import CompileError

#: suffix of the digest file written beside every cached artifact
DIGEST = ".sha256"
#: names of what the cache holds: entries (a key), kept failed builds, builds in progress
ENTRY = re.compile(r"[0-9a-f]{32}")
FAILED = re.compile(r"failed-[0-9a-f]{32}")
BUILDING = re.compile(r"\.[0-9a-f]{32}-.+")
JINJA = "jinja"   # compiled templates (see render.py)
TUNE = "tune"     # measured GEMM thresholds (see c_tune.py)

_fallback: dict[Path, Path] = {}   # unwritable cache -> the private one used instead
_fallback_lock = threading.Lock()


def cache_dir() -> Path:
    """The configured cache folder: ``$LINCOMPILE_CACHE``, else ``~/.cache/lincompile``."""
    d = os.environ.get("LINCOMPILE_CACHE") or Path.home() / ".cache" / "lincompile"
    return Path(d)


def bytecode_dir() -> str | None:
    """Where compiled templates are kept (the cache's ``jinja`` folder), or None when it
    cannot be written (templates are then compiled in memory each time)."""
    d = _fallback.get(cache_dir(), cache_dir()) / JINJA
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(d) if os.access(d, os.W_OK) else None


def tune_dir() -> Path:
    """Where measured tuning choices are kept: the cache's ``tune`` folder (in the private
    cache when the configured one cannot be written)."""
    return _fallback.get(cache_dir(), cache_dir()) / TUNE


def warn(message: str) -> None:
    """One line on stderr: the same in a script, a notebook and the CLI."""
    print(f"lincompile: warning: {message}", file=sys.stderr, flush=True)


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
    cache already holds a verified copy under ``key``. The result appears whole or not at
    all; on failure the sources are kept and a CompileError says where."""
    roots = [cache_dir()]
    if roots[0] in _fallback:
        roots.append(_fallback[roots[0]])
    for root in roots:
        if verified(root / key / output):
            return root / key / output
    root, tmp = _workdir(key)
    try:
        return _build(root, tmp, key, files, cmd, output, source)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified(artifact: Path, quiet: bool = False) -> bool:
    """True when ``artifact`` exists and matches the digest recorded beside it; a damaged
    or unrecorded one is False, with a warning unless ``quiet``."""
    if not artifact.is_file():
        return False
    try:
        got = sha256(artifact)
        want = artifact.with_name(artifact.name + DIGEST).read_text().strip()
    except FileNotFoundError:
        got, want = "", None
    except OSError as e:
        got, want = "", f"unreadable: {e.strerror or e}"
    if got == want:
        return True
    if not quiet:
        why = ("no digest recorded" if want is None else want if want.startswith("unreadable")
               else "its content does not match the digest recorded when it was built")
        warn(f"cache entry {artifact} is damaged ({why}); rebuilding it")
    return False


def _workdir(key: str) -> tuple[Path, Path]:
    """(cache root, a new private build folder in it): the configured cache, or a private
    temporary one (with a warning, once per process) when that cannot be written."""
    root = _fallback.get(cache_dir(), cache_dir())
    try:
        root.mkdir(parents=True, exist_ok=True)
        return root, Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    except OSError as e:
        if root != cache_dir():
            raise CompileError(f"cannot write the private build cache {root}: {e}") from None
        with _fallback_lock:
            if root not in _fallback:
                private = Path(tempfile.mkdtemp(prefix="lincompile-cache-"))
                atexit.register(shutil.rmtree, private, True)
                _fallback[root] = private
                warn(f"build cache {root} is not writable ({e.strerror or e}); using a private "
                     "temporary cache for this process (set LINCOMPILE_CACHE to a writable "
                     "folder)")
        private = _fallback[root]
        return private, Path(tempfile.mkdtemp(prefix=f".{key}-", dir=private))


def _build(root: Path, tmp: Path, key: str, files: dict[str, str], cmd: list[str],
           output: str, source: str | None) -> Path:
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
    (tmp / (output + DIGEST)).write_text(sha256(tmp / output) + "\n")
    dest, final = root / key, root / key / output
    try:   # a new entry: sources, artifact and digest appear at once
        os.rename(tmp, dest)
        return final
    except OSError:   # the entry exists: damaged, or another process just made it
        pass
    if verified(final, quiet=True):
        return final
    dest.mkdir(exist_ok=True)
    for name in files:   # sources next to the result, for reading and debugging
        os.replace(tmp / name, dest / name)
    # a new inode for the artifact (a process that loaded the old one keeps it), then the
    # digest: a reader in between sees a mismatch and builds again, never loads a bad one
    os.replace(tmp / output, final)
    os.replace(tmp / (output + DIGEST), dest / (output + DIGEST))
    return final


def load_library(path: Path) -> ctypes.CDLL:
    """``ctypes.CDLL(path)``; a library that will not load is a CompileError."""
    try:
        return ctypes.CDLL(str(path))
    except OSError as e:
        raise CompileError(f"cannot load the built library {path}: {e}; run 'lincompile "
                           "cache clear' and try again") from None


# ------------------------------------------------------------------------ housekeeping
@dataclass
class CacheInfo:
    """What ``lincompile cache info`` prints."""

    path: Path
    entries: int      # builds (one folder each: sources, artifact, digest)
    bytes: int        # everything lincompile keeps there
    writable: bool    # False: builds go to a private temporary cache instead


def _ours(root: Path) -> list[Path]:
    """Everything in ``root`` that lincompile made (and only that: the folder may be shared)."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [root / n for n in names
            if ENTRY.fullmatch(n) or FAILED.fullmatch(n) or BUILDING.fullmatch(n)
            or n in (JINJA, TUNE)]


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    return sum(_size(path / n) for n in os.listdir(path))


def cache_info() -> CacheInfo:
    root = cache_dir()
    ours = _ours(root)
    return CacheInfo(root, sum(1 for p in ours if ENTRY.fullmatch(p.name)),
                     sum(_size(p) for p in ours), _writable(root))


def _writable(path: Path) -> bool:
    """Whether ``path`` is (or could be made as) a folder this process can write."""
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def clear_cache() -> tuple[int, int]:
    """Remove every entry, failed build and compiled template lincompile keeps in the cache
    (nothing else in that folder); (entries removed, bytes freed). Libraries this process
    already loaded stay usable."""
    root = cache_dir()
    removed = freed = 0
    for p in _ours(root):
        size = _size(p)
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError as e:
            raise CompileError(f"cannot clear {p}: {e.strerror or e}") from None
        freed += size
        removed += bool(ENTRY.fullmatch(p.name))
    return removed, freed
