"""jobflow jobs for the executor tests (module level, so worker processes can import them)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from jobflow import job


@job
def record(marker: str, value: int, sleep: float = 0.0) -> dict:
    """Sleep, then append one line to ``marker``: the file counts executions that finished."""
    if sleep:
        time.sleep(sleep)
    with open(marker, "a") as f:
        f.write(f"{value} {os.getpid()} {Path.cwd().name}\n")
    return {"value": value, "pid": os.getpid()}


@job
def add(a: dict, b: int) -> int:
    return a["value"] + b


@job
def boom(message: str) -> None:
    raise ValueError(message)
