"""Add N relax → static → HSE06 workflows to a FireWorks LaunchPad (mongomock file) vs the embedded store.

    python bench/bench_fireworks.py --n 1000

Builds N slightly different Si cells, then times, on one core:

1. **build**: the jobflow flows (``vasp_flow``), once, shared by both engines;
2. **embedded**: serialising them and queueing them in ``jobs.sqlite`` (one transaction);
3. **fireworks**: ``dftflow.execution.fw_engine.add_workflows`` in one opening of a
   ``mongomock:`` LaunchPad — claim per structure, ``flow_to_workflow``, ``bulk_add_wfs``,
   then the atomic save of the JSON file;
4. **again**: the same N offered again to the LaunchPad (nothing is added);
5. **open**: one opening that does nothing (read the file, lock, rewrite it atomically);
6. **status**: ``fw_engine.rows`` (every firework with its state) in a fresh opening;

and prints both stores' sizes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    print("$ python", " ".join(shlex.quote(a) for a in sys.argv))

    import numpy as np
    from pymatgen.core import Lattice, Structure

    from dftflow.config.profile import FireworksSettings
    from dftflow.execution import fw_engine
    from dftflow.execution.fw_launchpad import open_launchpad
    from dftflow.execution.queue import JobQueue
    from dftflow.execution.worker import flow_jobs
    from dftflow.vasp.jobs import vasp_flow

    rng = np.random.default_rng(0)
    structures = [Structure(Lattice.cubic(5.43 * (1 + 0.01 * rng.standard_normal())), ["Si"] * 2,
                            [[0, 0, 0], [0.25, 0.25, 0.25]]) for _ in range(args.n)]
    settings = FireworksSettings(launchpad="mongomock:launchpad.json")
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        with open_launchpad(settings, project):
            pass  # FireWorks imported and the file made: not part of the timings
        t0 = time.perf_counter()
        flows = [(f"Si-{i:05d}", vasp_flow(s, f"Si-{i:05d}", hse_set="ecd-hse06-static"))
                 for i, s in enumerate(structures)]
        t_build = time.perf_counter() - t0

        t0 = time.perf_counter()
        queue = JobQueue(project / "jobs.sqlite")
        queue.add_flows([(uid, flow_jobs(flow)) for uid, flow in flows])
        queue.close()
        t_embedded = time.perf_counter() - t0

        items = [(uid, (lambda flow=flow: flow)) for uid, flow in flows]
        t0 = time.perf_counter()
        with open_launchpad(settings, project) as lp:
            added = fw_engine.add_workflows(lp, project, items)
            t_add = time.perf_counter() - t0
        t_fireworks = time.perf_counter() - t0
        assert added == args.n, added

        t0 = time.perf_counter()
        with open_launchpad(settings, project):
            pass
        t_open = time.perf_counter() - t0

        t0 = time.perf_counter()
        with open_launchpad(settings, project) as lp:
            again = fw_engine.add_workflows(lp, project, items)
        t_again = time.perf_counter() - t0
        assert again == 0, again

        t0 = time.perf_counter()
        with open_launchpad(settings, project) as lp:
            rows = fw_engine.rows(lp, project)
        t_status = time.perf_counter() - t0
        assert len(rows) == 3 * args.n

        n = args.n
        print(f"build {n} flows:                 {t_build:7.2f} s  ({1e3 * t_build / n:.2f} ms each)")
        print(f"embedded: queue in jobs.sqlite:  {t_embedded:7.2f} s  ({1e3 * t_embedded / n:.2f} ms each)")
        print(f"fireworks: add to the LaunchPad: {t_fireworks:7.2f} s  ({1e3 * t_fireworks / n:.2f} ms each; "
              f"{t_add:.2f} s before the save)")
        print(f"fireworks: open + save, no work: {t_open:7.2f} s  (read, lock, atomic rewrite of the file)")
        print(f"fireworks: the same {n} again:   {t_again:7.2f} s  (nothing added)")
        print(f"fireworks: status rows:          {t_status:7.2f} s  ({len(rows)} fireworks)")
        print(f"sizes: jobs.sqlite {(project / 'jobs.sqlite').stat().st_size / 1e6:.1f} MB, "
              f"launchpad.json {(project / 'launchpad.json').stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
