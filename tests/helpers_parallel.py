"""Task functions for the run_tasks tests.

They live in an importable module (``tests.helpers_parallel``; pyproject puts the
repository root on pytest's ``pythonpath``) because worker processes started by the
forkserver import a task function by its module and name.
"""

from __future__ import annotations

import os
import time

KILLER = 7


def square(x: int) -> int:
    return x * x


def square_or_raise(x: int) -> int:
    if x % 5 == 3:
        raise ValueError(f"boom {x}")
    return x * x


def square_or_die(x: int) -> int:
    """Kill the worker process outright on :data:`KILLER`; the others take long enough
    that they are still in flight in the other worker when it dies."""
    if x == KILLER:
        time.sleep(0.05)
        os.kill(os.getpid(), 9)
    time.sleep(0.25)
    return x * x


def sleep_swallowing(seconds: float) -> str:
    """A task whose own ``except Exception`` would swallow a timeout that derives from it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except Exception:  # noqa: BLE001 - the point of the test
            return "timeout swallowed"
    return "finished"
