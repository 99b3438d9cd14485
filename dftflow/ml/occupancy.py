"""PAW occupancies as irreducible representations: GPAW's atomic density matrices ↔ e3nn irreps.

An atom's density matrix D_ij (i = projector j with angular momentum l_j and
real spherical harmonic m) is made of blocks D[j1, j2] that transform under a
rotation R as ``D_l1(R) · D[j1, j2] · D_l2(R)ᵀ``: the tensor product
l1 ⊗ l2 = |l1−l2| ⊕ … ⊕ (l1+l2), with parity (−1)^(l1+l2). A block is
expanded in those irreps with e3nn's Clebsch–Gordan coefficients (scaled to an
orthonormal change of basis), so predicting the irreps equivariantly and
reassembling gives equivariant density matrices. Because D is symmetric, a
diagonal block (j1 = j2) holds only the even L of l ⊗ l, and D[j2, j1] is the
transpose of D[j1, j2]; only j1 ≤ j2 is stored.

GPAW orders its real spherical harmonics as ``gpaw.sphere.spherical_harmonics``
(l = 1: y, z, x); e3nn as (x, y, z) for l = 1 with its own convention for l ≥ 2.
The orthogonal map between the two is computed numerically from both sets of
functions, so no sign or ordering convention is assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch
from e3nn import o3


def orthogonal_map_to_e3nn(degree: int, harmonics, seed: int) -> np.ndarray:
    """Orthogonal C with ``Y_e3nn(r) ∝ C · Y(r)``, fitted on random unit vectors.

    ``harmonics(r)`` gives another real basis of the same degree at unit vectors r, (n, 2·degree+1);
    only the orthogonal part of the fit is kept (the normalisations differ by a constant).
    """
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((64, 3))
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    y_e3nn = o3.spherical_harmonics(degree, torch.as_tensor(r), normalize=True, normalization="component").numpy()
    c, *_ = np.linalg.lstsq(harmonics(r), y_e3nn, rcond=None)  # y_e3nn ≈ y @ c
    u, _, vt = np.linalg.svd(c.T)
    return u @ vt


@cache
def gpaw_to_e3nn(degree: int) -> np.ndarray:
    """Orthogonal C with ``Y_e3nn(r) ∝ C · Y_gpaw(r)`` for spherical harmonics of ``degree``."""
    from gpaw.sphere.spherical_harmonics import Y

    return orthogonal_map_to_e3nn(
        degree, lambda r: np.array([[Y(degree * degree + m, *v) for m in range(2 * degree + 1)] for v in r]),
        seed=degree)


@cache
def _cg(l1: int, l2: int, L: int) -> np.ndarray:
    """(2l1+1)(2l2+1) × (2L+1), orthonormal columns: the L part of l1 ⊗ l2 in e3nn's basis."""
    w = o3.wigner_3j(l1, l2, L, dtype=torch.float64).numpy() * np.sqrt(2 * L + 1)
    return w.reshape((2 * l1 + 1) * (2 * l2 + 1), 2 * L + 1)


@dataclass(frozen=True)
class OccupancyLayout:
    """The irreps of one species' density matrix, from its projectors' angular momenta ``l_j``."""

    l_j: tuple[int, ...]
    blocks: tuple[tuple[int, int, int], ...] = field(init=False)
    offsets: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        blocks = []
        for j1, l1 in enumerate(self.l_j):
            for j2 in range(j1, len(self.l_j)):
                l2 = self.l_j[j2]
                for L in range(abs(l1 - l2), l1 + l2 + 1):
                    if j1 == j2 and L % 2:
                        continue  # the antisymmetric part of a symmetric block
                    blocks.append((j1, j2, L))
        object.__setattr__(self, "blocks", tuple(blocks))
        object.__setattr__(self, "offsets", tuple(np.cumsum([0] + [2 * d + 1 for d in self.l_j]).tolist()))

    @property
    def ni(self) -> int:
        return self.offsets[-1]

    @property
    def irreps(self) -> o3.Irreps:
        """One irrep per block, in block order (not simplified: positions matter)."""
        return o3.Irreps([(1, (L, (-1) ** (self.l_j[j1] + self.l_j[j2]))) for j1, j2, L in self.blocks])

    def _block(self, D: np.ndarray, j1: int, j2: int) -> np.ndarray:
        o = self.offsets
        return D[..., o[j1]:o[j1 + 1], o[j2]:o[j2 + 1]]

    def to_irreps(self, D: np.ndarray) -> np.ndarray:
        """(..., ni, ni) density matrices in GPAW's basis → (..., irreps.dim) coefficients."""
        D = np.asarray(D, dtype=np.float64)
        if D.shape[-2:] != (self.ni, self.ni):
            raise ValueError(f"density matrix of shape {D.shape[-2:]}, this layout has ni = {self.ni}")
        out = []
        for j1, j2, L in self.blocks:
            l1, l2 = self.l_j[j1], self.l_j[j2]
            block = gpaw_to_e3nn(l1) @ self._block(D, j1, j2) @ gpaw_to_e3nn(l2).T
            out.append(block.reshape(*block.shape[:-2], -1) @ _cg(l1, l2, L))
        return np.concatenate(out, axis=-1)

    def from_irreps(self, x: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_irreps`: a symmetric (..., ni, ni) density matrix in GPAW's basis."""
        x = np.asarray(x, dtype=np.float64)
        D = np.zeros((*x.shape[:-1], self.ni, self.ni))
        start = 0
        o = self.offsets
        for j1, j2, L in self.blocks:
            l1, l2 = self.l_j[j1], self.l_j[j2]
            part = x[..., start:start + 2 * L + 1] @ _cg(l1, l2, L).T
            start += 2 * L + 1
            block = part.reshape(*x.shape[:-1], 2 * l1 + 1, 2 * l2 + 1)
            block = gpaw_to_e3nn(l1).T @ block @ gpaw_to_e3nn(l2)
            D[..., o[j1]:o[j1 + 1], o[j2]:o[j2 + 1]] += block
            if j1 != j2:
                D[..., o[j2]:o[j2 + 1], o[j1]:o[j1 + 1]] += np.swapaxes(block, -1, -2)
        return D

    def rotate(self, D: np.ndarray, R: np.ndarray) -> np.ndarray:
        """D of the atom in a structure rotated by R (Cartesian, proper or improper), in GPAW's basis."""
        mats = [gpaw_to_e3nn(d).T @ o3.Irrep(d, (-1) ** d).D_from_matrix(torch.as_tensor(R)).numpy()
                @ gpaw_to_e3nn(d) for d in self.l_j]
        full = np.zeros((self.ni, self.ni))
        o = self.offsets
        for j, m in enumerate(mats):
            full[o[j]:o[j + 1], o[j]:o[j + 1]] = m
        return full @ D @ full.T


def make_layout(kind: str, l_j: tuple[int, ...] | list[int]):
    """The layout of one species' occupancies: ``gpaw`` density matrices or ``vasp`` augmentation blocks."""
    if kind == "gpaw":
        return OccupancyLayout(tuple(l_j))
    if kind == "vasp":
        from dftflow.ml.vasp_occupancy import VaspOccupancyLayout

        return VaspOccupancyLayout(tuple(l_j))
    raise ValueError(f"occupancy layout {kind!r}: gpaw or vasp")


@cache
def gpaw_atomic_density_matrix(symbol: str, xc: str = "PBE") -> np.ndarray:
    """The spin-summed density matrix GPAW starts a free neutral atom with, in GPAW's basis.

    GPAW's atomic guess puts the setup's reference occupations f_j on the diagonal of the bound
    projectors (``calculate_initial_occupation_numbers`` + ``initialize_density_matrix``); a Hubbard
    U or an initial moment does not change the spin sum. Equal to the ``D_asii`` summed over spins of
    a calculation's superposition-of-atoms start (checked in the tests).
    """
    from gpaw.setup import create_setup
    from gpaw.utilities import unpack_density

    setup = create_setup(symbol, xc)
    f_si = setup.calculate_initial_occupation_numbers(0.0, False, 0, 1)
    return unpack_density(setup.initialize_density_matrix(f_si)[0])


def gpaw_atomic_reference(layouts: dict[str, list[int]], xc: str = "PBE") -> dict[str, list[float]]:
    """Per atomic number: the free atom's density matrix as irreps of its layout (the head's reference)."""
    from pymatgen.core import Element

    out = {}
    for z, l_j in layouts.items():
        D = gpaw_atomic_density_matrix(Element.from_Z(int(z)).symbol, xc)
        out[str(z)] = OccupancyLayout(tuple(l_j)).to_irreps(D).tolist()
    return out


def gpaw_projector_l(symbols: list[str], xc: str = "PBE") -> dict[str, tuple[int, ...]]:
    """l_j of every species' PAW setup (a Hubbard U does not change the projectors)."""
    from gpaw.setup import create_setup

    return {symbol: tuple(int(d) for d in create_setup(symbol, xc).l_j) for symbol in dict.fromkeys(symbols)}
