"""The accel-eval arms on VASP: static runs under custodian that differ only in the starting CHGCAR.

Every arm runs the same input set with ``ISTART = 0`` (no wave functions are
read) and the same ``NELMDL = -nfixed``; the default arm has ``ICHARG = 2``
(superposition of atomic charge densities), the others ``ICHARG = 1`` with:

* ``ml``: the predicted grid, with the augmentation occupancies of the
  model's VASP occupancy head when it has one (and knows every element, and
  its blocks have the sizes of this run's POTCARs); otherwise the grid only,
  and VASP starts the PAW one-centre occupancies from the atoms (it warns
  that they are missing). The result says which (``occupancies``);
* ``ml-true-occ`` (not deployable): the predicted grid with the augmentation
  occupancies of the default arm's converged CHGCAR;
* ``oracle``: the default arm's converged CHGCAR.

The prediction is made on the grid of the default arm's CHGCAR (VASP's fine
grid for these settings) and rescaled to the run's NELECT.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobflow import Maker, job

from dftflow.vasp.jobs import VaspMaker, run_vasp

VASP_ARMS = ("default", "ml", "ml-true-occ", "oracle")


def arm_tags(arm: str, nfixed: int) -> dict[str, Any]:
    """The INCAR tags that set an arm's start (the same fixed steps in every arm)."""
    return {"ISTART": 0, "ICHARG": 2 if arm == "default" else 1, "NELMDL": -nfixed if nfixed else 0,
            "LCHARG": True}


@dataclass(kw_only=True)
class VaspArmMaker(VaspMaker):
    """One accel-eval arm: a VASP static from the arm's starting density (``start_chgcar``)."""

    name: str = "accel default"
    arm: str = "default"
    nfixed: int = 5
    climb_ladder: bool = False  # a changed algorithm would make the arms incomparable

    @job
    def make(self, structure: Any, uid: str = "", start_chgcar: str | None = None) -> dict[str, Any]:  # type: ignore[override]
        from dftflow.vasp.jobs import _structure
        from dftflow.vasp.outputs import oszicar_steps, outcar_steps

        structure = _structure(structure)
        result = run_vasp(self, structure, start_chgcar=start_chgcar)
        workdir = Path(result["dir"])
        per_ionic = oszicar_steps(workdir / "OSZICAR")
        steps = per_ionic[0] if per_ionic else 0
        fixed = min(abs(int(result["incar"].get("NELMDL", 0))), steps)
        magmoms = result.get("magmoms") or []
        out = {
            "uid": uid, "arm": self.arm, "engine": "vasp", "deployable": self.arm in ("default", "ml"),
            "energy": result["energy"], "natoms": len(structure), "steps": steps, "n_fixed": fixed,
            "n_scf": steps - fixed, "steps_outcar": outcar_steps(workdir / "OUTCAR") if (workdir / "OUTCAR").exists()
            else None, "wall_s": result["wall_s"], "dir": result["dir"], "chgcar": result["chgcar"],
            "start_chgcar": start_chgcar, "converged": result["converged_electronic"], "incar": result["incar"],
            "inputset": result["inputset"], "versions": result["versions"], "nfixed": self.nfixed,
            "magnetic": bool(abs(result.get("magnetization") or 0.0) > 0.1 or sum(abs(m) for m in magmoms) > 0.1),
            "metal": None,
        }
        (workdir / "accel_result.json").write_text(json.dumps(out, indent=2, default=str))
        return out


@dataclass(kw_only=True)
class VaspPredictMaker(Maker):
    """The model's density on the default arm's grid, as CHGCARs for the ML arms (``starts``).

    ``reference`` is the result of a VASP static of the same settings (the
    default arm, or nscf-eval's reference SCF): its CHGCAR gives the grid and
    the augmentation block sizes, its vasprun.xml NELECT.
    """

    name: str = "accel predict"
    model: str = ""
    starts: tuple[str, ...] = ("ml", "ml-true-occ")

    @job
    def make(self, structure: Any, uid: str = "", reference: dict[str, Any] | None = None) -> dict[str, Any]:
        return run_vasp_predict(self, structure, uid=uid, reference=reference)


def run_vasp_predict(maker: VaspPredictMaker, structure: Any, *, uid: str = "",
                     reference: dict[str, Any] | None = None) -> dict[str, Any]:
    from pymatgen.io.vasp import Vasprun

    from dftflow.density.chgcar import read_chgcar
    from dftflow.ml.predict import load_model, predict_density, predicted_augmentation, write_prediction_chgcar
    from dftflow.vasp.jobs import _structure

    structure = _structure(structure)
    if not reference or not reference.get("chgcar"):
        raise ValueError("the ML arms need the default arm's CHGCAR (its grid and occupancies)")
    workdir = Path.cwd()
    converged = read_chgcar(reference["chgcar"])
    vr = Vasprun(str(Path(reference["dir"]) / "vasprun.xml"), parse_dos=False, parse_eigen=False,
                 parse_potcar_file=False)
    nelect = float(vr.parameters["NELECT"])
    t0 = time.perf_counter()
    model, ckpt = load_model(maker.model)
    t_load = time.perf_counter() - t0
    result = predict_density(model, ckpt, structure, converged.grid, nelect=nelect)
    unknown = [k for k in maker.starts if k not in ("ml", "ml-true-occ")]
    if unknown:
        raise ValueError(f"VASP predicted starts {', '.join(unknown)}: ml or ml-true-occ")
    files = {k: workdir / f"CHGCAR.{k}" for k in maker.starts}
    sizes = [len(v) for v in converged.augmentation["total"]] if converged.augmentation else None
    occupancies = None
    if "ml" in files:  # the model's own augmentation occupancies where its VASP head has them
        predicted, occupancies = predicted_augmentation(model, structure, spin=result["diff"] is not None,
                                                        sizes=sizes)
        write_prediction_chgcar(structure, result["rho"], files["ml"], diff=result["diff"], augmentation=predicted)
    if "ml-true-occ" in files:  # the reference's converged occupancies with the predicted grid
        augmentation = None
        if converged.augmentation is not None:
            keys = ("total", "diff") if result["diff"] is not None else ("total",)
            augmentation = {k: converged.augmentation[k] for k in keys if k in converged.augmentation}
        write_prediction_chgcar(structure, result["rho"], files["ml-true-occ"], diff=result["diff"],
                                augmentation=augmentation)
    out = {"uid": uid, "arm": "predict", "chgcar": {k: str(v) for k, v in files.items()},
           "grid": list(converged.grid), "nelect": nelect, "seconds": round(result["seconds"], 3),
           "load_s": round(t_load, 3), "electrons_predicted": result["electrons_predicted"],
           "scale": result["scale"], "occupancies": occupancies, "model": str(Path(maker.model).resolve()),
           "model_step": ckpt.get("step"),
           "dir": str(workdir)}
    (workdir / "result.json").write_text(json.dumps(out, indent=2))
    return out
