"""Ground-state properties from one non-self-consistent step on a predicted density: ``dftflow nscf-eval``
(docs/nscf.md)."""

#: The densities a non-self-consistent step can start from.
STARTS = {
    "ml": "the model's predicted density (deployable)",
    "oracle": "the converged density of the reference SCF (the method check)",
    "default": "GPAW's superposition of atomic densities (the baseline)",
}
#: Exchange-correlation functionals whose potential needs the orbitals, not only the density.
HYBRIDS = ("HSE06", "HSE03", "PBE0", "B3LYP", "EXX")
#: Chemical accuracy per property, in eV (per atom, per Å), drawn on the figure.
CHEMICAL_ACCURACY = {"energy": 1e-3, "force": 0.030, "gap": 0.043}


def hybrid_refusal(xc: str) -> str | None:
    """Why a non-self-consistent step cannot use ``xc``, or None when it can."""
    if xc.upper().split(":")[0] in HYBRIDS:
        return (f"{xc} is a hybrid functional: its exact-exchange potential is built from the occupied orbitals, "
                "not from the density, so a density alone does not define the Hamiltonian of a "
                "non-self-consistent step")
    return None
