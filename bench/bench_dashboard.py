"""Time per view of ``dftflow dashboard`` on a large synthetic project (target: every view under 1 s).

    OMP_NUM_THREADS=1 python bench/bench_dashboard.py                   # 10,000 entries, 30,000 jobs
    OMP_NUM_THREADS=1 python bench/bench_dashboard.py --entries 100000 --jobs 300000 --json out.json

The project is written through dftflow's own schemas: the catalog's and the job queue's
tables are created by ``Catalog`` and ``JobQueue`` (flows queued with ``JobQueue.add_flows``),
the rows filled by SQLite inserts that match them (what import, screening and workers would
leave): import failures, filter rejections with reasons, duplicates, a selection; jobs in every
state, failures with an ``error.txt`` each; a dataset manifest with materials and a quarantine;
a training ``log.csv``; an accel-eval report. The dashboard then serves it on a free loopback
port and each view is fetched over HTTP ``--repeat`` times (median and worst printed), the
live jobs view also while a writer commits job state changes into ``jobs.sqlite``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dftflow.catalog import Catalog  # noqa: E402
from dftflow.dashboard import DashboardConfig, serve_in_thread  # noqa: E402
from dftflow.dataset.store import Manifest  # noqa: E402
from dftflow.execution.queue import JobQueue, NewJob  # noqa: E402
from dftflow.execution.worker import job_dir_for  # noqa: E402

FILTERS = ["order", "max_atoms", "max_elements", "electroneutrality", "symmetry"]
REASONS = {"electroneutrality": "not charge-neutral", "symmetry": "space group P1",
           "max_atoms": "more than 40 sites", "order": "partial occupancies"}
ELEMENTS = ["Li", "Na", "K", "Mg", "Ca", "Ti", "Fe", "Ni", "Cu", "Zn", "Al", "Si", "O", "S", "F", "Cl", "N"]


def make_catalog(root: Path, n: int, rng: random.Random) -> None:
    catalog = Catalog(root / "catalog.sqlite")
    structures, outcomes, selection = [], [], []
    for i in range(n):
        uid = f"bench:{i:07d}.cif"
        if rng.random() < 0.02:
            structures.append((uid, f"t{i}", "bench", "failed", "CIF: no atom sites in any data block", None, None,
                               None, None, None, None, "{}", "[]"))
            continue
        els = sorted(rng.sample(ELEMENTS, rng.randint(1, 3)))
        formula = " ".join(f"{e}{rng.randint(1, 4)}" for e in els)
        structures.append((uid, f"t{i}", "bench", "ok", None, formula, formula.replace(" ", ""), json.dumps(els),
                           rng.randint(1, 40), len(els), "{}", json.dumps({"source": "bench"}), "[]"))
        for name in FILTERS:
            failed = rng.random() < 0.04 and name in REASONS
            outcomes.append((uid, name, "fail" if failed else "pass", REASONS[name] if failed else None, "{}", "h"))
            if failed:
                break
        else:
            dup = rng.random() < 0.1
            outcomes.append((uid, "dedup", "fail" if dup else "pass", "duplicate" if dup else None, "{}", "h"))
            if not dup and len(selection) < 500:
                selection.append(("hse", uid, len(selection)))
    with catalog.transaction() as db:
        db.executemany("INSERT INTO structures VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)", structures)
        db.executemany("INSERT INTO outcomes VALUES(?,?,?,?,?,?)", outcomes)
        db.executemany("INSERT INTO filter_params VALUES(?,?,?)", [(f, "h", "{}") for f in FILTERS])
        db.executemany("INSERT INTO selections VALUES(?,?,?)", selection)
    catalog.close()


def make_jobs(root: Path, n: int, rng: random.Random) -> JobQueue:
    queue = JobQueue(root / "jobs.sqlite")
    flows = []
    for i in range(n // 2):
        static, hse = str(uuid.UUID(int=rng.getrandbits(128))), str(uuid.UUID(int=rng.getrandbits(128)))
        flows.append((f"bench:{i:07d}.cif", [NewJob(static, "gpaw_pbe_static", {"i": i}, []),
                                             NewJob(hse, "gpaw_hse_static", {"i": i}, [static])]))
    queue.add_flows(flows)
    now = time.time()
    rows = queue.db.execute("SELECT uuid, flow_id, name FROM jobs ORDER BY rowid").fetchall()
    updates, failed = [], []
    for u, flow, name in rows:
        x = rng.random()
        if x < 0.7:
            updates.append(("COMPLETED", now - rng.random() * 3600, now - rng.random() * 60, None, u))
        elif x < 0.77:
            why = rng.choice(["SCF did not converge in 60 iterations", "GPAW: out of memory", "walltime"])
            updates.append(("FAILED", now - 3600, now - rng.random() * 600, why, u))
            failed.append((u, flow, name, why))
        elif x < 0.775:
            updates.append(("RUNNING", now - 60, None, None, u))
    with queue._tx() as db:
        db.executemany("UPDATE jobs SET state=?, started=?, finished=?, error=? WHERE uuid=?", updates)
    for u, flow, name, why in failed:
        folder = job_dir_for(root, flow, name, u)
        folder.mkdir(parents=True)
        (folder / "error.txt").write_text(f"RuntimeError: {why}\n")
    return queue


def make_dataset(root: Path, n: int, rng: random.Random) -> None:
    manifest = Manifest(root / "dataset")
    grids = [[32, 32, 32], [40, 40, 40], [48, 48, 48], [60, 60, 90], [72, 72, 72]]
    manifest.db.executemany(
        "INSERT INTO materials VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [(f"bench|{i}", "stored", "s.h5", "h", 1, None, time.time(), "Si2", 2, json.dumps(rng.choice(grids)),
          "PBE", "gpaw", 100_000, "bench") for i in range(n)])
    manifest.db.executemany("INSERT INTO quarantine VALUES(?,?,?,?)",
                            [(f"bench|q{i}", f"/data/q{i}/CHGCAR", "CHGCAR: the file ends early", time.time())
                             for i in range(n // 20)])
    manifest.close()


def make_training(root: Path, steps: int, rng: random.Random) -> None:
    (root / "model").mkdir()
    lines = ["step,loss,lr,steps_per_s,val_eps_mae"]
    for s in range(1, steps + 1):
        val = f"{0.5 * (1 + 100 / s):.5f}" if s % 100 == 0 else ""
        lines.append(f"{s},{0.3 / (1 + s / 500) * (1 + 0.1 * rng.random()):.6f},0.001,5.0,{val}")
    (root / "model" / "log.csv").write_text("\n".join(lines) + "\n")


def make_report(root: Path, n: int, rng: random.Random) -> None:
    (root / "accel").mkdir()
    rows = [{"uid": f"bench:{i:07d}.cif", "natoms": 4, "steps_default": 14, "steps_ml": 10 + rng.randint(0, 4),
             "ratio_ml": rng.random()} for i in range(n)]
    (root / "accel" / "accel.json").write_text(json.dumps({"settings": {}, "summary": {"materials": n},
                                                           "materials": rows}))


def fetch(url: str) -> tuple[float, int]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        size = len(response.read())
    return time.perf_counter() - t, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=30_000)
    parser.add_argument("--materials", type=int, default=2_000)
    parser.add_argument("--log-steps", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="Also write the numbers here.")
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        root.mkdir()
        t = time.perf_counter()
        make_catalog(root, args.entries, rng)
        queue = make_jobs(root, args.jobs, rng)
        make_dataset(root, args.materials, rng)
        make_training(root, args.log_steps, rng)
        make_report(root, 1000, rng)
        print(f"synthetic project: {args.entries:,} catalog entries, {args.jobs:,} jobs, {args.materials:,} "
              f"materials, {args.log_steps:,} training steps ({time.perf_counter() - t:.1f} s to write)")
        t = time.perf_counter()
        server, _ = serve_in_thread(DashboardConfig(project=root, port=0))
        print(f"server up in {time.perf_counter() - t:.2f} s (imports included)")
        base = f"http://127.0.0.1:{server.server_address[1]}"
        views = {"page": "/", "overview": "/api/overview", "funnel": "/api/funnel",
                 "candidates": "/api/candidates", "candidates search": "/api/candidates?q=Fe&state=kept",
                 "jobs (live)": "/api/jobs", "datasets": "/api/datasets", "training": "/api/training",
                 "reports": "/api/reports"}
        results = {}
        print(f"{'view':<22}{'first s':>10}{'median s':>10}{'worst s':>10}{'bytes':>12}")
        for name, path in views.items():
            times, size = [], 0
            for _ in range(args.repeat):
                dt, size = fetch(base + path)
                times.append(dt)
            results[name] = {"first_s": times[0], "median_s": statistics.median(times), "max_s": max(times),
                             "bytes": size}
            print(f"{name:<22}{times[0]:>10.3f}{statistics.median(times):>10.3f}{max(times):>10.3f}{size:>12,}")
        # the live view while a build writes: a writer flips job states in its own transactions
        stop = threading.Event()

        def writer() -> None:
            own = JobQueue(root / "jobs.sqlite")  # a connection of this thread, as a worker has its own
            uuids = [u for (u,) in own.db.execute("SELECT uuid FROM jobs WHERE state='READY' LIMIT 2000")]
            for u in uuids:
                if stop.is_set():
                    break
                with own._tx() as db:
                    db.execute("UPDATE jobs SET state='COMPLETED', started=?, finished=? WHERE uuid=?",
                               (time.time() - 1, time.time(), u))
                time.sleep(0.002)
            own.close()

        thread = threading.Thread(target=writer)
        thread.start()
        times = [fetch(base + "/api/jobs")[0] for _ in range(args.repeat * 4)]
        stop.set()
        thread.join()
        results["jobs (live, writer active)"] = {"median_s": statistics.median(times), "max_s": max(times)}
        print(f"{'jobs, writer active':<22}{times[0]:>10.3f}{statistics.median(times):>10.3f}{max(times):>10.3f}")
        server.shutdown()
        queue.close()
        worst = max(r["max_s"] for r in results.values())
        print(f"slowest view: {worst:.3f} s (target < 1 s): {'met' if worst < 1 else 'NOT met'}")
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "views": results}, indent=2))


if __name__ == "__main__":
    main()
