"""SCF step ratios of predicted starting densities on materials a model never saw (GPAW).

    OMP_NUM_THREADS=1 python bench/bench_accel.py --model MODEL.pt [--dataset DIR --split SPLIT]
        [--out accel-bench] [--workers 2] [--set ecut=300 --set kpoint_density=12]

Materials: 13 crystals built here from experimental lattice constants, made
of the elements of the demo dataset but absent from it (new compounds and
polymorphs: zincblende GaN, BAs, ZnO, AlAs; rocksalt ZnO, TiC, TiN; wurtzite
SiC and BN; B2 CuZn and FeAl; rutile MgF2 and ZnF2), plus, with ``--dataset``
and ``--split``, the held-back test materials of the split. Every arm of
``dftflow accel-eval`` runs with the same GPAW settings as the demo dataset.

Printed: steps per arm and material, the achieved ratio steps(ML)/steps(default)
for the deployable and the true-occupancy ML arms, the oracle and the optimal
ratios (mean ± std, median), and the model's inference time per material in
units of one SCF iteration of the default run, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pymatgen.core import Lattice, Structure


def unseen() -> list[tuple[str, Structure]]:
    def zb(a: float, x: str, y: str) -> Structure:
        return Structure.from_spacegroup("F-43m", Lattice.cubic(a), [x, y], [[0, 0, 0], [0.25, 0.25, 0.25]])

    def rs(a: float, x: str, y: str) -> Structure:
        return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [x, y], [[0, 0, 0], [0.5, 0.5, 0.5]])

    def wz(a: float, c: float, x: str, y: str) -> Structure:
        return Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(a, c), [x, y],
                                         [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.375]])

    def b2(a: float, x: str, y: str) -> Structure:
        return Structure.from_spacegroup("Pm-3m", Lattice.cubic(a), [x, y], [[0, 0, 0], [0.5, 0.5, 0.5]])

    def rutile(a: float, c: float, u: float, x: str, y: str) -> Structure:
        return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(a, c), [x, y], [[0, 0, 0], [u, u, 0]])

    built = {
        "GaN-zb": zb(4.50, "Ga", "N"), "BAs-zb": zb(4.777, "B", "As"), "ZnO-zb": zb(4.58, "Zn", "O"),
        "AlAs-zb": zb(5.66, "Al", "As"), "ZnO-rs": rs(4.28, "Zn", "O"), "TiC-rs": rs(4.328, "Ti", "C"),
        "TiN-rs": rs(4.24, "Ti", "N"), "SiC-2H": wz(3.076, 5.048, "Si", "C"), "BN-wz": wz(2.55, 4.21, "B", "N"),
        "CuZn-B2": b2(2.95, "Cu", "Zn"), "FeAl-B2": b2(2.91, "Fe", "Al"),
        "MgF2-rutile": rutile(4.62, 3.05, 0.303, "Mg", "F"), "ZnF2-rutile": rutile(4.70, 3.13, 0.303, "Zn", "F"),
    }
    return [(name, s.get_primitive_structure()) for name, s in built.items()]


def main() -> None:
    import yaml

    from dftflow.accel.run import accel_eval, dataset_materials

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--dataset", type=Path)
    ap.add_argument("--split", type=Path)
    ap.add_argument("--seen", action="store_true", help="also the split's training materials (seen by the model)")
    ap.add_argument("--out", type=Path, default=Path("accel-bench"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--nfixed", type=int, default=3)
    ap.add_argument("--arms", default="default,ml,ml-atomic-occ,ml-true-occ,oracle")
    ap.add_argument("--occupancies", default="auto", help="source of the ml arm's occupancies (see accel-eval)")
    ap.add_argument("--set", action="append", default=["ecut=300", "kpoint_density=12"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    materials = unseen()
    if args.dataset and args.split:
        materials += dataset_materials(args.dataset, args.split, "pbe-id", "test")
        if args.seen:
            materials += [(f"seen:{uid}", s) for uid, s in dataset_materials(args.dataset, args.split, "pbe-id",
                                                                           "train")]
    arms = tuple(args.arms.split(","))
    report = accel_eval(args.out.resolve(), materials, model=args.model, arms=arms, overrides=overrides,
                        nfixed=args.nfixed, workers=args.workers, occupancies=args.occupancies)
    rows = report["materials"]
    keys = [a.replace("-", "_") for a in arms]
    print(f"{'material':24s} " + " ".join(f"{a:>14s}" for a in arms) + "  metal magnetic  infer/SCF-iter")
    for r in rows:
        cells = [f"{r.get('steps_' + k, '-')!s:>14s}" for k in keys]
        print(f"{r['uid']:24s} " + " ".join(cells) + f"  {str(r.get('metal')):>5s} {str(r.get('magnetic')):>8s}"
              f"  {r.get('inference_per_scf_iteration', float('nan')):8.2f}")
    seen = [r for r in rows if r["uid"].startswith("seen:") and "optimal_ratio" in r]
    if seen:
        if "oracle" in arms:
            ordered = sum(r["steps_oracle"] < r.get("steps_ml_true_occ", 0) <= r["steps_default"] for r in seen)
            print(f"\nseen materials: oracle < ml-true-occ <= default in {ordered} of {len(seen)}")
        from dftflow.accel.report import summarize

        report["summary"] = summarize([r for r in rows if not r["uid"].startswith("seen:")], arms)
        report["summary_seen"] = summarize(seen, arms)
    summary = report["summary"]["all"]
    print(f"\n{summary['ratio_ml']['n'] if 'ratio_ml' in summary else '?'} materials")
    for key in [f"ratio_{k}" for k in keys if k != "default"] + ["optimal_ratio", "end_to_end_ratio_ml",
                                                                  "inference_per_scf_iteration"]:
        s = summary.get(key)
        if s and s["n"]:
            print(f"{key:32s} mean {s['mean']:.3f} ± {s['std']:.3f}  median {s['median']:.3f}")
    for label, block in report["summary"]["breakdown"].items():
        ml, occ = block.get("ratio_ml", {}), block.get("ratio_ml_true_occ", {})
        if ml.get("n"):
            print(f"{label:14s} n={ml['n']:2d}  ml {ml['mean']:.3f}  ml-true-occ {occ.get('mean') or float('nan'):.3f}")
    if report["problems"]:
        print("problems:", json.dumps(report["problems"], indent=1), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
