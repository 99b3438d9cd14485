#!/usr/bin/env python
"""Peak memory of screen and dedup on a catalog replicated to ~10x its size (see bench/README.md).

Standalone script, not a test. Takes the ``catalog.sqlite`` of a screened
project (e.g. ``bench_structures.py --keep``), copies it to ``OUT`` and adds
``COPIES - 1`` copies of every structure, each copy with a reduced formula of
its own (so a singleton bucket: a campaign of mostly unique candidates, which
adds no matching work). Then, with 2 workers, it

1. screens every structure with a chain that stops at its first filter
   (``max_atoms 1``, no order check): the streaming cost without the filters';
2. puts back the original screening outcomes (and copies of them) and runs
   ``run_dedup`` with the default settings;

and prints the peak RSS of each stage (``bench_structures.Clock`` with memory on).

Usage::

    OMP_NUM_THREADS=1 python bench/bench_funnel_memory.py PROJECT/catalog.sqlite /tmp/out 10
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_structures as bs  # noqa: E402  (sets the thread variables first)


def main(argv: list[str]) -> None:
    warnings.simplefilter("ignore")
    src, dst, copies = Path(argv[0]), Path(argv[1]), int(argv[2])
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for f in src.parent.glob(src.name + "*"):
        shutil.copy(f, dst / f.name)
    from dftflow.catalog import Catalog
    from dftflow.config.recipe import ScreeningSettings
    from dftflow.screening import stages as st

    cat = Catalog(dst / src.name)
    with cat.transaction() as db:
        db.execute("CREATE TABLE orig_outcomes AS SELECT * FROM outcomes WHERE filter != 'dedup'")
        db.execute("DELETE FROM stages WHERE stage='dedup'")
        for k in range(1, copies):
            db.execute("INSERT INTO structures SELECT uid || '#c' || ?, task_uid, source, status, reason, formula, "
                       "reduced_formula || '#' || uid || '#c' || ?, elements, nsites, nelements, data, provenance, "
                       "flags FROM structures WHERE uid NOT LIKE '%#c%'", (k, k))
    out: dict[str, object] = {"ok_structures": cat.count("ok")}
    with bs.ProcMonitor() as mon:
        fast = ScreeningSettings(max_atoms=1, order={"enabled": False})
        with bs.Clock(mon, True) as c:
            summary = st.run_screen(cat, fast, workers=2)
        out["screen_fail_first"] = {"summary": summary, "wall_s": round(c.wall, 1), "peak_rss_mb": c.peak_mb}
        with cat.transaction() as db:
            db.execute("DELETE FROM outcomes")
            db.execute("INSERT INTO outcomes SELECT * FROM orig_outcomes")
            for k in range(1, copies):
                db.execute("INSERT INTO outcomes SELECT uid || '#c' || ?, filter, status, reason, details, "
                           "params_hash FROM orig_outcomes", (k,))
        with bs.Clock(mon, True) as c:
            summary = st.run_dedup(cat, ScreeningSettings(), workers=2)
        out["dedup"] = {"summary": summary, "wall_s": round(c.wall, 1), "peak_rss_mb": c.peak_mb}
    print(json.dumps(out, indent=1))
    cat.close()


if __name__ == "__main__":
    main(sys.argv[1:])
