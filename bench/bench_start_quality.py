#!/usr/bin/env python
"""How good must a predicted density be to save SCF steps? Steps against the error of the start, on GPAW.

Standalone script, not a test. For each crystal it converges GPAW's default
SCF (the accel-eval settings: gpaw_pbe_static, ecut 300 eV, k-length 12 Å,
3 fixed-density steps), then restarts it from

    start(ε) = atoms + (1 − ε) · (converged − atoms)

for the smooth density and the PAW density matrices together, i.e. a
correction model whose error on the correction is ε (ε = Σ|Δ − Δ̂| / Σ|Δ|, the
validation metric of correction models in docs/ml.md) and whose error points
along the correction itself. ε = 1 is GPAW's default start, ε = 0 the oracle.
A real model's errors are not parallel to the correction, so this curve is
the *best case*: the step ratio a model with validation error ε can reach at
most.

It prints, per ε, the mean, median and worst step ratio over the materials and
the mean energy error of the start (first SCF iteration, eV/atom), writes
``--json`` and a figure (``--figure``).

``--split`` adds, per material, the two halves of the oracle: the converged
smooth grid with the atoms' density matrices (``grid``), and the atoms' grid
with the converged density matrices (``D``): which half a model must get right.

Usage::

    OMP_NUM_THREADS=1 python bench/bench_start_quality.py bench/real_crystals --limit 20 \\
        --json start-quality.json --figure start-quality.png
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

OVERRIDES = {"ecut": 300, "kpoint_density": 12}
EPSILONS = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.0)


def crystals(paths: list[Path], max_atoms: int, limit: int) -> list[tuple[str, Any]]:
    from real_crystals import primitive_cells

    from dftflow.gpaw.params import available_setups

    out, seen = [], set()
    for _, s in primitive_cells(paths):
        formula = s.composition.reduced_formula
        if len(s) > max_atoms or not s.is_ordered or formula in seen or available_setups(
                [site.specie.symbol for site in s], "PBE"):
            continue
        seen.add(formula)
        out.append((formula, s))
    random.Random(0).shuffle(out)
    return out[:limit]


def _setup(structure: Any) -> tuple[Any, dict[str, Any], Any]:
    from dftflow.gpaw.params import gpaw_parameters, to_atoms
    from dftflow.gpaw.restart import GridConverter
    from dftflow.inputsets import load_inputset, with_overrides

    iset = with_overrides(load_inputset("gpaw_pbe_static"), OVERRIDES)
    atoms = to_atoms(structure, iset)
    params = gpaw_parameters(atoms, iset)
    return atoms, params, GridConverter(atoms, params).atomic


def _restart(atoms: Any, params: dict[str, Any], start: Any, log: Path, energy: float) -> dict[str, Any]:
    from dftflow.gpaw.log import gpaw_log_steps
    from dftflow.gpaw.restart import scf_from_density

    run = scf_from_density(atoms, params, start, nfixed=3, txt=str(log))
    first = gpaw_log_steps(log).first_scf_energy
    return {"steps": run["n_scf"] + run["n_fixed"],
            "start_error": None if first is None else abs(first / len(atoms) - energy)}


def halves(structure: Any, workdir: Path) -> dict[str, Any]:
    """Steps from the converged grid with atomic D, and from the atomic grid with converged D."""
    import numpy as np

    from dftflow.gpaw.restart import DensityState, scf_from_density, state_of

    atoms, params, atomic = _setup(structure)
    ref = scf_from_density(atoms, params, None, nfixed=3, txt=str(workdir / "default.txt"))
    truth = state_of(ref["dft"])
    energy = ref["energy"] / len(atoms)
    starts = {"grid": DensityState(truth.nt_sR.copy(), [D.copy() for D in atomic.D_asii]),
              "D": DensityState(atomic.nt_sR.copy(), [np.asarray(D).copy() for D in truth.D_asii])}
    return {name: _restart(atoms, params, start, workdir / f"{name}.txt", energy) for name, start in starts.items()}


def curve(structure: Any, workdir: Path) -> dict[str, Any]:
    """Steps and start energy error per ε for one crystal."""
    import numpy as np

    from dftflow.gpaw.restart import DensityState, scf_from_density, state_of

    atoms, params, atomic = _setup(structure)
    t0 = time.perf_counter()
    ref = scf_from_density(atoms, params, None, nfixed=3, txt=str(workdir / "default.txt"))
    wall = time.perf_counter() - t0
    truth = state_of(ref["dft"])
    energy = ref["energy"] / len(atoms)
    rows = {}
    for eps in EPSILONS:
        t = 1.0 - eps
        start = DensityState(atomic.nt_sR + t * (truth.nt_sR - atomic.nt_sR),
                             [a + t * (np.asarray(b) - a) for a, b in zip(atomic.D_asii, truth.D_asii, strict=True)])
        rows[str(eps)] = _restart(atoms, params, start, workdir / f"eps{eps}.txt", energy)
    return {"natoms": len(atoms), "default_steps": ref["n_scf"] + ref["n_fixed"], "default_wall_s": wall,
            "spinpol": bool(params.get("spinpol")), "eps": rows}


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for eps in map(str, EPSILONS):
        ratios = [r["eps"][eps]["steps"] / r["default_steps"] for r in results.values()]
        errors = [r["eps"][eps]["start_error"] for r in results.values() if r["eps"][eps]["start_error"] is not None]
        out[eps] = {"n": len(ratios), "mean": statistics.fmean(ratios), "median": statistics.median(ratios),
                    "worst": max(ratios), "saving_any": sum(x < 1 for x in ratios) / len(ratios),
                    "start_error_mean": statistics.fmean(errors) if errors else None}
    return out


def plot(results: dict[str, dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = list(EPSILONS)
    x = [max(e, 3e-3) for e in eps]  # ε = 0 (the oracle) drawn at the left edge of the log axis
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for r in results.values():
        ax.plot(x, [r["eps"][str(e)]["steps"] / r["default_steps"] for e in eps], color="0.75", lw=0.7)
    ax.plot(x, [summary[str(e)]["mean"] for e in eps], "o-", color="C0", label="mean")
    ax.plot(x, [summary[str(e)]["median"] for e in eps], "s--", color="C1", label="median")
    ax.axhline(0.8, color="k", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("ε of the start on the correction (1 = atoms; left edge: converged)")
    ax.set_ylabel("steps / default steps")
    ax.set_title(f"GPAW SCF steps against start error, {len(results)} crystals", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", type=Path, nargs="+", help="structure files or folders (CIF, POSCAR*)")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--max-atoms", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None, help="results; an existing file is continued")
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--split", action="store_true", help="also the grid-only and D-only halves of the oracle")
    args = ap.parse_args()

    import gpaw

    results: dict[str, Any] = {}
    if args.json and args.json.exists():
        results = json.loads(args.json.read_text()).get("materials", {})
    for formula, structure in crystals(args.paths, args.max_atoms, args.limit):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                if formula not in results:
                    results[formula] = curve(structure, Path(tmp))
                    r = results[formula]
                    print(formula, r["default_steps"], " ".join(f"{e}:{v['steps']}" for e, v in r["eps"].items()),
                          flush=True)
                if args.split and "halves" not in results[formula]:
                    results[formula]["halves"] = halves(structure, Path(tmp))
                    print(formula, "halves", {k: v["steps"] for k, v in results[formula]["halves"].items()},
                          flush=True)
            except Exception as exc:  # an SCF that does not converge is reported and left out
                print(f"{formula}: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
        if args.json:
            args.json.write_text(json.dumps({"materials": results}, indent=1))
    summary = summarize(results)
    print(f"\n{len(results)} crystals, GPAW {gpaw.__version__}, {OVERRIDES}, 3 fixed steps")
    print(f"{'eps':>6} {'mean':>6} {'median':>6} {'worst':>6} {'saves':>6} {'E0 err':>8}")
    for eps, s in summary.items():
        err = "-" if s["start_error_mean"] is None else f"{s['start_error_mean']:.3f}"
        print(f"{eps:>6} {s['mean']:6.3f} {s['median']:6.3f} {s['worst']:6.3f} {s['saving_any']:6.2f} {err:>8}")
    with_halves = [r for r in results.values() if "halves" in r]
    if with_halves:
        summary["halves"] = {}
        for name in ("grid", "D"):
            ratios = [r["halves"][name]["steps"] / r["default_steps"] for r in with_halves]
            summary["halves"][name] = {"n": len(ratios), "mean": statistics.fmean(ratios),
                                       "median": statistics.median(ratios), "worst": max(ratios),
                                       "saving_any": sum(x < 1 for x in ratios) / len(ratios)}
            print(f"oracle half '{name}' only: mean {summary['halves'][name]['mean']:.3f}, "
                  f"median {summary['halves'][name]['median']:.3f}, saves on "
                  f"{summary['halves'][name]['saving_any']:.0%} of {len(ratios)}")
    if args.json:
        args.json.write_text(json.dumps({"settings": {"overrides": OVERRIDES, "nfixed": 3, "gpaw": gpaw.__version__},
                                         "summary": summary, "materials": results}, indent=1))
    if args.figure:
        plot(results, summary, args.figure)


if __name__ == "__main__":
    main()
