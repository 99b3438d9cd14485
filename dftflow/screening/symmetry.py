"""Space group with spglib at a recorded ``symprec``; failure is 'undetermined', never P1."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import numpy as np
from pymatgen.core import Structure

from dftflow.screening.base import Outcome, failed, passed, undetermined

_SYSTEMS = ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
            (167, "trigonal"), (194, "hexagonal"), (230, "cubic"))


def crystal_system(spacegroup: int) -> str:
    """Crystal system of an international space-group number (1–230)."""
    for upper, name in _SYSTEMS:
        if spacegroup <= upper:
            return name
    raise ValueError(f"space group number {spacegroup} is not in 1..230")


def spglib_cell(structure: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    numbers = np.array([site.specie.Z for site in structure], dtype=int)
    return structure.lattice.matrix, structure.frac_coords, numbers


@dataclass(kw_only=True)
class SymmetryFilter:
    """Space group at ``symprec`` Å; P1 fails when ``reject_p1`` (the ECD rule for generated candidates).

    Details record the space group, its symbol, the crystal system and the number
    of sites in the primitive cell (used to bucket the deduplication).
    """

    symprec: float = 0.1
    angle_tolerance: float = 5.0
    reject_p1: bool = True
    name: str = "symmetry"

    def params(self) -> dict[str, Any]:
        return {"symprec": self.symprec, "angle_tolerance": self.angle_tolerance,
                "reject_p1": self.reject_p1, "spglib": version("spglib")}

    def check(self, structure: Structure, flags: list[str]) -> Outcome:
        import spglib

        cell = spglib_cell(structure)
        try:
            dataset = spglib.get_symmetry_dataset(cell, symprec=self.symprec,
                                                  angle_tolerance=self.angle_tolerance)
        except Exception as exc:  # spglib raises SpglibError on some inputs
            return undetermined(f"spglib failed: {exc}")
        if dataset is None:
            return undetermined(f"spglib found no symmetry at symprec {self.symprec}")
        number = int(dataset.number)
        # spglib maps every input atom onto an atom of the primitive cell.
        n_prim = int(len(np.unique(dataset.mapping_to_primitive)))
        details = {"spacegroup": number, "symbol": dataset.international,
                   "crystal_system": crystal_system(number), "n_primitive": n_prim}
        if number == 1 and self.reject_p1:
            return failed("space group 1 (P1)", **details)
        return passed(**details)
