"""The one Jinja environment of the code generators, and text that is safe to put in C.

Templates hold code; Python holds the decisions and hands each template one flat dict of
finished C text. Nothing from a model (graph name, tensor names, metadata) ever becomes
an identifier: it reaches generated code only through :func:`c_comment` or
:func:`c_string`, which make any Python string inert in a comment or a string literal.

>>> c_comment("a */ b\\n#include <x> ??/")
'a *\\\\/ b\\\\n#include <x> ?\\\\?/'
>>> c_string('say "hi"??!')
'"say \\\\"hi\\\\"\\\\?\\\\?!"'
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jinja2
import numpy as np

from ..errors import CompileError


def templates_dir() -> Path:
    """``lincompile/templates`` in a wheel, the repository's ``templates/`` in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for d in (here / "templates", here.parent / "templates"):
        if (d / "c").is_dir():
            return d
    raise CompileError(f"lincompile's templates are missing (looked in {here / 'templates'} "
                       f"and {here.parent / 'templates'}); reinstall the package")


@cache
def environment(bytecode_dir: str | None = None) -> jinja2.Environment:
    """The shared environment: StrictUndefined (a missing value is an error), no
    autoescaping (the values are C text), optional on-disk bytecode cache (fast reloads)."""
    cache = None
    if bytecode_dir:
        try:
            os.makedirs(bytecode_dir, exist_ok=True)
            cache = jinja2.FileSystemBytecodeCache(bytecode_dir)
        except OSError:   # a read-only cache: render without it
            cache = None
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())), undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
        autoescape=False, bytecode_cache=cache)


def render(name: str, bytecode_dir: str | None = None, **values: object) -> str:
    try:
        return environment(bytecode_dir).get_template(name).render(**values)
    except jinja2.UndefinedError as e:
        raise CompileError(f"template {name}: {e} (a lincompile bug)") from None


# --------------------------------------------------------------------- language table
@dataclass(frozen=True)
class Lang:
    """What differs between the C and CUDA renderings of the same kernel templates."""

    name: str
    fn_qual: str      # qualifier of generated helper functions
    restrict: str     # the restrict keyword
    index: str        # declares the flat index `i` of an elementwise kernel over `n`
    barrier: str      # between dependent loops of one kernel

    def loop(self, var: str, bound: str) -> str:
        return f"for (size_t {var} = 0; {var} < {bound}; {var}++)"

    def nest(self, bounds: list[str]) -> str:
        """Indices ``i0, i1, ...`` over ``bounds`` (row-major), as text that the statement
        of the innermost iteration follows: nested loops in C; in CUDA one thread per
        point, its flat index split into the dims."""
        if self.name != "cuda":
            return "".join(self.loop(f"i{k}", b) + "\n" + "    " * (k + 1)
                           for k, b in enumerate(bounds))
        flat = "(size_t)blockIdx.x * blockDim.x + threadIdx.x"
        if not bounds:
            return f"if ({flat} == 0)\n    "
        if len(bounds) == 1:
            return f"const size_t i0 = {flat};\nif (i0 < {bounds[0]})\n    "
        par = [b if b.isidentifier() or b.isdigit() else f"({b})" for b in bounds]
        lines = [f"const size_t i = {flat};"]
        for k in range(len(bounds)):
            inner = " * ".join(par[k + 1:])
            idx = f"i / ({inner})" if k + 1 < len(bounds) - 1 else f"i / {inner}" if inner else "i"
            lines.append(f"const size_t i{k} = {idx}" + (f" % {par[k]};" if k else ";"))
        return "\n".join(lines) + f"\nif (i < {' * '.join(par)})\n    "


C = Lang("c", "static", "restrict", "for (size_t i = 0; i < {n}; i++)", "")
CUDA = Lang("cuda", "static __device__", "__restrict__",
            "size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; if (i < {n})",
            "__syncthreads();")
LANGS = {"c": C, "cuda": CUDA}


@dataclass(frozen=True)
class CType:
    """A dtype in generated code: its C type, literal suffix, math-function suffix."""

    dtype: str
    c: str
    bits: str      # the unsigned type holding its bit pattern
    sfx: str       # 1.0f / expf for float, 1.0 / exp for double
    itemsize: int


CTYPES = {
    "float32": CType("float32", "float", "uint32_t", "f", 4),
    "float64": CType("float64", "double", "uint64_t", "", 8),
    "int64": CType("int64", "int64_t", "uint64_t", "", 8),
}


# ----------------------------------------------------------------------- safe text
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
C_KEYWORDS = frozenset("""auto break case char const continue default do double else enum
    extern float for goto if inline int long register restrict return short signed sizeof
    static struct switch typedef union unsigned void volatile while _Bool _Complex
    _Imaginary main""".split())


def c_ident(name: str, what: str = "prefix") -> str:
    """``name`` if it is a usable C identifier, else a CompileError saying why."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise CompileError(f"{what} {name!r} is not a C identifier (letters, digits and _, "
                           "not starting with a digit)")
    if name in C_KEYWORDS or name.startswith("__") or re.match(r"_[A-Z]", name) or \
            name.lower().startswith("lc_") or len(name) > 40:
        raise CompileError(f"{what} {name!r} is reserved or too long for generated C (C "
                           "keywords, '__', '_X', 'lc_' prefixes and > 40 characters are out)")
    return name


def c_comment(text: object) -> str:
    """``text`` on one line, inert inside ``/* ... */``: non-printable and non-ASCII
    characters and backslashes are escaped, and ``*/``, ``/*`` and trigraph ``??`` are
    broken up with a backslash (so no comment ends early and no line splice happens)."""
    out: list[str] = []
    for ch in str(text):
        prev = out[-1][-1:] if out else ""
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif (ch == "/" and prev == "*") or (ch == "*" and prev == "/") or \
                (ch == "?" and prev == "?"):
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


def c_string(text: object) -> str:
    """A C string literal holding the UTF-8 bytes of ``text`` exactly (octal escapes, which
    never run into the next character; ``?`` escaped so no trigraph forms)."""
    out = ['"']
    for b in str(text).encode("utf-8"):
        ch = chr(b)
        if ch in '"\\?':
            out.append("\\" + ch)
        elif 0x20 <= b < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    out.append('"')
    return "".join(out)


def c_literal(value: float, ctype: CType) -> str:
    """``value`` rounded to ``ctype`` as an exact C literal: the shortest decimal that reads
    back as the same float (C compilers round literals correctly), or an integer."""
    if ctype.dtype == "int64":
        v = int(value)
        return f"INT64_C({v})" if v != -(2**63) else "INT64_MIN"
    v = np.float32(value) if ctype.dtype == "float32" else np.float64(value)
    if np.isnan(v):
        return f"({ctype.c})NAN"
    if np.isinf(v):
        return f"({'-' if v < 0 else ''}({ctype.c})INFINITY)"
    text = str(v) if ctype.dtype == "float32" else repr(float(v))
    if not any(c in text for c in ".en"):
        text += ".0"
    return text + ctype.sfx


def c_array_bits(data: np.ndarray) -> str:
    """The bit patterns of ``data`` (row-major) as a comma-separated list of hex literals,
    eight per line: exact for every value, NaN payloads and signed zeros included."""
    flat = np.ascontiguousarray(data).reshape(-1)
    if flat.size == 0:
        return "0"
    width = 2 * flat.dtype.itemsize   # hex digits per value
    digits = np.frombuffer(flat.astype(flat.dtype.newbyteorder(">")).tobytes().hex().encode(),
                           np.uint8).reshape(-1, width)
    cells = np.empty((flat.size, width + 5), np.uint8)   # "0x" digits "u, " (or "u,\n")
    cells[:, :2] = np.frombuffer(b"0x", np.uint8)
    cells[:, 2:2 + width] = digits
    cells[:, width + 2:] = np.frombuffer(b"u, ", np.uint8)
    cells[7::8, -1] = ord("\n")
    return cells.tobytes().decode()[:-2]   # no separator after the last value


def wrap_args(head: str, args: Sequence[str]) -> str:
    """``head`` + the comma-separated ``args`` + ``)``, wrapped under the parenthesis."""
    lines, line = [], head
    for a in args:
        if len(line) + len(a) + 2 > 92 and line != head:
            lines.append(line.rstrip())
            line = " " * len(head)
        line += a + ", "
    return "\n".join([*lines, line[:-2] + ")"])
