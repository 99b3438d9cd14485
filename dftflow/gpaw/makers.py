"""jobflow Makers for GPAW: one base maker holds the pipeline, subclasses change data only."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobflow import Maker, job
from pymatgen.core import Structure

from dftflow.inputsets import load_inputset, with_overrides

_SUMMARY = ("calculation", "energy", "energy_per_atom", "converged", "n_scf", "n_fixed", "start", "magmom",
            "nvalence", "integrated_electrons", "grid", "wall_s", "inputset", "parameters_hash", "versions",
            "ionic_steps", "max_force", "parameters")


@dataclass(kw_only=True)
class BaseGpawMaker(Maker):
    """Load the input set, apply overrides, run in the job directory, return a summary.

    What runs (static or relax) is the input set's ``calculation``. The output
    carries the (relaxed) structure for the next job and the paths of the
    CHGCAR and density files; the files themselves stay in the job directory.

    Parameters
    ----------
    inputset
        Bundled input-set name or path (``inputsets/``).
    overrides
        Settings that win over the input set (recipe, then user).
    """

    name: str = "gpaw"
    inputset: str = "gpaw_pbe_static"
    overrides: dict[str, Any] = field(default_factory=dict)

    @job
    def make(self, structure: Structure, uid: str = "") -> dict[str, Any]:
        from dftflow.gpaw.jobs import run
        from dftflow.sources.records import unpack

        inputset = with_overrides(load_inputset(self.inputset), self.overrides)
        workdir = Path.cwd()
        result = run(structure, inputset, workdir)
        out = {k: result[k] for k in _SUMMARY if k in result}
        out.update(uid=uid, dir=str(workdir), structure=unpack(result["structure"]))
        for key in ("chgcar", "density"):
            if key in result.get("files", {}):
                out[key] = str(workdir / result["files"][key])
        return out


@dataclass(kw_only=True)
class GpawStaticMaker(BaseGpawMaker):
    """A static SCF: CHGCAR, density.npz and result.json in the job directory."""

    name: str = "gpaw static"
    inputset: str = "gpaw_pbe_static"


@dataclass(kw_only=True)
class GpawRelaxMaker(BaseGpawMaker):
    """A relaxation of positions and cell; its output structure feeds the static."""

    name: str = "gpaw relax"
    inputset: str = "gpaw_pbe_relax"
