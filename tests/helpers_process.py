"""Kill -9 tests: wait until a process has got somewhere (a count in its SQLite file), then kill its group."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path


def wait_for_count(db: Path, query: str, at_least: int, *, timeout: float, poll: float = 0.05) -> int:
    """Poll ``query`` (a COUNT) on ``db`` until it reaches ``at_least`` or ``timeout`` passes; returns the count."""
    deadline = time.time() + timeout
    n = 0
    while time.time() < deadline:
        if db.exists():
            try:
                with closing(sqlite3.connect(db)) as con:
                    n = con.execute(query).fetchone()[0]
            except sqlite3.OperationalError:  # not created yet, or locked mid-write
                n = 0
            if n >= at_least:
                break
        time.sleep(poll)
    return n


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started (it must run with ``start_new_session=True``)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def submit_at_once(poscar: Path, folder: Path, project: Path, profile: Path, *, structures: int = 6,
                   hosts: int = 2, timeout: float = 300) -> list[dict]:
    """``structures`` copies of ``poscar`` submitted by ``hosts`` concurrent ``dftflow submit --json`` processes
    (MP relax → static); their JSON answers, after checking each exited 0."""
    import json
    import sys

    copies = []
    for i in range(structures):
        path = folder / f"Si{i}.vasp"
        path.write_bytes(poscar.read_bytes())
        copies.append(str(path))
    args = [sys.executable, "-m", "dftflow", "submit", *copies, "-p", str(project), "--profile", str(profile),
            "--relax-set", "mp-relax", "--static-set", "mp-static", "--json"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(hosts)]
    outs = [p.communicate(timeout=timeout) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    return [json.loads(out) for out, _ in outs]
