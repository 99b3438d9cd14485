"""Per-structure screening filters (order, size, composition, charge neutrality, symmetry)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.core import Composition, Site, Structure

from dftflow.screening.base import Outcome, failed, passed


@dataclass(kw_only=True)
class OrderFilter:
    """Ordered, complete structures only.

    Fails partial occupancies (alloys, vacancies), implicit or missing atoms
    (usually hydrogens the CIF leaves out) and overlapping atoms closer than
    ``min_distance`` Å, each with its own reason.
    """

    min_distance: float = 0.5
    name: str = "order"

    def params(self) -> dict[str, Any]:
        return {"min_distance": self.min_distance}

    def check(self, structure: Structure, flags: list[str]) -> Outcome:
        if not structure.is_ordered:
            n = sum(1 for site in structure if not site.is_ordered)
            return failed("partial occupancy", disordered_sites=n)
        if "implicit_hydrogens" in flags:
            return failed("implicit hydrogens")
        missing = [f for f in flags if f.startswith("missing_atoms:")]
        if missing:
            return failed(f"atoms missing from the sites: {missing[0].split(':', 1)[1]}")
        if self.min_distance > 0 and len(structure) > 1:
            dmin = _min_distance(structure)
            if dmin < self.min_distance:
                return failed(f"atoms closer than {self.min_distance} Å", min_distance=round(dmin, 4))
        elif self.min_distance > 0 and len(structure) == 1:
            dmin = min(structure.lattice.abc)
            if dmin < self.min_distance:
                return failed(f"atoms closer than {self.min_distance} Å", min_distance=round(dmin, 4))
        return passed()


def _min_distance(structure: Structure) -> float:
    # Neighbour search within a small radius is O(N); the full distance matrix is O(N^2).
    # get_neighbor_list returns arrays; get_all_neighbors, which gives the same
    # distances, builds a PeriodicNeighbor object for each pair (most of its cost).
    radius = 1.5
    while True:
        centres, points, _, distances = structure.get_neighbor_list(radius, numerical_tol=_COINCIDENT)
        keep = distances > _COINCIDENT
        if not keep.all():
            # Like get_all_neighbors: a coincident pair is kept unless it is the centre site itself.
            sites = structure.sites
            for k in np.flatnonzero(~keep):
                c, p = sites[centres[k]], sites[points[k]]
                keep[k] = (p.species != c.species or not np.allclose(p.coords, c.coords, atol=Site.position_atol)
                           or p.properties != c.properties)
        if keep.any():
            return float(distances[keep].min())
        if radius > 6:
            return radius
        radius *= 2


_COINCIDENT = 1e-8  # Å; pymatgen's default numerical_tol for neighbour searches


@dataclass(kw_only=True)
class MaxAtomsFilter:
    """At most ``max_atoms`` sites in the cell as written."""

    max_atoms: int
    name: str = "max_atoms"

    def params(self) -> dict[str, Any]:
        return {"max_atoms": self.max_atoms}

    def check(self, structure: Structure, flags: list[str]) -> Outcome:
        n = len(structure)
        if n > self.max_atoms:
            return failed(f"more than {self.max_atoms} atoms", nsites=n)
        return passed(nsites=n)


@dataclass(kw_only=True)
class MaxElementsFilter:
    """At most ``max_elements`` distinct elements (the ECD screen uses 10)."""

    max_elements: int
    name: str = "max_elements"

    def params(self) -> dict[str, Any]:
        return {"max_elements": self.max_elements}

    def check(self, structure: Structure, flags: list[str]) -> Outcome:
        n = len(structure.composition.elements)
        if n > self.max_elements:
            return failed(f"more than {self.max_elements} elements", nelements=n)
        return passed(nelements=n)


def integer_composition(structure: Structure) -> Composition:
    """Element composition with oxidation-state labels stripped, as integer site counts."""
    comp = structure.composition.element_composition
    return Composition({el: int(round(n)) for el, n in comp.items()})
