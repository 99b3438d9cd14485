"""Start a GPAW SCF from a supplied density (the PAW grid plus atomic density matrices).

GPAW 26 reads no density from a file, so the calculation is assembled the way
``gpaw.dft.Parameters.create_dft_calculation_components`` does it, and the
superposition-of-atoms density is replaced before the first potential is
computed. The initial wave functions are then the LCAO eigenstates of the
supplied density's potential. ``nfixed`` eigensolver steps at that fixed
density come next (VASP's NELMDL, but at the supplied density), and the SCF
proper follows; its iterations are what accel-eval counts.

Both halves of a PAW density matter: a converged grid with atomic density
matrices converges no faster than the default guess (docs/gpaw.md).

Densities here are GPAW's smooth coarse-grid ``nt_sR`` (e/Bohr³, spin channels
up/down, pseudo-core included, no compensation charges) and ``D_asii`` (one
(nspins, ni, ni) array per atom). This uses GPAW internals; see
:data:`dftflow.gpaw.SUPPORTED`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms


@dataclass
class DensityState:
    """A PAW density in GPAW's own form."""

    nt_sR: np.ndarray
    D_asii: list[np.ndarray]

    def save(self, path: Any) -> None:
        np.savez_compressed(path, nt_sR=self.nt_sR, **{f"D_{a}": D for a, D in enumerate(self.D_asii)})

    @classmethod
    def load(cls, path: Any) -> DensityState:
        with np.load(path) as data:
            n = sum(1 for k in data.files if k.startswith("D_"))
            return cls(data["nt_sR"], [data[f"D_{a}"] for a in range(n)])

    def mixed(self, other: DensityState, weight: float) -> DensityState:
        """``weight * self + (1 - weight) * other`` (both grid and matrices)."""
        return DensityState(weight * self.nt_sR + (1 - weight) * other.nt_sR,
                            [weight * a + (1 - weight) * b for a, b in zip(self.D_asii, other.D_asii, strict=True)])


def _components(atoms: Atoms, params: dict[str, Any], txt: Any) -> tuple:
    from gpaw.dft import Parameters
    from gpaw.new.logger import Logger

    p = Parameters(**params)
    log = Logger(txt, None)
    builder = p.dft_component_builder(atoms, log=log, comm=log.comm)
    basis_set = builder.create_basis_set()
    scf_loop = builder.create_scf_loop()  # before the potential calculator, as GPAW does
    pot_calc = builder.create_potential_calculator()
    density = builder.density_from_superposition(basis_set)
    density.normalize(pot_calc.charge)
    return p, log, builder, basis_set, scf_loop, pot_calc, density


def state_of(dft: Any) -> DensityState:
    """The density of a GPAW ``DFT`` object (``calc.dft``)."""
    density = dft.density
    return DensityState(density.nt_sR.data.copy(), [density.D_asii[a].copy() for a in range(len(dft.atoms))])


def initial_state(atoms: Atoms, params: dict[str, Any]) -> DensityState:
    """GPAW's default start: the superposition of atomic densities."""
    *_, density = _components(atoms, params, None)
    return DensityState(density.nt_sR.data.copy(), [density.D_asii[a].copy() for a in range(len(atoms))])


def scf_from_density(atoms: Atoms, params: dict[str, Any], start: DensityState | None, *,
                     nfixed: int = 0, txt: Any = None) -> dict[str, Any]:
    """Converge an SCF from ``start`` (None: GPAW's default guess), counting iterations.

    Returns ``energy`` (eV), ``n_scf`` (iterations with density updates),
    ``n_fixed`` (fixed-density steps done first), ``wall`` (s) and the ``dft`` object.
    """
    from gpaw.new.calculation import DFT

    t0 = time.perf_counter()
    p, log, builder, basis_set, scf_loop, pot_calc, density = _components(atoms, params, txt)
    if start is not None:
        if start.nt_sR.shape != density.nt_sR.data.shape:
            raise ValueError(f"supplied density grid {start.nt_sR.shape} does not match the calculation's "
                             f"{density.nt_sR.data.shape} (same cell, cutoff and spin are needed)")
        density.nt_sR.data[:] = start.nt_sR
        for a, D_sii in density.D_asii.items():
            D_sii[:] = np.asarray(start.D_asii[a]).reshape(D_sii.shape)
        density.normalize(pot_calc.charge)  # exact neutrality for this (grid, D) pair

    potential, energies, _ = pot_calc.calculate_without_orbitals(density, kpt_band_comm=builder.communicators["D"])
    ibzwfs = builder.create_ibz_wave_functions(basis_set, potential)
    if ibzwfs._wfs_u[0].has_eigs:
        ibzwfs.calculate_occs(scf_loop.occ_calc, density.nvalence - density.charge + pot_calc.charge)
    dft = DFT.from_components(atoms, ibzwfs, density, potential, builder.setups, scf_loop, pot_calc, log,
                              params=p, energies=energies, converge=False)
    done = 0
    if nfixed > 0:
        scf_loop.update_density_and_potential = False
        for done, _ctx in enumerate(dft.iconverge(maxiter=nfixed + 1), start=1):
            if done == nfixed:
                break
        scf_loop.update_density_and_potential = True
        for criterion in scf_loop.convergence.values():
            criterion.reset()
    dft.converge()
    energy = float(dft.calculate_energy())
    return {"energy": energy, "n_scf": int(scf_loop.niter), "n_fixed": done,
            "wall": time.perf_counter() - t0, "dft": dft}
