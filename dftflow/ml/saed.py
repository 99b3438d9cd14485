"""Δ-SAED: learn ρ − ρ_SAED, the difference to a superposition of spherical atomic densities.

Following Li, Hong, Chen and Xiang ("Machine learning difference charge
density"), the model can learn the density minus a superposition of
spherical atomic electron densities (SAED) on the same points; predictions
add the SAED back. The atomic densities here need no extra DFT run: one
radial function per element, ρ_Z(r) = Σ_k c_Zk exp(−r²/2σ_k²) (σ_k on a
geometric ladder from 0.1 to 1.6 Å, cut at ``cutoff``), fitted by least squares
to the training densities at random grid points. This absorbs each dataset's
PAW valence convention (e.g. VASP's Ti_sv semicore states) automatically.
The fitted table, its source and its training-set error are stored in every
checkpoint trained with it.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from dftflow.ml.graph import PeriodicImages

DEFAULT_WIDTHS = tuple(float(x) for x in np.geomspace(0.1, 1.6, 8))


def _design(points: np.ndarray, cell: np.ndarray, positions: np.ndarray, numbers: np.ndarray,
            elements: list[int], widths: np.ndarray, cutoff: float) -> np.ndarray:
    """(P, n_elements × n_widths): Σ over atoms of element e of the Gaussian k at each point."""
    images = PeriodicImages(positions, cell, cutoff)
    edges = images.edges_to(points)
    vec = points[edges.receiver] - (positions[edges.sender] + edges.shift @ cell)
    r2 = np.einsum("ij,ij->i", vec, vec)
    smooth = 0.5 * (np.cos(np.pi * np.sqrt(r2) / cutoff) + 1.0)  # goes to zero at the cutoff
    g = np.exp(-r2[:, None] / (2.0 * widths[None, :] ** 2)) * smooth[:, None]
    column = np.searchsorted(elements, numbers[edges.sender])
    out = np.zeros((len(points), len(elements) * len(widths)))
    for k in range(len(widths)):
        np.add.at(out, (edges.receiver, column * len(widths) + k), g[:, k])
    return out


def fit_saed(items: list[dict[str, Any]], *, widths: tuple[float, ...] = DEFAULT_WIDTHS, cutoff: float = 5.0,
             ridge: float = 1e-8) -> dict[str, Any]:
    """Fit per-element radial densities to loader items (structure + probe points + ρ)."""
    elements = sorted({int(z) for it in items for z in np.asarray(it["numbers"])})
    w = np.asarray(widths)
    rows, targets = [], []
    for it in items:
        cell = np.asarray(it["cell"], dtype=float)
        rows.append(_design(np.asarray(it["probe_positions"], dtype=float), cell,
                            np.asarray(it["positions"], dtype=float), np.asarray(it["numbers"]), elements, w, cutoff))
        targets.append(np.asarray(it["density"], dtype=float))
    X, y = np.concatenate(rows), np.concatenate(targets)
    coef = np.linalg.solve(X.T @ X + ridge * np.eye(X.shape[1]), X.T @ y)
    fit = X @ coef
    eps = float(np.abs(fit - y).sum() / np.abs(y).sum())
    table = {str(z): coef[i * len(w):(i + 1) * len(w)].tolist() for i, z in enumerate(elements)}
    return {"source": "radial Gaussians fitted to the training densities", "widths": list(widths),
            "cutoff": cutoff, "coefficients": table, "fit_eps_mae": eps, "points": int(len(y))}


def saed_at(points: np.ndarray, cell: np.ndarray, positions: np.ndarray, numbers: np.ndarray,
            saed: dict[str, Any]) -> np.ndarray:
    """ρ_SAED (e/Å³) at Cartesian points."""
    elements = sorted(int(z) for z in saed["coefficients"])
    missing = {int(z) for z in numbers} - set(elements)
    if missing:  # no atomic density fitted for them: the model's output is all there is near those atoms
        warnings.warn(f"the SAED table has no density for element(s) Z={sorted(missing)} (not in the training "
                      "set); they contribute nothing to rho_SAED", stacklevel=2)
        keep = np.isin(numbers, elements)
        positions, numbers = np.asarray(positions)[keep], np.asarray(numbers)[keep]
        if not len(numbers):
            return np.zeros(len(points))
    coef = np.concatenate([saed["coefficients"][str(z)] for z in elements])
    X = _design(np.asarray(points, dtype=float), np.asarray(cell, dtype=float), np.asarray(positions, dtype=float),
                np.asarray(numbers), elements, np.asarray(saed["widths"]), float(saed["cutoff"]))
    return X @ coef


def add_saed(rho: np.ndarray, structure: Any, saed: dict[str, Any] | None, *, chunk: int = 50000) -> np.ndarray:
    """ρ + ρ_SAED on the full grid of ``rho`` (unchanged when the model learnt ρ itself)."""
    if not saed:
        return rho
    nx, ny, nz = rho.shape[:3]
    cell = structure.lattice.matrix
    flat = rho.reshape(-1).astype(np.float64).copy()
    numbers = np.array([s.specie.Z for s in structure])
    for start in range(0, flat.size, chunk):
        idx = np.arange(start, min(flat.size, start + chunk))
        frac = np.stack(np.unravel_index(idx, (nx, ny, nz)), axis=-1) / np.array([nx, ny, nz], dtype=float)
        flat[idx] += saed_at(frac @ cell, cell, structure.cart_coords, numbers, saed)
    return flat.reshape(rho.shape).astype(np.float32)
