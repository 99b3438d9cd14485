"""Ground-state properties from one non-self-consistent step on a predicted density: ``dftflow nscf-eval``
(docs/nscf.md)."""

from __future__ import annotations

from typing import Any

#: The densities a non-self-consistent step can start from.
STARTS = {
    "ml": "the model's predicted density (deployable)",
    "oracle": "the converged density of the reference SCF (the method check)",
    "default": "GPAW's superposition of atomic densities (the baseline; not offered with VASP)",
}
#: Exchange-correlation functionals whose potential needs the orbitals, not only the density.
HYBRIDS = ("HSE06", "HSE03", "PBE0", "B3LYP", "EXX")
#: Chemical accuracy per property, in eV (per atom, per Å), drawn on the figure.
CHEMICAL_ACCURACY = {"energy": 1e-3, "force": 0.030, "gap": 0.043}
#: Why a VASP fixed-density step has no total energy or forces to compare.
VASP_NO_ENERGY = ("VASP does not evaluate a consistent total energy or forces at a fixed density (ICHARG = 11): "
                  "what it prints is not a functional of the density it held, so only eigenvalue properties "
                  "(gaps, band energy) are compared")
#: Why VASP has no ``default`` start.
VASP_NO_DEFAULT = ("VASP's fixed-density step (ICHARG = 11) reads its density from CHGCAR, and dftflow cannot "
                   "write VASP's atomic guess (the superposition of the POTCARs' atomic charge densities); "
                   "VASP's own non-self-consistent run from that guess (ICHARG = 12) has no real reference run "
                   "to be checked against yet")


def hybrid_refusal(xc: str) -> str | None:
    """Why a non-self-consistent step cannot use ``xc``, or None when it can."""
    if xc.upper().split(":")[0] in HYBRIDS:
        return (f"{xc} is a hybrid functional: its exact-exchange potential is built from the occupied orbitals, "
                "not from the density, so a density alone does not define the Hamiltonian of a "
                "non-self-consistent step")
    return None


def gaps(eigs: Any, occupied: Any, empty: Any) -> dict[str, Any]:
    """``gap_direct``, ``gap_indirect`` (eV) and ``metal`` from eigenvalues (spin, k, band) and two masks.

    ``occupied``/``empty`` mark the states below/above the Fermi level (a
    state may be neither when it sits on it). A band of one spin with occupied
    and empty states makes a metal (both gaps 0); the same band index may be
    occupied in one spin and empty in the other (a ferromagnetic insulator has
    more majority than minority electrons). Otherwise the indirect gap is the lowest
    empty minus the highest occupied state over all k-points and spins, the
    direct gap the smallest such difference at one k-point and spin.
    """
    import numpy as np

    eigs, below, above = np.asarray(eigs, dtype=float), np.asarray(occupied, bool), np.asarray(empty, bool)
    metal = bool(np.any(below.any(axis=1) & above.any(axis=1)))  # per (spin, band)
    if metal or not below.any() or not above.any():
        return {"gap_direct": 0.0, "gap_indirect": 0.0, "metal": metal}
    vbm = np.where(below, eigs, -np.inf).max(axis=2)  # (spin, k)
    cbm = np.where(above, eigs, np.inf).min(axis=2)
    return {"gap_direct": float((cbm - vbm).min()), "gap_indirect": float(cbm.min() - vbm.max()), "metal": False}
