"""What an importer yields: a structure with its provenance, or a failure with its reason.

Structures travel between processes and into the catalog in a compact,
JSON-ready form (:func:`pack`/:func:`unpack`) rather than as pymatgen dicts:
it is ~5x smaller and ~10x faster to write and read, and keeps partial
occupancies and oxidation-state labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pymatgen.core import Lattice, Structure


@dataclass(slots=True)
class Imported:
    """One imported structure (``packed`` is :func:`pack` output) or a failure.

    ``uid`` is stable across runs (it is derived from the source and the entry's
    position in it), so re-running an import skips what is there.
    """

    uid: str
    provenance: dict[str, Any]
    packed: dict[str, Any] | None = None
    error: str | None = None
    flags: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def pack(structure: Structure) -> dict[str, Any]:
    """Compact JSON-ready form: lattice rows, species per site (occupancy map), fractional coords."""
    species: list[Any] = []
    for site in structure:
        items = [(str(sp), float(occ)) for sp, occ in site.species.items()]
        if len(items) == 1 and math.isclose(items[0][1], 1.0):
            species.append(items[0][0])
        else:
            species.append({k: round(v, 6) for k, v in items})
    return {
        "lattice": np.round(structure.lattice.matrix, 10).tolist(),
        "species": species,
        "frac_coords": np.round(structure.frac_coords, 10).tolist(),
    }


def unpack(data: dict[str, Any]) -> Structure:
    """Inverse of :func:`pack`."""
    return Structure(
        Lattice(data["lattice"]),
        data["species"],
        data["frac_coords"],
        coords_are_cartesian=False,
    )


def check_geometry(lattice: np.ndarray, frac_coords: np.ndarray) -> str | None:
    """Reasons a lattice/coordinate set cannot be a crystal, or None when it can."""
    lattice = np.asarray(lattice, dtype=float)
    frac = np.asarray(frac_coords, dtype=float)
    if lattice.shape != (3, 3) or not np.all(np.isfinite(lattice)):
        return "lattice is not a finite 3x3 matrix"
    volume = abs(float(np.linalg.det(lattice)))
    lengths = np.linalg.norm(lattice, axis=1)
    if volume < 1e-3 or volume < 1e-6 * float(np.prod(lengths)):
        return f"degenerate lattice (volume {volume:.3g} Å³)"
    if frac.size == 0:
        return "no atoms"
    if frac.ndim != 2 or frac.shape[1] != 3 or not np.all(np.isfinite(frac)):
        return "fractional coordinates are not finite"
    return None
