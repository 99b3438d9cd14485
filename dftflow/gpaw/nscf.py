"""One non-self-consistent GPAW calculation at a fixed density, and the properties it is judged on.

The density (smooth grid and density matrices) is never updated: the wave
functions are converged in that density's potential (eigensolver iterations
until the input set's ``eigenstates`` criterion holds), then GPAW's energy
functional is evaluated. GPAW's total energy is the band energy plus
double-counting terms of the density it holds, so at a fixed input density
n_in it is the Harris–Foulkes energy ``Σ f ε[v(n_in)] − ∫ v(n_in) n_in +
E_H[n_in] + E_xc[n_in] + …``: second order in the error of n_in. Forces are
GPAW's Hellmann–Feynman forces (with the PAW and core terms) of the
non-self-consistent state, not derivatives of that energy, so their error is
first order in the density's (docs/nscf.md).

This uses the same GPAW internals as :mod:`dftflow.gpaw.restart`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ase import Atoms

from dftflow.gpaw.restart import DensityState, assemble, state_of


def nscf_from_density(atoms: Atoms, params: dict[str, Any], start: DensityState | None, *,
                      txt: Any = None) -> dict[str, Any]:
    """Converge the wave functions at the fixed density ``start`` (None: GPAW's atomic guess).

    Returns ``n_iter`` (eigensolver iterations), ``wall`` (s), ``density_change``
    (largest change of the smooth grid or a density matrix during the run; 0
    when the density stayed fixed), the ``dft`` object and the properties of
    :func:`properties`.
    """
    from dftflow.gpaw.params import EngineError
    from dftflow.nscf import hybrid_refusal

    refusal = hybrid_refusal(str(params.get("xc", "")))
    if refusal:
        raise EngineError(refusal)
    t0 = time.perf_counter()
    dft, _, _, _, initial = assemble(atoms, params, start, txt)
    scf_loop = dft.scf_loop
    scf_loop.update_density_and_potential = False
    # only the eigenstates criterion: the density does not move, and the energy follows the orbitals
    scf_loop.convergence = {"eigenstates": scf_loop.convergence["eigenstates"]}
    from gpaw.new.scf import KohnShamConvergenceError

    try:
        dft.converge()
    except KohnShamConvergenceError as exc:
        raise EngineError(f"non-self-consistent step: the wave functions did not converge in "
                          f"{scf_loop.maxiter} iterations; see {txt}") from exc
    after = state_of(dft)
    change = max(float(np.abs(after.nt_sR - initial.nt_sR).max()),
                 max(float(np.abs(a - b).max()) for a, b in zip(after.D_asii, initial.D_asii, strict=True)))
    out = properties(dft)
    out.update(n_iter=int(scf_loop.niter), wall=time.perf_counter() - t0, density_change=change, dft=dft)
    return out


def properties(dft: Any) -> dict[str, Any]:
    """Energy (eV and eV/atom), forces (eV/Å), band gaps and band energy of a converged GPAW ``DFT``.

    ``band_energy`` is Σ w_k f_nk ε_nk over spins, k-points and bands (eV/atom):
    the sum of occupied eigenvalues with the smearing's occupations. Gaps are
    on the calculation's own k-points (the IBZ of the SCF mesh): ``gap_indirect``
    the lowest empty state minus the highest occupied one over all k-points and
    spins, ``gap_direct`` the smallest such difference at one k-point and spin;
    both 0 when a band crosses the Fermi level.
    """
    calc = dft.ase_calculator()
    natoms = len(dft.atoms)
    energy = float(dft.calculate_energy())
    forces = np.asarray(dft.calculate_forces(), dtype=float)
    nspins, nkpts = calc.get_number_of_spins(), len(calc.get_ibz_k_points())
    eigs = np.array([[calc.get_eigenvalues(kpt=k, spin=s) for k in range(nkpts)] for s in range(nspins)])
    occs = np.array([[calc.get_occupation_numbers(kpt=k, spin=s) for k in range(nkpts)] for s in range(nspins)])
    out = {"energy": energy, "energy_per_atom": energy / natoms, "forces": forces.tolist(),
           "fermi_level": float(calc.get_fermi_level()),
           "band_energy_per_atom": float((eigs * occs).sum()) / natoms}
    out.update(band_gaps(eigs, out["fermi_level"]))
    if nspins == 2:
        total, per_atom = dft.magmoms()
        out.update(magmom=float(total[2]), magmoms=[float(m) for m in per_atom[:, 2]])
    return out


def band_gaps(eigs: np.ndarray, fermi_level: float) -> dict[str, Any]:
    """``gap_direct``, ``gap_indirect`` (eV) and ``metal`` from eigenvalues (spin, k, band) and the Fermi level."""
    from dftflow.nscf import gaps

    return gaps(eigs, eigs < fermi_level, eigs > fermi_level)
