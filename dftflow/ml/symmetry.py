"""Space-group orbits of FFT grid points: a symmetric prediction needs one point per orbit.

The model is equivariant and sees only the structure, so its density obeys
the structure's space group: ρ(W·x + t) = ρ(x) for every operation (W, t) in
fractional coordinates. An operation maps a grid of shape N onto itself when
``N_i · W_ij / N_j`` is an integer for all i, j and ``N · t`` lies on the grid;
those operations form a group, and the grid splits into its orbits. Predicting
one point per orbit and copying it to the rest gives the full-grid result (to
float precision) at 1/|G| of the cost. VASP chooses grids that respect the
symmetry, so most operations survive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: symmetry tolerance (Å) for finding the operations; tight, since it decides which points share a value
SYMPREC = 1e-3


@dataclass
class GridOrbits:
    """One representative per orbit (flat grid indices) and, for every point, its orbit's position."""

    representatives: np.ndarray
    inverse: np.ndarray
    operations: int  # operations of the space group that map the grid onto itself
    spacegroup: str

    @property
    def reduction(self) -> float:
        return len(self.inverse) / max(1, len(self.representatives))


def grid_operations(structure: Any, grid: tuple[int, int, int], symprec: float = SYMPREC
                    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """The structure's operations as integer maps of grid indices: n ↦ (M·n + s) mod N."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sga = SpacegroupAnalyzer(structure, symprec=symprec)
    data = sga.get_symmetry_dataset()
    shape = np.asarray(grid, dtype=float)
    ops = []
    for rot, trans in zip(data.rotations, data.translations):
        m = shape[:, None] * rot / shape[None, :]
        s = shape * trans
        if np.allclose(m, np.round(m), atol=1e-8) and np.allclose(s, np.round(s), atol=0.02):
            ops.append((np.round(m).astype(np.int64), np.round(s).astype(np.int64)))
    return ops, f"{data.international} ({data.number})"


def grid_orbits(structure: Any, grid: tuple[int, int, int], symprec: float = SYMPREC,
                block: int = 1 << 20) -> GridOrbits:
    """Orbits of the grid points under the operations that map the grid onto itself.

    Each point's orbit is labelled by its smallest flat index (the minimum of
    its images over the group); the points that are their own label are the
    representatives. Walked in blocks of points, so the memory is a few
    32-bit arrays of the grid size.
    """
    ops, name = grid_operations(structure, grid, symprec)
    nx, ny, nz = grid
    n = nx * ny * nz
    index_dtype = np.int32 if n < 2**31 else np.int64
    rep = np.empty(n, dtype=index_dtype)
    shape = np.array(grid)
    for start in range(0, n, block):
        flat = np.arange(start, min(n, start + block), dtype=np.int64)
        i, j, k = np.unravel_index(flat, grid)
        low = flat.copy()
        for m, s in ops:
            a = (m[0, 0] * i + m[0, 1] * j + m[0, 2] * k + s[0]) % shape[0]
            b = (m[1, 0] * i + m[1, 1] * j + m[1, 2] * k + s[1]) % shape[1]
            c = (m[2, 0] * i + m[2, 1] * j + m[2, 2] * k + s[2]) % shape[2]
            np.minimum(low, (a * ny + b) * nz + c, out=low)
        rep[start:start + len(flat)] = low
    is_rep = rep == np.arange(n, dtype=index_dtype)
    representatives = np.flatnonzero(is_rep).astype(index_dtype)
    position = np.cumsum(is_rep, dtype=index_dtype) - 1  # orbit number of each representative
    del is_rep
    inverse = position[rep]
    return GridOrbits(representatives, inverse, max(1, len(ops)), name)
