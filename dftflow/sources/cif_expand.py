"""pymatgen's CIF parser with a faster expansion of the asymmetric unit.

``CifParser._unique_coords`` applies every symmetry operation to every written
site and keeps an image unless it lies within ``site_tolerance`` of one kept
before. pymatgen does each test with ``in_coord_list_pbc`` on a Python list,
which converts the whole list to an array again for every image: O(N²) work
in Python overhead, about a third of the import time of a symmetrized CIF.

:class:`ExpandingCifParser` does the same tests in the same order with the
same arithmetic (the images of a site come from one product with the stacked
affine matrices, which is bit-for-bit ``SymmOp.operate``; the kept images live
in a preallocated array), so its structures are identical to pymatgen's.
Magnetic CIFs take pymatgen's own path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pymatgen.electronic_structure.core import Magmom
from pymatgen.io.cif import CifParser


def wrap_unit(images: np.ndarray) -> np.ndarray:
    """``x - floor(x)`` per element, keeping the sign of a zero as ``x - math.floor(x)`` does."""
    wrapped = images - np.floor(images)
    zero = images == 0
    wrapped[zero] = images[zero]
    return wrapped


class ExpandingCifParser(CifParser):
    """:class:`CifParser` whose symmetry expansion avoids O(N²) list conversions (same results)."""

    def _unique_coords(
        self,
        coords: list[tuple[float, float, float]],
        magmoms: Any = None,
        lattice: Any = None,
        labels: dict[tuple[float, float, float], str] | None = None,
    ) -> tuple[list[np.ndarray], list[Magmom], list[str]]:
        if magmoms:
            return super()._unique_coords(coords, magmoms, lattice, labels)
        labels = labels or {}
        ops = self.symmetry_operations
        affine = np.array([op.affine_matrix for op in ops], dtype=float).reshape(-1, 4)
        kept = np.empty((max(1, len(coords) * len(ops)), 3))
        n = 0
        coords_out: list[np.ndarray] = []
        labels_out: list[str] = []
        for written in coords:
            images = wrap_unit((affine @ np.append(written, 1.0)).reshape(len(ops), 4)[:, :3])
            for image in images:
                if n:
                    dist = kept[:n] - image
                    dist -= np.round(dist)
                    if (np.abs(dist) < self._site_tolerance).all(axis=1).any():
                        continue
                kept[n] = image
                n += 1
                coords_out.append(image.copy())
                labels_out.append(labels.get(written, "no_label"))
        return coords_out, [Magmom(0)] * len(coords_out), labels_out
