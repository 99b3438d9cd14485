"""The factor on a correction model's predicted change, chosen on validation SCF runs.

A correction model predicts the change from GPAW's atomic guess. Scaling that
change by α moves the start along the line from the default guess (α = 0,
exactly GPAW's own start) to the model's prediction (α = 1). ``calibrate``
runs the default arm once per validation material and the ``ml`` arm at each
candidate α (arms ``ml@α`` of one accel-eval), and keeps the α with the
lowest mean step ratio among those whose worst material is at most
``max_ratio`` times the default's steps. If none qualifies, α = 0: the model
is then deployed as the default start, which is safe by construction.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from dftflow.errors import InputError


def choose_scale(rows: list[dict[str, Any]], scales: list[float], max_ratio: float) -> tuple[float, list[dict]]:
    """The calibrated factor and the per-factor table (mean, median, worst ratio, fraction worse than default)."""
    table = []
    for scale in scales:
        key = f"ratio_ml@{scale:g}"
        ratios = [r[key] for r in rows if r.get(key) is not None]
        if not ratios:
            continue
        table.append({"scale": scale, "materials": len(ratios), "mean": statistics.fmean(ratios),
                      "median": statistics.median(ratios), "worst": max(ratios),
                      "worse_than_default": sum(x > 1 for x in ratios) / len(ratios)})
    safe = [t for t in table if t["worst"] <= max_ratio and t["mean"] < 1.0]
    if not safe:
        return 0.0, table
    best = min(safe, key=lambda t: (round(t["mean"], 6), t["scale"]))
    return best["scale"], table


def calibrate(checkpoint: Path, out: Path, materials: list[tuple[str, Structure]], *, scales: list[float],
              max_ratio: float = 1.1, inputset: str = "gpaw_pbe_static", overrides: dict[str, Any] | None = None,
              nfixed: int = 3, workers: int = 1, on_tick: Any = None) -> dict[str, Any]:
    """Run the validation arms (resumable, in ``out``) and return the chosen factor with its evidence."""
    from dftflow.accel.run import accel_eval
    from dftflow.ml.train import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("target") != "smooth_delta":
        raise InputError(f"{checkpoint}: only correction models (data.target smooth_delta) take a correction scale")
    if not scales or any(not 0 < s <= 2 for s in scales):
        raise InputError(f"--scales {scales}: give factors in (0, 2]")
    arms = ("default", *(f"ml@{s:g}" for s in scales))
    report = accel_eval(out, materials, model=checkpoint, arms=arms, inputset=inputset, overrides=overrides,
                        nfixed=nfixed, workers=workers, on_tick=on_tick)
    scale, table = choose_scale(report["materials"], scales, max_ratio)
    return {"correction_scale": scale, "max_ratio": max_ratio, "table": table, "materials": len(report["materials"]),
            "problems": report["problems"], "inputset": inputset, "overrides": overrides or {}, "nfixed": nfixed,
            "report": str(out / "accel.json")}


def write_scale(checkpoint: Path, calibration: dict[str, Any]) -> None:
    """Store the factor and its evidence in the checkpoint (atomically)."""
    import os

    import torch

    from dftflow.ml.train import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    ckpt["correction_scale"] = calibration["correction_scale"]
    ckpt["calibration"] = {k: v for k, v in calibration.items() if k != "problems"}
    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, checkpoint)
