"""Shared fixtures: the backends every parametrized test runs on."""

from __future__ import annotations

import os

import numpy as np
import pytest

import lincompile as lc


def available_targets() -> list[str]:
    """Every registered target that can run here ('cuda' needs a GPU)."""
    out = []
    for t in lc.TARGETS:
        if t == "cuda":
            try:
                from lincompile.backends.cuda import gpu_available
            except ImportError:
                continue
            if not gpu_available():
                continue
        out.append(t)
    return out


# The C backend's GEMM thresholds take their defaults in tests (no per-cache-directory
# measurement; tests/test_c_gemm.py runs the measurement and both paths of each threshold).
os.environ.setdefault("LINCOMPILE_TUNE", "0")

TARGETS = available_targets()
#: Targets other than the reference itself: compared against the float64 reference.
COMPILED = [t for t in TARGETS if t != "reference"]


@pytest.fixture(params=TARGETS)
def target(request) -> str:
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the ONNX conformance summary (when its cases ran) after the progress lines."""
    import sys

    mod = sys.modules.get("test_onnx_conformance")
    line = mod.summary() if mod is not None else None
    if line:
        terminalreporter.write_sep("-", "ONNX conformance")
        terminalreporter.write_line(line)
