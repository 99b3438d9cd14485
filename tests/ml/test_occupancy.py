"""PAW density matrices as irreps: exact round trip, and rotations checked against GPAW itself."""

from __future__ import annotations

from pathlib import Path

import gpaw  # noqa: F401 - installed by scripts/setup.sh: a broken build must fail here, not skip
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from scipy.spatial.transform import Rotation

from dftflow.ml.occupancy import OccupancyLayout, gpaw_projector_l


def test_round_trip_and_irreps_of_a_d_element() -> None:
    layout = OccupancyLayout(gpaw_projector_l(["Zn"])["Zn"])  # s, p, d twice: 18 × 18
    assert layout.ni == 18
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 18, 18))
    D = a + np.swapaxes(a, -1, -2)  # symmetric, as GPAW's are (two spins)
    x = layout.to_irreps(D)
    assert x.shape == (2, layout.irreps.dim) and layout.irreps.dim == 18 * 19 // 2
    np.testing.assert_allclose(layout.from_irreps(x), D, atol=1e-12)
    # orthonormal change of basis: |x|² = Σ over stored blocks (diagonal ones, and j1 < j2 once) of |block|²
    o = layout.offsets
    diagonal = sum(np.sum(D[0, o[j]:o[j + 1], o[j]:o[j + 1]] ** 2) for j in range(len(layout.l_j)))
    assert np.sum(x[0] ** 2) == pytest.approx((np.sum(D[0] ** 2) + diagonal) / 2)


def test_engine_density_matrices_of_a_rotated_crystal_are_the_rotated_irreps(tmp_path: Path) -> None:
    """GPAW on wurtzite ZnO and on the same crystal rotated: D' = rotation of D, irrep by irrep."""
    from dftflow.gpaw.jobs import run_static
    from dftflow.gpaw.restart import DensityState
    from dftflow.inputsets import load_inputset, with_overrides

    iset = with_overrides(load_inputset("gpaw_pbe_static"), {"ecut": 300, "kpoint_density": 10})
    zno = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"],
                                    [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])
    R = Rotation.from_euler("zyx", [0.7, -0.4, 1.1]).as_matrix()
    rotated = Structure(Lattice(zno.lattice.matrix @ R.T), zno.species, zno.frac_coords)
    run_static(zno, iset, tmp_path / "a")
    run_static(rotated, iset, tmp_path / "b")
    Da = DensityState.load(tmp_path / "a" / "density.npz").D_asii
    Db = DensityState.load(tmp_path / "b" / "density.npz").D_asii
    layouts = {s: OccupancyLayout(lj) for s, lj in gpaw_projector_l(["Zn", "O"]).items()}
    import torch

    for a, site in enumerate(zno):
        layout = layouts[site.specie.symbol]
        D0, D1 = Da[a][0], Db[a][0]
        assert np.abs(D1 - D0).max() > 1e-3  # the rotation really changes the matrices
        np.testing.assert_allclose(layout.rotate(D0, R), D1, atol=2e-5)
        # the same statement in irreps: x' = D_irreps(R) x
        wigner = layout.irreps.D_from_matrix(torch.as_tensor(R)).numpy()
        np.testing.assert_allclose(wigner @ layout.to_irreps(D0), layout.to_irreps(D1), atol=2e-5)
        # the dipole-like L = 1 parts (s–p blocks) are not zero in this polar crystal
        x0 = layout.to_irreps(D0)
        dipoles = [x0[sl] for sl, (_, ir) in zip(layout.irreps.slices(), layout.irreps, strict=True) if ir.l == 1]
        assert max(np.abs(d).max() for d in dipoles) > 1e-4  # (about 1e-19 where symmetry forbids them)
