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


def _compensation_sR(builder: Any, density: Any, D_asii: list[np.ndarray]) -> np.ndarray:
    """Compensation charges of ``D_asii`` on the density grid, per spin, in e/Å³.

    The same terms GPAW adds in ``get_pseudo_density()`` (``Densities.pseudo_densities``),
    so ``ρ_CHGCAR = nt_sR / Bohr³ + compensation`` holds exactly for a (grid, D) pair.
    """
    from gpaw.densities import Densities

    D = density.D_asii.new()
    for a, D_sii in D.items():
        D_sii[:] = np.asarray(D_asii[a]).reshape(D_sii.shape)
    return Densities(density.nt_sR.new(zeroed=True), D, builder.relpos_ac, builder.setups) \
        .pseudo_densities(add_compensation_charges=True).data.copy()


class GridConverter:
    """Between GPAW's own density (``nt_sR``, ``D_asii``) and the total PAW pseudo density of a CHGCAR.

    ``grid`` is the calculation's grid, the one a model must predict on;
    ``nvalence`` the valence electrons the total density integrates to.
    """

    def __init__(self, atoms: Atoms, params: dict[str, Any]):
        _, _, self.builder, _, _, _, self.density = _components(atoms, params, None)
        self.atomic = DensityState(self.density.nt_sR.data.copy(),
                                   [self.density.D_asii[a].copy() for a in range(len(atoms))])
        self.grid = tuple(self.density.nt_sR.data.shape[1:])
        self.nspins = self.density.nt_sR.data.shape[0]
        self.nvalence = float(self.density.nvalence - self.density.charge)

    def split_spins(self, total: list[np.ndarray]) -> list[np.ndarray]:
        """Per-spin density matrices from spin-summed ones, with the atomic guess's spin polarisation."""
        if self.nspins == 1:
            return [np.asarray(D)[None] for D in total]
        return [np.stack([(D + (A[0] - A[1])) / 2, (D - (A[0] - A[1])) / 2])
                for D, A in zip(total, self.atomic.D_asii, strict=True)]

    def total(self, state: DensityState) -> np.ndarray:
        """ρ per spin (e/Å³, pseudo density plus compensation charges) of a GPAW density."""
        from ase.units import Bohr

        return state.nt_sR / Bohr**3 + _compensation_sR(self.builder, self.density, state.D_asii)

    def state(self, rho: np.ndarray, D_asii: list[np.ndarray], *,
              magnetization: np.ndarray | None = None) -> DensityState:
        """GPAW's density for a total density ``rho`` (e/Å³, spin summed) and density matrices ``D_asii``.

        Spin-polarised calculations split ``rho`` with ``magnetization`` (e/Å³;
        default: that of GPAW's atomic guess with the input set's initial moments).
        """
        from ase.units import Bohr

        rho = np.asarray(rho, dtype=float)
        if rho.shape != self.grid:
            raise ValueError(f"density grid {rho.shape} is not the calculation's grid {self.grid}")
        if self.nspins == 1:
            rho_s = rho[None]
        else:
            if magnetization is None:
                atomic = self.total(self.atomic)
                magnetization = atomic[0] - atomic[1]
            rho_s = np.stack([(rho + magnetization) / 2, (rho - magnetization) / 2])
        nt = (rho_s - _compensation_sR(self.builder, self.density, D_asii)) * Bohr**3
        return DensityState(nt, [np.asarray(D, dtype=float).copy() for D in D_asii])


def state_of(dft: Any) -> DensityState:
    """The density of a GPAW ``DFT`` object (``calc.dft``)."""
    density = dft.density
    return DensityState(density.nt_sR.data.copy(), [density.D_asii[a].copy() for a in range(len(dft.atoms))])


def initial_state(atoms: Atoms, params: dict[str, Any]) -> DensityState:
    """GPAW's default start: the superposition of atomic densities."""
    *_, density = _components(atoms, params, None)
    return DensityState(density.nt_sR.data.copy(), [density.D_asii[a].copy() for a in range(len(atoms))])


def _refresh_occupancies(dft: Any, builder: Any, density: Any, pot_calc: Any) -> None:
    from ase.units import Bohr

    natoms = len(dft.atoms)
    keep = density.nt_sR.data / Bohr**3 + _compensation_sR(builder, density, [density.D_asii[a] for a in range(natoms)])
    density.update(dft.ibzwfs)  # grid and matrices from the wave functions
    fresh = [density.D_asii[a].copy() for a in range(natoms)]
    density.nt_sR.data[:] = (keep - _compensation_sR(builder, density, fresh)) * Bohr**3
    density.normalize(pot_calc.charge)
    dft.potential, dft.energies, _ = pot_calc.calculate(density, dft.ibzwfs, dft.potential.vHt_x)


def assemble(atoms: Atoms, params: dict[str, Any], start: DensityState | None, txt: Any = None) -> tuple:
    """A GPAW ``DFT`` object whose density is ``start`` (None: GPAW's atomic guess), not yet converged.

    The wave functions are the LCAO eigenstates of the start's potential.
    Returns ``(dft, builder, density, pot_calc, initial)``; ``initial`` is the
    start as GPAW holds it, after normalisation to the electron count.
    """
    from gpaw.new.calculation import DFT

    p, log, builder, basis_set, scf_loop, pot_calc, density = _components(atoms, params, txt)
    if start is not None:
        if start.nt_sR.shape != density.nt_sR.data.shape:
            raise ValueError(f"supplied density grid {start.nt_sR.shape} does not match the calculation's "
                             f"{density.nt_sR.data.shape} (same cell, cutoff and spin are needed)")
        density.nt_sR.data[:] = start.nt_sR
        for a, D_sii in density.D_asii.items():
            D_sii[:] = np.asarray(start.D_asii[a]).reshape(D_sii.shape)
        density.normalize(pot_calc.charge)  # exact neutrality for this (grid, D) pair
    initial = DensityState(density.nt_sR.data.copy(), [density.D_asii[a].copy() for a in range(len(atoms))])

    potential, energies, _ = pot_calc.calculate_without_orbitals(density, kpt_band_comm=builder.communicators["D"])
    ibzwfs = builder.create_ibz_wave_functions(basis_set, potential)
    if ibzwfs._wfs_u[0].has_eigs:
        ibzwfs.calculate_occs(scf_loop.occ_calc, density.nvalence - density.charge + pot_calc.charge)
    dft = DFT.from_components(atoms, ibzwfs, density, potential, builder.setups, scf_loop, pot_calc, log,
                              params=p, energies=energies, converge=False)
    return dft, builder, density, pot_calc, initial


def scf_from_density(atoms: Atoms, params: dict[str, Any], start: DensityState | None, *,
                     nfixed: int = 0, refresh_occupancies: bool = False, txt: Any = None) -> dict[str, Any]:
    """Converge an SCF from ``start`` (None: GPAW's default guess), counting iterations.

    ``refresh_occupancies``: after the ``nfixed`` fixed-density steps, replace the
    density matrices by those of the wave functions just converged in the
    start's potential, keeping the start's total density (grid plus compensation
    charges). This needs no converged calculation, so it is a deployable source
    of PAW occupancies for a predicted grid.

    Returns ``energy`` (eV), ``n_scf`` (iterations with density updates),
    ``n_fixed`` (fixed-density steps done first), ``wall`` (s), the ``dft`` object
    and ``initial``, the density the SCF started from (GPAW's atomic guess when
    ``start`` is None).
    """
    from gpaw.new.scf import KohnShamConvergenceError

    if refresh_occupancies and nfixed < 1:
        raise ValueError("refresh_occupancies needs at least one fixed-density step (nfixed >= 1)")
    t0 = time.perf_counter()
    dft, builder, density, pot_calc, initial = assemble(atoms, params, start, txt)
    scf_loop = dft.scf_loop
    done = 0
    if nfixed > 0:
        scf_loop.update_density_and_potential = False
        try:  # GPAW logs each step; the last one ends with "not converged", which is expected here
            for _ctx in dft.iconverge(maxiter=nfixed):
                done += 1
        except KohnShamConvergenceError:
            pass
        scf_loop.update_density_and_potential = True
        if refresh_occupancies:
            _refresh_occupancies(dft, builder, density, pot_calc)
        for criterion in scf_loop.convergence.values():
            criterion.reset()
    dft.converge()
    energy = float(dft.calculate_energy())
    return {"energy": energy, "n_scf": int(scf_loop.niter), "n_fixed": done,
            "wall": time.perf_counter() - t0, "dft": dft, "initial": initial}
