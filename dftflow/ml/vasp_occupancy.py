"""VASP's augmentation occupancies (the per-ion blocks of a CHGCAR) ↔ e3nn irreps.

An ion's block is VASP's ``RHOLM``: for projector channels i ≤ j and
L = |l_i − l_j|, |l_i − l_j| + 2, …, l_i + l_j, the 2L + 1 coefficients of a
real spherical harmonic expansion (order and sizes in
:func:`dftflow.vasp.potcar.rholm_blocks`). Each (i, j, L) part is already one
irrep, with parity (−1)^L; only its basis differs from e3nn's.

VASP's real harmonics are taken to be the standard tesseral ones with the z
axis polar, M = −L … L (sin(|M|φ) for M < 0, cos(Mφ) for M > 0), signed so
that each is a positive multiple of its Cartesian polynomial (no
Condon–Shortley phase): for L = 1 (y, z, x), for L = 2 (xy, yz, 3z² − r², xz,
x² − y²), the order of VASP's PROCAR. The per-L orthogonal map to e3nn's
basis is computed numerically from both sets of functions. That this is the
convention of the numbers VASP writes is checked on real CHGCARs
(``tests/ml/test_vasp_occupancy.py``): every block is invariant under its
ion's site symmetry only with this convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch
from e3nn import o3

from dftflow.ml.occupancy import orthogonal_map_to_e3nn
from dftflow.vasp.potcar import rholm_blocks


def real_spherical_harmonics(degree: int, r: np.ndarray) -> np.ndarray:
    """(n, 2·degree+1): the tesseral harmonics at unit vectors ``r``, M = −degree … degree, without CS phase."""
    from scipy.special import sph_harm_y

    r = np.asarray(r, dtype=np.float64)
    theta = np.arccos(np.clip(r[:, 2], -1.0, 1.0))
    phi = np.arctan2(r[:, 1], r[:, 0])
    out = np.empty((len(r), 2 * degree + 1))
    for m in range(-degree, degree + 1):
        y = sph_harm_y(degree, abs(m), theta, phi) * (-1) ** abs(m)  # scipy includes the CS phase: undo it
        if m < 0:
            out[:, degree + m] = np.sqrt(2) * y.imag
        elif m == 0:
            out[:, degree] = y.real
        else:
            out[:, degree + m] = np.sqrt(2) * y.real
    return out


@cache
def vasp_to_e3nn(degree: int) -> np.ndarray:
    """Orthogonal C with ``Y_e3nn(r) ∝ C · Y_vasp(r)`` for real spherical harmonics of ``degree``."""
    return orthogonal_map_to_e3nn(degree, lambda r: real_spherical_harmonics(degree, r), seed=100 + degree)


@dataclass(frozen=True)
class VaspOccupancyLayout:
    """The irreps of one species' augmentation block, from its projectors' angular momenta ``l_j``."""

    l_j: tuple[int, ...]
    blocks: tuple[tuple[int, int, int], ...] = field(init=False)
    offsets: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        blocks = tuple(rholm_blocks(self.l_j))
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "offsets", tuple(np.cumsum([0] + [2 * L + 1 for *_, L in blocks]).tolist()))

    @property
    def size(self) -> int:
        """Values per ion in the CHGCAR."""
        return self.offsets[-1]

    @property
    def irreps(self) -> o3.Irreps:
        """One irrep per (i, j, L), in VASP's order (not simplified: positions matter)."""
        return o3.Irreps([(1, (L, (-1) ** L)) for *_, L in self.blocks])

    def _checked(self, values: np.ndarray, where: str) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if values.shape[-1] != self.size:
            raise ValueError(f"{where}{values.shape[-1]} augmentation occupancies per ion; projectors "
                             f"l={list(self.l_j)} give {self.size}")
        return values

    def _change(self, values: np.ndarray, inverse: bool) -> np.ndarray:
        out = np.empty_like(values)
        for (*_, L), start, stop in zip(self.blocks, self.offsets[:-1], self.offsets[1:], strict=True):
            c = vasp_to_e3nn(L)
            out[..., start:stop] = values[..., start:stop] @ (c if inverse else c.T)
        return out

    def to_irreps(self, values: np.ndarray, where: str = "") -> np.ndarray:
        """(..., size) values as VASP writes them → (..., irreps.dim) in e3nn's basis (the same size)."""
        return self._change(self._checked(values, where), inverse=False)

    def from_irreps(self, x: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_irreps`: values in VASP's layout."""
        return self._change(self._checked(x, ""), inverse=True)

    def rotate(self, values: np.ndarray, R: np.ndarray) -> np.ndarray:
        """The block of the ion in a structure rotated by R (Cartesian, proper or improper), in VASP's layout."""
        wigner = self.irreps.D_from_matrix(torch.as_tensor(np.asarray(R, dtype=np.float64))).numpy()
        return self.from_irreps(self.to_irreps(values) @ wigner.T)
