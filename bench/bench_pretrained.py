#!/usr/bin/env python
"""SCF steps saved by a pretrained correction model on materials it never saw, of two kinds.

Standalone script, not a test. It evaluates a model (default: the bundled one)
with ``accel_eval`` on

1. **generated** materials: the held-out (test) materials of the model's own
   dataset split whose reduced formula no training material has (held-out
   compositions of the prototype generator);
2. **real** crystals: structure files of real (ICSD/COD-style, experimental)
   crystals, primitive cells of at most ``--max-atoms`` atoms, whose elements the
   model was trained on and whose reduced formula no training material has.

For each kind it prints the deployable ``ml`` ratio (mean ± std, median), the
fraction of materials where ``ml`` needs more steps than the default guess,
the ``ml-true-occ`` and oracle ratios, the end-to-end ratio (ml arm plus
inference, over the default arm's wall time) and inference time in units of
one SCF iteration, and writes everything to ``--json``.

``--curve M1 M2 ...`` adds the ``ml@1`` ratio of other checkpoints (e.g. the same
model trained on fewer materials) on the generated kind: the curve of ratio
against training-set size. The curve's materials are the generated ones whose
reduced formula none of the compared models trained on (each checkpoint's
training materials are read from its config: its explicit ``train_ids`` or its
split), so models trained on other splits of the same build compare fairly.

Usage::

    OMP_NUM_THREADS=1 python bench/bench_pretrained.py --dataset pretrain-project/dataset \\
        --split pretrain-project/split.json --real workflows/structures/demo ../shared/fixtures/cif \\
        bench/real_crystals --out bench-pretrained --workers 2 --json bench-pretrained.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

OVERRIDES = {"ecut": 300, "kpoint_density": 12}
# ml: the calibrated correction factor; ml@1: the model's whole correction, to see what the model itself does
ARMS = ("default", "ml", "ml@1", "ml-true-occ", "oracle")


def training_formulas(dataset: Path, split: Path, task: str) -> tuple[set[str], set[int]]:
    from dftflow.dataset.split import load_split, task_sets
    from dftflow.dataset.store import Dataset

    ds = Dataset(dataset)
    try:
        train = task_sets(load_split(split), task)["train"]
        return ({ds.header(m)["formula"] for m in train},
                {int(z) for m in train for z in ds.header(m)["numbers"]})
    finally:
        ds.close()


def model_training_formulas(checkpoint: Path | str, datasets: list[Path]) -> set[str]:
    """Reduced formulas of a checkpoint's training materials, their uids looked up in ``datasets`` in turn."""
    from dftflow.dataset.split import load_split, task_sets
    from dftflow.dataset.store import Dataset
    from dftflow.ml.train import load_checkpoint

    data = load_checkpoint(checkpoint)["config"]["data"]
    todo = {u.split("@")[0] for u in (data.get("train_ids")
                                      or task_sets(load_split(data["split"]), data.get("task", "pbe-id"))["train"])}
    formulas: set[str] = set()
    for path in datasets:  # by structure (the uid before "@functional"): a new U table may move PBE to PBE+U
        ds = Dataset(path)
        try:
            for uid in ds.ids():
                structure = uid.split("@")[0]
                if structure in todo:
                    todo.discard(structure)
                    formulas.add(ds.header(uid)["formula"])
        finally:
            ds.close()
    if todo:
        raise SystemExit(f"{checkpoint}: {len(todo)} training materials are in none of {[str(d) for d in datasets]} "
                         f"(e.g. {min(todo)}); add the dataset they were harvested into (--curve-datasets)")
    return formulas


def generated(dataset: Path, split: Path, task: str, seen: set[str], limit: int) -> list[tuple[str, Any]]:
    from dftflow.accel.run import dataset_materials

    out = [(uid, s) for uid, s in dataset_materials(dataset, split, task, "test")
           if s.composition.reduced_formula not in seen]
    return out[:limit]


def real(paths: list[Path], seen: set[str], known: set[int], max_atoms: int, limit: int) -> list[tuple[str, Any]]:
    from real_crystals import primitive_cells

    out, formulas = [], set()
    for f, s in primitive_cells(paths):
        formula = s.composition.reduced_formula
        if (len(s) > max_atoms or not s.is_ordered or formula in seen or formula in formulas
                or any(site.specie.Z not in known for site in s)):
            continue
        formulas.add(formula)
        out.append((f"{formula}:{f.stem}", s))
    import random

    random.Random(0).shuffle(out)  # a seeded sample of the whole pool, not the first files alphabetically
    return out[:limit]


def summary(report: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in report["materials"] if r.get("ratio_ml") is not None or r.get("ratio_ml@1") is not None]

    def stats(key: str) -> dict[str, Any]:
        v = [r[key] for r in rows if r.get(key) is not None]
        if not v:
            return {"n": 0}
        return {"n": len(v), "mean": statistics.fmean(v), "std": statistics.pstdev(v), "median": statistics.median(v)}

    return {"materials": len(rows), "ml": stats("ratio_ml"), "ml@1": stats("ratio_ml@1"),
            "ml_true_occ": stats("ratio_ml_true_occ"),
            "oracle": stats("ratio_oracle"), "end_to_end_ml": stats("end_to_end_ratio_ml"),
            "inference_per_scf_iteration": stats("inference_per_scf_iteration"),
            "worse_than_default": sum((r.get("ratio_ml") or 0) > 1 for r in rows) / max(1, len(rows)),
            "more_than_10pct_worse": sum((r.get("ratio_ml") or 0) > 1.1 for r in rows),
            "fallbacks": sum(bool(r.get("fallback")) for r in rows),
            "worse_than_default_ml@1": sum((r.get("ratio_ml@1") or 0) > 1 for r in rows) / max(1, len(rows)),
            "steps": {k: sum(r.get(f"steps_{k}") or 0 for r in rows) for k in ("default", "ml", "ml@1",
                                                                                 "ml_true_occ", "oracle")},
            "failed": report["problems"]}


def main() -> None:
    from dftflow.accel.run import accel_eval
    from dftflow.models import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint or bundled name (default: the bundled default)")
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--task", default="pbe-id")
    ap.add_argument("--real", type=Path, nargs="*", default=[])
    ap.add_argument("--n-generated", type=int, default=20)
    ap.add_argument("--n-real", type=int, default=20)
    ap.add_argument("--max-atoms", type=int, default=8)
    ap.add_argument("--curve", nargs="*", default=[], help="other checkpoints for the size curve (ml arm only)")
    ap.add_argument("--curve-n", type=int, default=10, help="generated materials of the curve (the first ones)")
    ap.add_argument("--curve-datasets", type=Path, nargs="*", default=[],
                    help="older datasets that hold the curve models' training materials (after --dataset)")
    ap.add_argument("--out", type=Path, default=Path("bench-pretrained"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    model = resolve_model(args.model)
    seen, known = training_formulas(args.dataset, args.split, args.task)
    kinds = {"generated": generated(args.dataset, args.split, args.task, seen, args.n_generated),
             "real": real(args.real, seen, known, args.max_atoms, args.n_real)}
    from dftflow.ml.train import load_checkpoint

    scale = float(load_checkpoint(model).get("correction_scale", 1.0))
    # α = 0: the deployable arm is GPAW's default start itself (tests/accel/test_correction_start.py shows the
    # same steps and energy), so it is not run again; its ratio is 1 by construction
    arms = ARMS if scale != 0 else tuple(a for a in ARMS if a != "ml")
    results: dict[str, Any] = {"model": str(model), "correction_scale": scale, "overrides": OVERRIDES,
                               "arms": arms, "kinds": {}}
    for kind, materials in kinds.items():
        if not materials:
            continue
        print(f"{kind}: {len(materials)} materials", flush=True)
        report = accel_eval(args.out / kind, materials, model=model, arms=arms, overrides=OVERRIDES, nfixed=3,
                            workers=args.workers)
        results["kinds"][kind] = {**summary(report), "uids": [u for u, _ in materials],
                                  "per_material": [{k: r.get(k) for k in ("uid", "natoms", "metal", "magnetic",
                                                                          "steps_default", "steps_ml", "steps_ml@1",
                                                                          "steps_ml_true_occ", "steps_oracle",
                                                                          "ratio_ml", "ratio_ml@1", "ratio_ml_true_occ",
                                                                          "ratio_oracle", "fallback")}
                                                   for r in report["materials"]]}
    curve_set: list[tuple[str, Any]] = []
    if args.curve:
        seen_any = set().union(*(model_training_formulas(m, [args.dataset, *args.curve_datasets]) for m in args.curve))
        curve_set = [(u, s) for u, s in kinds["generated"] if s.composition.reduced_formula not in seen_any]
        curve_set = curve_set[:args.curve_n]
        print(f"curve: {len(curve_set)} generated materials that none of the {len(args.curve) + 1} models saw",
              flush=True)
    for i, other in enumerate(args.curve):
        report = accel_eval(args.out / f"curve-{i}", curve_set, model=Path(other),
                            arms=("default", "ml@1"), overrides=OVERRIDES, nfixed=3, workers=args.workers)
        ratios = [r["ratio_ml@1"] for r in report["materials"] if r.get("ratio_ml@1") is not None]
        results.setdefault("curve", []).append({"model": other, "materials": len(ratios),
                                                "train_materials": load_checkpoint(other).get("train_materials"),
                                                "ml@1": {"mean": statistics.fmean(ratios),
                                                         "std": statistics.pstdev(ratios)} if ratios else None})
    if args.curve and "generated" in results["kinds"]:  # the main model on the curve's materials
        first = {u for u, _ in curve_set}
        ratios = [r["ratio_ml@1"] for r in results["kinds"]["generated"]["per_material"]
                  if r["uid"] in first and r.get("ratio_ml@1") is not None]
        results["curve"].append({"model": str(model), "train_materials": load_checkpoint(model).get("train_materials"),
                                 "materials": len(ratios), "ml@1": {"mean": statistics.fmean(ratios),
                                                                    "std": statistics.pstdev(ratios)}})
    print(f"\n{'kind':>10} {'n':>3} {'ml mean±std':>14} {'median':>7} {'worse':>6} {'true-occ':>9} {'oracle':>7} "
          f"{'end-to-end':>10} {'infer/iter':>10}")
    for kind, s in results["kinds"].items():
        if not s["ml"]["n"]:  # α = 0: the deployable start is the default one
            s["ml"] = {"n": s["materials"], "mean": 1.0, "std": 0.0, "median": 1.0, "by_construction": True}
            s["end_to_end_ml"] = {"n": 0, "mean": float("nan")}
        print(f"{kind:>10} {s['materials']:>3} {s['ml']['mean']:>7.3f}±{s['ml']['std']:.3f} {s['ml']['median']:>7.3f} "
              f"{s['worse_than_default']:>6.0%} {s['ml_true_occ']['mean']:>9.3f} {s['oracle']['mean']:>7.3f} "
              f"{s['end_to_end_ml']['mean']:>10.3f} {s['inference_per_scf_iteration']['mean']:>10.2f}")
    for kind, s in results["kinds"].items():
        print(f"{kind:>10} ml@1 (whole correction): {s['ml@1']['mean']:.3f} ± {s['ml@1']['std']:.3f}, "
              f"worse than default on {s['worse_than_default_ml@1']:.0%}")
    for c in results.get("curve", []):
        if c["ml@1"]:
            print(f"curve: {c['train_materials']} training materials: ml@1 {c['ml@1']['mean']:.3f} ± "
                  f"{c['ml@1']['std']:.3f} on {c['materials']} generated materials")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
