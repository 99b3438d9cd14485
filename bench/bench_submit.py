"""Register and submit 10,000 structures' VASP workflows with the embedded store; time status.

    python bench/bench_submit.py --n 10000 [--pack 8] [--max-queued 50]

Builds N slightly different Si cells in memory, then times, on one core:

1. **register**: a relax → static → HSE06 ``vasp_flow`` per structure (the ECD
   input sets), serialised and queued in the project's ``jobs.sqlite``;
2. **submit**: what one ``dftflow submit`` round writes — ``max_queued``
   allocations of ``pack`` workflows each, ``launch.json`` with the jobs and
   the batch script (``sbatch`` itself is the scheduler's time, not measured
   here; the tests submit through a real SLURM);
3. **status**: ``dftflow status --json`` on the resulting store (recovery of
   the launches included);

and prints the store's size. Target from the issue: under a minute to
register, a few seconds for status.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--pack", type=int, default=8)
    ap.add_argument("--max-queued", type=int, default=50)
    args = ap.parse_args()
    print("$ python", " ".join(shlex.quote(a) for a in sys.argv))

    import numpy as np
    import yaml
    from pymatgen.core import Lattice, Structure

    from dftflow.execution.queue import JobQueue
    from dftflow.execution.worker import flow_jobs
    from dftflow.vasp.jobs import vasp_flow

    rng = np.random.default_rng(0)
    structures = [Structure(Lattice.cubic(5.43 * (1 + 0.01 * rng.standard_normal())), ["Si"] * 2,
                            [[0, 0, 0], [0.25, 0.25, 0.25]]) for _ in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        t0 = time.perf_counter()
        queue = JobQueue(project / "jobs.sqlite")
        batch = [(f"Si-{i:05d}", flow_jobs(vasp_flow(s, f"Si-{i:05d}", hse_set="ecd-hse06-static")))
                 for i, s in enumerate(structures)]
        t_build = time.perf_counter() - t0
        queue.add_flows(batch)
        queue.close()
        t_register = time.perf_counter() - t0
        profile = Path(tmp) / "profile.yaml"
        profile.write_text(yaml.safe_dump({
            "name": "bench", "scheduler": "slurm", "pack": args.pack,
            "slurm": {"walltime": "04:00:00", "max_queued": args.max_queued}, "commands": {"vasp_std": "vasp_std"}}))
        (project / "submit.json").write_text(json.dumps({"profile": str(profile)}))
        dftflow = [sys.executable, "-m", "dftflow"]
        from dftflow.config.profile import load_profile
        from dftflow.execution.launches import Launcher

        t0 = time.perf_counter()
        launcher = Launcher(project, load_profile(profile))
        flows = sorted({f for (f,) in launcher.queue.db.execute("SELECT flow_id FROM jobs")})
        for k in range(args.max_queued):  # what one submit round writes, without sbatch
            launcher._launch(flows[k * args.pack:(k + 1) * args.pack], dry_run=True)
        launcher.close()
        t_submit = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([*dftflow, "status", "-p", str(project), "--json"], check=True, capture_output=True)
        t_status = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in project.glob("jobs.sqlite*"))
        launches = len(list((project / "launches").glob("*/launch.json")))
    print(f"{'workflows (relax, static, HSE06)':<36}{args.n}")
    print(f"{'register (build + queue)':<36}{t_register:8.1f} s  (build flows {t_build:.1f} s, "
          f"{1e3 * t_register / args.n:.2f} ms per workflow)")
    print(f"{'submit round (no sbatch)':<36}{t_submit:8.1f} s  ({launches} allocations of {args.pack} workflows)")
    print(f"{'status --json':<36}{t_status:8.1f} s  (process start incl.)")
    print(f"{'store size':<36}{size / 1e6:8.1f} MB  ({size / args.n / 1e3:.1f} kB per workflow)")


if __name__ == "__main__":
    main()
