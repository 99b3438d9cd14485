"""jobflow Makers for GPAW: one base maker holds the pipeline, subclasses change data only."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobflow import Maker, job
from pymatgen.core import Structure

from dftflow.inputsets import load_inputset, with_overrides


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    keep = ("calculation", "energy", "energy_per_atom", "converged", "n_scf", "n_fixed", "start", "magmom",
            "nvalence", "integrated_electrons", "grid", "wall_s", "inputset", "parameters_hash", "versions",
            "ionic_steps", "max_force", "parameters")
    return {k: result[k] for k in keep if k in result}


@dataclass(kw_only=True)
class GpawStaticMaker(Maker):
    """A GPAW static SCF; writes CHGCAR, density.npz and result.json in the job directory.

    Parameters
    ----------
    inputset
        Bundled input-set name or path (``inputsets/``).
    overrides
        Settings that win over the input set (recipe, then user).
    """

    name: str = "gpaw static"
    inputset: str = "gpaw_pbe_static"
    overrides: dict[str, Any] = field(default_factory=dict)

    @job
    def make(self, structure: Structure, uid: str = "") -> dict[str, Any]:
        from dftflow.gpaw.jobs import run_static

        inputset = with_overrides(load_inputset(self.inputset), self.overrides)
        workdir = Path.cwd()
        result = run_static(structure, inputset, workdir)
        return {**_summary(result), "uid": uid, "dir": str(workdir), "structure": structure,
                "chgcar": str(workdir / "CHGCAR"), "density": str(workdir / "density.npz")}


@dataclass(kw_only=True)
class GpawRelaxMaker(Maker):
    """A GPAW relaxation of positions and cell; its output structure feeds the static."""

    name: str = "gpaw relax"
    inputset: str = "gpaw_pbe_relax"
    overrides: dict[str, Any] = field(default_factory=dict)

    @job
    def make(self, structure: Structure, uid: str = "") -> dict[str, Any]:
        from dftflow.gpaw.jobs import run_relax
        from dftflow.sources.records import unpack

        inputset = with_overrides(load_inputset(self.inputset), self.overrides)
        result = run_relax(structure, inputset, Path.cwd())
        return {**_summary(result), "uid": uid, "dir": str(Path.cwd()), "structure": unpack(result["structure"])}
