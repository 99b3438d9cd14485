"""Errors of the non-self-consistent properties against the reference SCF: per material, aggregated, figure.

Every error is |NSCF − SCF| in eV: total energy and band energy per atom,
band gaps (direct and indirect, on the SCF k-points), and forces as the
length of the per-atom force difference (eV/Å), its maximum and its mean
over the atoms of a material; spin-polarised materials add the cell's
magnetic moment (μB). Aggregates over materials are the mean
absolute error (MAE) and the maximum.

A property that the engine cannot give for a non-self-consistent step (VASP
at ``ICHARG = 11``: total energy and forces) has no error column; its result
says why under ``unavailable``, and the report carries that reason per start
and property (``not_available``, and in the summary) instead of a number.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from dftflow.nscf import CHEMICAL_ACCURACY

#: Reported error columns: (key suffix, unit, chemical-accuracy threshold key).
PROPERTIES = {
    "energy": ("eV/atom", "energy"),
    "force_max": ("eV/Å", "force"),
    "force_mae": ("eV/Å", "force"),
    "gap_direct": ("eV", "gap"),
    "gap_indirect": ("eV", "gap"),
    "band_energy": ("eV/atom", None),
    "magmom": ("μB/cell", None),
}
#: Properties that only some materials have (the magnetic moment: spin-polarised runs); the figure draws
#: their panel only when a material has them.
OPTIONAL = ("magmom",)


#: The result keys each reported property needs (``force_max``/``force_mae`` both come from ``forces``).
NEEDS = {"energy": "energy_per_atom", "force_max": "forces", "force_mae": "forces", "gap_direct": "gap_direct",
         "gap_indirect": "gap_indirect", "band_energy": "band_energy_per_atom", "magmom": "magmom"}


def errors(nscf: dict[str, Any], scf: dict[str, Any]) -> dict[str, float]:
    """The errors of one non-self-consistent result against the reference SCF (keys of :data:`PROPERTIES`);
    a property the step did not give (None) is left out."""
    out: dict[str, float] = {}
    if nscf.get("energy_per_atom") is not None:
        out["energy"] = abs(nscf["energy_per_atom"] - scf["energy_per_atom"])
    if nscf.get("forces") is not None:
        force_err = np.linalg.norm(np.asarray(nscf["forces"]) - np.asarray(scf["forces"]), axis=1)
        out.update(force_max=float(force_err.max()), force_mae=float(force_err.mean()))
    for key, value in (("gap_direct", "gap_direct"), ("gap_indirect", "gap_indirect"),
                       ("band_energy", "band_energy_per_atom")):
        out[key] = abs(nscf[value] - scf[value])
    if nscf.get("magmom") is not None and scf.get("magmom") is not None:
        out["magmom"] = abs(nscf["magmom"] - scf["magmom"])
    return out


def not_available(results: list[dict[str, Any]], starts: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Per start, the properties its results could not give and why (from their ``unavailable``)."""
    out: dict[str, dict[str, str]] = {}
    for r in results:
        if r.get("start") not in starts or not r.get("unavailable"):
            continue
        for prop, need in NEEDS.items():
            reason = r["unavailable"].get("forces" if need == "forces" else prop)
            if reason:
                out.setdefault(r["start"], {})[prop] = reason
    return out


def material_rows(results: list[dict[str, Any]], starts: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per material: the reference values and, per start, ``<property>_err_<start>``."""
    by_uid: dict[str, dict[str, Any]] = {}
    for r in results:
        by_uid.setdefault(r["uid"], {})[r.get("start", "predict")] = r
    rows = []
    for uid in sorted(by_uid):
        runs = by_uid[uid]
        scf = runs.get("scf")
        row: dict[str, Any] = {"uid": uid}
        if scf is None:
            rows.append(row)
            continue
        row.update(natoms=scf["natoms"], metal=scf["metal"], energy_per_atom=scf["energy_per_atom"],
                   gap_direct=scf["gap_direct"], gap_indirect=scf["gap_indirect"],
                   band_energy_per_atom=scf["band_energy_per_atom"],
                   **({"magmom": scf["magmom"]} if scf.get("magmom") is not None else {}),
                   max_force=float(np.linalg.norm(np.asarray(scf["forces"]), axis=1).max()),
                   scf_iterations=scf["n_iter"], scf_wall_s=scf["wall_s"])
        for start in starts:
            r = runs.get(start)
            if r is None:
                continue
            row.update({f"{k}_err_{start}": v for k, v in errors(r, scf).items()})
            row[f"iterations_{start}"] = r["n_iter"]
            row[f"wall_s_{start}"] = r["wall_s"]
            row[f"occupancies_{start}"] = r.get("occupancies")
            if r.get("fallback"):
                row["fallback"] = r["fallback"]
        rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]], starts: tuple[str, ...],
              missing: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Per start and property: number of materials, MAE and maximum of the error over materials
    (and, where the engine cannot give the property, ``not_available``: why)."""
    out: dict[str, Any] = {}
    for start in starts:
        block = {}
        for prop in PROPERTIES:
            values = [r[f"{prop}_err_{start}"] for r in rows if f"{prop}_err_{start}" in r]
            block[prop] = {"n": len(values), "mae": float(np.mean(values)) if values else None,
                           "max": float(np.max(values)) if values else None}
            reason = (missing or {}).get(start, {}).get(prop)
            if reason:
                block[prop]["not_available"] = reason
        out[start] = block
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def plot(rows: list[dict[str, Any]], starts: tuple[str, ...], path: Path) -> str | None:
    """One panel per property: a bar per material and start (log scale, meV), chemical accuracy dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "energy_per_atom" in r]
    if not done:
        return None
    panels = {prop: spec for prop, spec in PROPERTIES.items()
              if prop not in OPTIONAL or any(f"{prop}_err_{s}" in r for r in done for s in starts)}
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 0.8 * len(done) + 3), 2.2 * len(panels)),
                             sharex=True)
    x = np.arange(len(done))
    width = 0.8 / len(starts)
    floor = 1e-4  # meV: a bar for an error at machine precision stays visible on the log axis
    for ax, (prop, (unit, accuracy)) in zip(axes, panels.items(), strict=True):
        shown = False
        for i, start in enumerate(starts):
            # no bar where the property is not available (a floor bar would read as a tiny error)
            values = [max(floor, 1e3 * r[f"{prop}_err_{start}"]) if f"{prop}_err_{start}" in r else np.nan
                      for r in done]
            shown = shown or not np.all(np.isnan(values))
            ax.bar(x + (i - (len(starts) - 1) / 2) * width, values, width, label=start)
        if not shown:
            ax.text(0.5, 0.5, "not available (see not_available in nscf.json)", transform=ax.transAxes,
                    ha="center", va="center", fontsize=8)
        if accuracy:
            ax.axhline(1e3 * CHEMICAL_ACCURACY[accuracy], color="k", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel(f"|Δ{prop}|\n(m{unit})", fontsize=8)
    axes[0].legend(fontsize=7, ncols=len(starts))
    axes[0].set_title("non-self-consistent vs SCF (dashed: chemical accuracy)", fontsize=9)
    axes[-1].set_xticks(x, [r["uid"] for r in done], rotation=45, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def add_experimental(rows: list[dict[str, Any]], results: list[dict[str, Any]], starts: tuple[str, ...],
                     matches: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Experimental gaps into the rows (``gap_exp``, signed ``gap_vs_exp_<scf|start>``: computed − experiment,
    fundamental gaps) and the summary over the matched materials (MAE and mean signed error per source)."""
    from dftflow.nscf.experimental import SYMPREC, TABLE

    gaps: dict[tuple[str, str], float] = {(r["uid"], r.get("start", "")): r["gap_indirect"]
                                         for r in results if r.get("gap_indirect") is not None}
    unmatched: dict[str, str] = {}
    for row in rows:
        found = matches.get(row["uid"])
        if found is None or found.get("entry") is None:
            unmatched[row["uid"]] = (found or {}).get("reason") or "not matched"
            continue
        entry = found["entry"]
        row.update(gap_exp=entry["gap"], gap_exp_kind=entry["kind"], gap_exp_T=entry["T"],
                   gap_exp_source=entry["source"])
        for source in ("scf", *starts):
            if (row["uid"], source) in gaps:
                row[f"gap_vs_exp_{source}"] = gaps[(row["uid"], source)] - entry["gap"]
    summary: dict[str, Any] = {}
    for source in ("scf", *starts):
        values = [r[f"gap_vs_exp_{source}"] for r in rows if f"gap_vs_exp_{source}" in r]
        summary[source] = {"n": len(values), "mae": float(np.mean(np.abs(values))) if values else None,
                           "mean_signed": float(np.mean(values)) if values else None}
    return {"table": str(TABLE.name), "symprec": SYMPREC, "compared": "fundamental gap (gap_indirect)",
            "matched": sum(1 for r in rows if "gap_exp" in r), "unmatched": unmatched, "summary": summary}


def plot_experimental(rows: list[dict[str, Any]], starts: tuple[str, ...], path: Path) -> str | None:
    """Computed against experimental gap, one marker per source (the SCF and each start), y = x dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "gap_exp" in r]
    if not done:
        return None
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    top = max(r["gap_exp"] for r in done)
    for source, marker in zip(("scf", *starts), "os^vDx", strict=False):
        points = [(r["gap_exp"], r["gap_exp"] + r[f"gap_vs_exp_{source}"]) for r in done if f"gap_vs_exp_{source}" in r]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, marker=marker, s=28, alpha=0.8, label=source)
            top = max(top, *ys)
    ax.plot([0, 1.05 * top], [0, 1.05 * top], "k--", lw=0.8)
    ax.set_xlabel("experimental gap (eV)")
    ax.set_ylabel("computed gap (eV)")
    ax.set_title(f"band gaps of {len(done)} materials", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write_report(results: list[dict[str, Any]], starts: tuple[str, ...], out: Path, *,
                 settings: dict[str, Any], figures: bool = True,
                 experimental: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``experimental``: uid → {"entry": table entry as a dict or None, "reason": why none}; adds the
    comparison with experimental gaps (``report["experimental"]``)."""
    rows = material_rows(results, starts)
    missing = not_available(results, starts)
    report: dict[str, Any] = {"settings": settings, "units": {p: u for p, (u, _) in PROPERTIES.items()},
                              "chemical_accuracy": CHEMICAL_ACCURACY, "summary": summarize(rows, starts, missing),
                              "not_available": missing, "materials": rows}
    if experimental is not None:
        report["experimental"] = add_experimental(rows, results, starts, experimental)
    write_csv(rows, out / "nscf.csv")
    report["figures"] = []
    if figures:
        report["figures"] = [f for f in (plot(rows, starts, out / "nscf_errors.png"),
                                         plot_experimental(rows, starts, out / "nscf_gaps_vs_experiment.png")
                                         if experimental is not None else None) if f]
    (out / "nscf.json").write_text(json.dumps(report, indent=2))
    return report
