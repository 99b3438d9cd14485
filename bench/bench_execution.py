"""Overhead of the embedded executor per job (submit → start → record), against jobflow's run_locally.

    OMP_NUM_THREADS=1 python bench/bench_execution.py --n 1000 --workers 2

Runs N trivial jobflow jobs (each returns a number) through dftflow's SQLite
queue with local worker processes, and the same N jobs through
``jobflow.managers.local.run_locally`` (one process, in-memory store) as the
reference, and prints seconds per job and the ratio. Also times how long it
takes to queue N flows and to read the status counts.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobflow import Flow, JobStore, job  # noqa: E402
from jobflow.managers.local import run_locally  # noqa: E402
from maggma.stores import MemoryStore  # noqa: E402

from dftflow.execution.queue import JobQueue  # noqa: E402
from dftflow.execution.worker import flow_jobs, run_workers  # noqa: E402


@job
def trivial(i: int) -> int:
    return i * 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    print("$ python", " ".join(shlex.quote(a) for a in sys.argv))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        flows = [Flow([trivial(i)], name=f"f{i}") for i in range(args.n)]

        t0 = time.perf_counter()
        queue = JobQueue(root / "jobs.sqlite")
        for i, flow in enumerate(flows):
            queue.add_flow(f"f{i}", flow_jobs(flow))
        t_submit = time.perf_counter() - t0

        t0 = time.perf_counter()
        counts = run_workers(root / "jobs.sqlite", root, args.workers)
        t_run = time.perf_counter() - t0
        assert counts["COMPLETED"] == args.n, counts
        t0 = time.perf_counter()
        queue.counts()
        t_status = time.perf_counter() - t0
        size = (root / "jobs.sqlite").stat().st_size

        ref_flows = [Flow([trivial(i)], name=f"r{i}") for i in range(args.n)]
        store = JobStore(MemoryStore())
        t0 = time.perf_counter()
        import logging

        logging.getLogger("jobflow").setLevel(logging.ERROR)
        run_locally(Flow(ref_flows), store=store, log=False, ensure_success=True)
        t_ref = time.perf_counter() - t0

    per_job = t_run / args.n
    print(f"{'jobs':<34}{args.n}")
    print(f"{'queue N flows':<34}{t_submit:8.2f} s  ({1e3 * t_submit / args.n:.2f} ms per flow)")
    label = f"run (dftflow, {args.workers} workers)"
    print(f"{label:<34}{t_run:8.2f} s  ({1e3 * per_job:.2f} ms per job, "
          "submit→start→record, incl. worker start-up)")
    print(f"{'run (jobflow run_locally, 1 proc)':<34}{t_ref:8.2f} s  ({1e3 * t_ref / args.n:.2f} ms per job)")
    print(f"{'ratio dftflow / run_locally':<34}{t_run / t_ref:8.2f}  (<1: faster)")
    print(f"{'status counts':<34}{1e3 * t_status:8.2f} ms")
    print(f"{'queue database':<34}{size / 1e6:8.2f} MB ({size / args.n / 1e3:.1f} kB per job)")


if __name__ == "__main__":
    main()
