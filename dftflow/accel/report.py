"""Step ratios per material and over materials, as JSON, CSV and the paper-style figures.

Steps are all electronic steps of a run (the fixed-density ones included, as
VASP's OSZICAR counts them): that is what a user pays for, and every arm makes
the same number of fixed steps. The ratio of SCF iterations alone is reported
next to it. The *achieved* ratio is steps(ML)/steps(default), the *oracle*
ratio steps(oracle)/steps(default), and the paper's *optimal* ratio
1/steps(default) (a single step). ``start_error_<arm>`` is how far the energy
of the first SCF iteration lies from the converged one (eV/atom): a start's
quality on a continuous scale, which step counts show only in whole steps.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "std": None, "median": None}
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.pstdev(values) if len(values) > 1 else 0.0, "median": statistics.median(values)}


def material_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per material from the arm results (``uid``, ``arm`` ... as the arm jobs return them)."""
    by_uid: dict[str, dict[str, Any]] = {}
    for r in results:
        by_uid.setdefault(r["uid"], {})[r["arm"]] = r
    rows = []
    for uid in sorted(by_uid):
        arms = by_uid[uid]
        default = arms.get("default")
        row: dict[str, Any] = {"uid": uid, "arms": sorted(arms)}
        if default is None:
            rows.append(row)
            continue
        row.update({"natoms": default.get("natoms"), "metal": default.get("metal"),
                    "magnetic": default.get("magnetic"), "gap": default.get("gap"),
                    "optimal_ratio": 1.0 / default["steps"], "scf_iteration_s": default["wall_s"] / default["steps"]})
        for name, r in arms.items():
            if name == "predict":
                continue
            key = name.replace("-", "_")
            row[f"steps_{key}"] = r.get("steps")
            row[f"scf_{key}"] = r.get("n_scf")
            row[f"wall_{key}"] = r.get("wall_s")
            if name != "default":
                row[f"ratio_{key}"] = r["steps"] / default["steps"]
                row[f"scf_ratio_{key}"] = r["n_scf"] / default["n_scf"]
                row[f"energy_diff_{key}"] = abs(r["energy"] - default["energy"]) / max(1, default.get("natoms") or 1)
            if r.get("start_energy") is not None:  # how far the start was from the converged energy, eV/atom
                row[f"start_error_{key}"] = (abs(r["start_energy"] - default["energy"])
                                             / max(1, default.get("natoms") or 1))
        prediction = arms.get("predict")
        if prediction is not None:
            row["inference_s"] = prediction.get("seconds")
            row["inference_per_scf_iteration"] = prediction["seconds"] / row["scf_iteration_s"]
            row["occupancy_s"], row["occupancy_note"] = prediction.get("occupancy_s"), prediction.get("occupancy_note")
            row["fallback"] = prediction.get("fallback")  # the reason an ml arm got the default start
            row["correction_scale"] = prediction.get("correction_scale")
            ml = arms.get("ml")
            if ml is not None:
                row["occupancies_ml"] = ml.get("occupancies")
                row["end_to_end_ratio_ml"] = (ml["wall_s"] + prediction["seconds"]) / default["wall_s"]
        rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]], arms: tuple[str, ...]) -> dict[str, Any]:
    """Mean ± std and median of every ratio, overall and by metal/insulator and magnetic/non-magnetic."""
    keys = [f"ratio_{a.replace('-', '_')}" for a in arms if a != "default"]
    keys += [f"scf_ratio_{a.replace('-', '_')}" for a in arms if a != "default"]
    keys += ["optimal_ratio", "end_to_end_ratio_ml", "inference_per_scf_iteration"]

    def block(selected: list[dict[str, Any]]) -> dict[str, Any]:
        return {k: _stats([r[k] for r in selected if r.get(k) is not None]) for k in keys}

    done = [r for r in rows if "optimal_ratio" in r]
    out = {"materials": len(done), "all": block(done), "breakdown": {}}
    for label, test in (("metal", lambda r: r.get("metal") is True), ("insulator", lambda r: r.get("metal") is False),
                        ("magnetic", lambda r: r.get("magnetic") is True),
                        ("non-magnetic", lambda r: r.get("magnetic") is False)):
        selected = [r for r in done if test(r)]
        if selected:
            out["breakdown"][label] = block(selected)
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns and k != "arms"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k != "arms"})


def plot(rows: list[dict[str, Any]], arms: tuple[str, ...], out: Path) -> list[str]:
    """Per-material steps per arm (grouped bars) and the distribution of the ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from dftflow.accel.gpaw import arm_label

    done = [r for r in rows if "optimal_ratio" in r]
    if not done:
        return []
    paths = []
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(done) + 2), 4))
    width = 0.8 / len(arms)
    x = np.arange(len(done))
    for i, arm in enumerate(arms):
        values = [r.get(f"steps_{arm.replace('-', '_')}") or 0 for r in done]
        ax.bar(x + (i - (len(arms) - 1) / 2) * width, values, width, label=arm_label(arm))
    ax.set_xticks(x, [r["uid"] for r in done], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("electronic steps")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "steps_per_material.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(str(path))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    data, labels = [], []
    for arm in arms:
        if arm == "default":
            continue
        values = [r[f"ratio_{arm.replace('-', '_')}"] for r in done if r.get(f"ratio_{arm.replace('-', '_')}")]
        if values:
            data.append(values)
            labels.append(arm)
    data.append([r["optimal_ratio"] for r in done])
    labels.append("optimal")
    ax.boxplot(data)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("steps / steps(default)")
    fig.tight_layout()
    path = out / "ratio_distribution.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(str(path))
    return paths


def write_report(results: list[dict[str, Any]], arms: tuple[str, ...], out: Path, *,
                 settings: dict[str, Any], figures: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    rows = material_rows(results)
    report = {"settings": settings, "summary": summarize(rows, arms), "materials": rows}
    write_csv(rows, out / "accel.csv")
    if figures:
        report["figures"] = plot(rows, arms, out)
    (out / "accel.json").write_text(json.dumps(report, indent=2))
    return report
