"""ε_mae per structure on a split, per-element errors, parity and error plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dftflow.ml.batch import graph_batch


def evaluate(checkpoint: str | Path, dataset: str | Path, ids: list[str], *, n_probes: int | None = 5000,
             seed: int = 0, out: Path | None = None) -> dict[str, Any]:
    """Predict ``n_probes`` random grid points (None: the whole grid) of each material and score them."""
    from scipy.spatial import cKDTree

    from dftflow.dataset.loader import ProbeDataset
    from dftflow.ml.graph import PeriodicImages
    from dftflow.ml.predict import load_model

    model, ckpt = load_model(checkpoint)
    saed = ckpt.get("saed")
    data = ProbeDataset(dataset, ids, n_probes=n_probes, seed=seed)
    rows, element_abs, element_ref = [], {}, {}
    parity_true, parity_pred = [], []
    for i in range(len(data)):
        item = data[i]
        batch = graph_batch([item], model.config.cutoff, torch.float32, saed)
        with torch.no_grad():
            pred = model(batch)
        pred = (pred[:, 0] if model.config.spin else pred).numpy().astype(np.float64)
        base = batch["baseline"].numpy() if "baseline" in batch else 0.0
        pred, true = pred + base, item["density"].numpy().astype(np.float64)
        err = np.abs(pred - true)
        rows.append({"material_id": item["material_id"], "eps_mae": float(err.sum() / np.abs(true).sum()),
                     "points": int(len(true))})
        # per element: each point's error goes to the element of its nearest atom (as in the ECD paper, Fig. 5)
        cell = item["cell"].double().numpy()
        images = PeriodicImages(item["positions"].double().numpy(), cell, 6.0)
        nearest = cKDTree(images.image_pos).query(_wrap(item["probe_positions"].double().numpy(), cell))[1]
        numbers = item["numbers"].numpy()[images.atom[nearest]]
        for z in np.unique(numbers):
            mask = numbers == z
            element_abs[int(z)] = element_abs.get(int(z), 0.0) + float(err[mask].sum())
            element_ref[int(z)] = element_ref.get(int(z), 0.0) + float(np.abs(true[mask]).sum())
        take = np.random.default_rng(i).choice(len(true), size=min(len(true), 2000), replace=False)
        parity_true.append(true[take])
        parity_pred.append(pred[take])
    from pymatgen.core import Element

    per_element = {Element.from_Z(z).symbol: element_abs[z] / element_ref[z] for z in sorted(element_abs)}
    summary = {"materials": len(rows), "eps_mae_mean": float(np.mean([r["eps_mae"] for r in rows])) if rows else None,
               "eps_mae_median": float(np.median([r["eps_mae"] for r in rows])) if rows else None,
               "per_structure": rows, "per_element": per_element, "checkpoint": str(checkpoint),
               "probes": n_probes or "full grid"}
    if out is not None and rows:
        out.mkdir(parents=True, exist_ok=True)
        _plots(out, np.concatenate(parity_true), np.concatenate(parity_pred), rows, per_element)
        summary["figures"] = [str(out / "parity.png"), str(out / "errors.png")]
    return summary


def _wrap(points: np.ndarray, cell: np.ndarray) -> np.ndarray:
    frac = points @ np.linalg.inv(cell)
    return (frac - np.floor(frac)) @ cell


def _plots(out: Path, true: np.ndarray, pred: np.ndarray, rows: list[dict], per_element: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.hexbin(true, pred, gridsize=80, bins="log", mincnt=1, cmap="viridis")
    hi = float(max(true.max(), pred.max()))
    ax.plot([0, hi], [0, hi], "k--", lw=0.8)
    ax.set_xlabel("DFT ρ (e/Å³)")
    ax.set_ylabel("predicted ρ (e/Å³)")
    ax.set_title("parity")
    fig.tight_layout()
    fig.savefig(out / "parity.png", dpi=150)
    plt.close(fig)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.hist([100 * r["eps_mae"] for r in rows], bins=30)
    a1.set_xlabel("ε_mae per structure (%)")
    a1.set_ylabel("structures")
    names = list(per_element)
    a2.bar(names, [100 * per_element[n] for n in names])
    a2.set_ylabel("ε_mae near the element (%)")
    a2.tick_params(axis="x", rotation=90)
    fig.tight_layout()
    fig.savefig(out / "errors.png", dpi=150)
    plt.close(fig)
