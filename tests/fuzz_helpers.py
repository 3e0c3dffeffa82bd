"""Shared by the fuzz tests (test_fuzz_import.py, test_fuzz_feeds.py): the run profiles and
the time bound of one example.

Profiles: by default a fixed-seed, derandomized run of a few hundred examples per test (each
file in well under a minute, as in CI). A longer random search, by hand (a new seed each run;
20 times the examples, or as many as given)::

    LINCOMPILE_FUZZ=long python -m pytest tests/test_fuzz_import.py tests/test_fuzz_feeds.py -q
    LINCOMPILE_FUZZ=50000 python -m pytest tests/test_fuzz_import.py -q -k mutated
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from hypothesis import HealthCheck, settings

# ------------------------------------------------------------------ profiles
_MODE = os.environ.get("LINCOMPILE_FUZZ", "ci")


def fuzz(ci_examples: int):
    """The settings of one fuzz test: ``ci_examples`` derandomized examples by default,
    a random search of 20 times as many (or ``LINCOMPILE_FUZZ`` examples) by hand."""
    n = {"ci": ci_examples, "long": 20 * ci_examples}.get(_MODE) or int(_MODE)
    return settings(max_examples=n, derandomize=_MODE == "ci", deadline=None, database=None,
                    print_blob=True, suppress_health_check=list(HealthCheck))


#: seconds one example may take (an import and a run, or a few runs of small graphs)
TIME_BOUND = 10.0


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_bound(seconds: float = TIME_BOUND):
    """Fail (not hang) an example that runs longer than ``seconds`` (main thread only)."""
    def fire(*_):
        raise Hang(f"example took more than {seconds} s")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
