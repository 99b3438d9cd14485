"""The nscf-eval jobs on VASP: the reference static, then one fixed-density run (``ICHARG = 11``) per start.

Per material the flow is ``scf`` (the input set's static from VASP's atomic
guess, ``ICHARG = 2``: the reference properties and the ``oracle`` CHGCAR),
``predict`` when the ``ml`` start is asked for (accel-eval's VASP prediction
job: the model's grid on the reference's grid, rescaled to NELECT, with the
augmentation occupancies of the model's VASP occupancy head where it has
them), then one ``ICHARG = 11`` run per start. Every run is the same input
set under custodian (:func:`dftflow.vasp.jobs.run_vasp`); the fixed-density
runs add only the tags of :data:`NSCF_TAGS`, so LMAXMIX, U, spin, k-mesh and
cutoff are those of the reference (and of the CHGCAR it wrote).

VASP reports no usable total energy or forces at a fixed density
(:data:`dftflow.nscf.VASP_NO_ENERGY`); its results compare eigenvalue
properties only, and say so under ``unavailable``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jobflow import Flow, job

from dftflow.nscf import STARTS, VASP_NO_DEFAULT, VASP_NO_ENERGY, gaps, hybrid_refusal
from dftflow.vasp.jobs import VaspMaker, VaspRunError, run_vasp

#: The reference static: VASP's atomic guess, no wave functions read, its CHGCAR (with occupancies) written.
SCF_TAGS: dict[str, Any] = {"ISTART": 0, "ICHARG": 2, "NSW": 0, "LCHARG": True}
#: The fixed-density run: the density read from CHGCAR and never updated, nothing written back.
NSCF_TAGS: dict[str, Any] = {"ISTART": 0, "ICHARG": 11, "NSW": 0, "LCHARG": False}


def start_refusal(start: str) -> str | None:
    """Why VASP cannot run ``start``, or None when it can."""
    if start == "default":
        return VASP_NO_DEFAULT
    if start not in STARTS:
        return f"unknown start {start!r} (known: {', '.join(STARTS)})"
    return None


def vasp_xc(inputset: str, overrides: dict[str, Any] | None = None) -> str:
    """The functional of a VASP input set with the user's INCAR tags: HSE06, PBE0 (LHFCALC) or PBE."""
    from dftflow.vasp.inputs import load_vasp_inputset

    iset = load_vasp_inputset(inputset)
    incar = {**{k.upper(): v for k, v in iset.incar.items()}, **{k.upper(): v for k, v in (overrides or {}).items()}}
    hybrid = iset.calculation == "hse06-static" or str(incar.get("LHFCALC", "")).strip(".").lower() in ("true", "t")
    if not hybrid:
        return "PBE"
    return "HSE06" if incar.get("HFSCREEN") not in (None, 0, 0.0) or iset.calculation == "hse06-static" else "PBE0"


def vasp_properties(directory: Path, natoms: int) -> dict[str, Any]:
    """Gaps, band energy and electron count from a run's vasprun.xml (pymatgen), on its own k-points.

    Occupied states are those with an occupation above ½ (vasprun.xml holds
    occupations per orbital, 0 to 1, also without spin polarisation); the
    gaps follow :func:`dftflow.nscf.gaps`. ``band_energy_per_atom`` is
    Σ w_k f_nk ε_nk over spins, k-points and bands (×2 without spin
    polarisation), per atom; ``electrons`` the same sum without ε.
    """
    from pymatgen.io.vasp import Vasprun

    vr = Vasprun(str(directory / "vasprun.xml"), parse_dos=False, parse_eigen=True, parse_potcar_file=False)
    if not vr.eigenvalues:
        raise VaspRunError(f"{directory}/vasprun.xml: no eigenvalues")
    data = np.array([vr.eigenvalues[s] for s in sorted(vr.eigenvalues, key=lambda s: -s.value)])  # (s, k, n, 2)
    eigs, occs = data[..., 0], data[..., 1]
    weights = np.asarray(vr.actual_kpoints_weights, dtype=float)[None, :, None]
    per_orbital = 2.0 if len(data) == 1 else 1.0
    out = {"band_energy_per_atom": float(per_orbital * (weights * occs * eigs).sum()) / natoms,
           "electrons": float(per_orbital * (weights * occs).sum()),
           "fermi_level": None if vr.efermi is None else float(vr.efermi)}
    out.update(gaps(eigs, occs > 0.5, occs <= 0.5))
    return out


@dataclass(kw_only=True)
class VaspNscfMaker(VaspMaker):
    """The reference static (``start='scf'``) or a fixed-density run from one start's CHGCAR.

    ``incar_overrides`` are the user's INCAR tags; the maker adds
    :data:`SCF_TAGS` or :data:`NSCF_TAGS` on top.
    """

    name: str = "nscf scf"
    start: str = "scf"
    climb_ladder: bool = False  # a rung changes the settings: the runs of one material must share them

    @job
    def make(self, structure: Any, uid: str = "", start_chgcar: str | None = None,  # type: ignore[override]
             occupancies: str | None = None) -> dict[str, Any]:
        return run_vasp_nscf(self, structure, uid=uid, start_chgcar=start_chgcar, occupancies=occupancies)


def run_vasp_nscf(maker: VaspNscfMaker, structure: Any, *, uid: str = "", start_chgcar: str | None = None,
                  occupancies: str | None = None) -> dict[str, Any]:
    """Run the maker's static or fixed-density step; ``occupancies`` says where the start's
    augmentation occupancies come from (the prediction job's note for ``ml``)."""
    from dataclasses import replace

    from dftflow.vasp.jobs import _structure

    structure = _structure(structure)
    if maker.start != "scf":
        user = {k: v for layer in maker.incar_overrides for k, v in layer.items()}
        refusal = start_refusal(maker.start) or hybrid_refusal(vasp_xc(maker.inputset, user))
        if refusal:
            raise VaspRunError(refusal)
        if not start_chgcar:
            raise VaspRunError(f"start {maker.start}: a fixed-density run needs the CHGCAR to hold fixed")
    tags = SCF_TAGS if maker.start == "scf" else NSCF_TAGS
    run = replace(maker, incar_overrides=[*maker.incar_overrides, tags])
    result = run_vasp(run, structure, start_chgcar=start_chgcar if maker.start != "scf" else None)
    workdir = Path(result["dir"])
    steps = result["scf_steps"][0] if result["scf_steps"] else 0
    out: dict[str, Any] = {
        "uid": uid, "start": maker.start, "engine": "vasp", "natoms": len(structure), "dir": result["dir"],
        "inputset": result["inputset"], "incar": result["incar"], "kpoints": result["kpoints"],
        "versions": result["versions"], "n_iter": steps, "wall_s": result["wall_s"],
        "converged": result["converged_electronic"], "notes": result["notes"],
        **vasp_properties(workdir, len(structure)),
    }
    if maker.start == "scf":
        if not result["converged_electronic"]:
            raise VaspRunError(f"{result['inputset']}: the reference SCF did not converge in NELM = "
                               f"{result['incar'].get('NELM')} steps; see {workdir}/OSZICAR")
        if not result["chgcar"]:
            raise VaspRunError(f"{workdir}: the reference SCF wrote no CHGCAR (the oracle and ml starts need it)")
        forces = _forces(workdir)
        out.update(energy=result["energy"], energy_per_atom=result["energy_per_atom"], forces=forces,
                   chgcar=result["chgcar"])
    else:
        out.update(energy=None, energy_per_atom=None, forces=None, start_chgcar=start_chgcar,
                   occupancies="converged" if maker.start == "oracle" else occupancies,
                   unavailable={"energy": VASP_NO_ENERGY, "forces": VASP_NO_ENERGY})
    (workdir / "result.json").write_text(json.dumps(out, indent=2, default=str))
    return out


def _forces(directory: Path) -> list[list[float]]:
    """The forces (eV/Å) of a static's last ionic step, from vasprun.xml."""
    from pymatgen.io.vasp import Vasprun

    vr = Vasprun(str(directory / "vasprun.xml"), parse_dos=False, parse_eigen=False, parse_potcar_file=False)
    return np.asarray(vr.ionic_steps[-1]["forces"], dtype=float).tolist()


def vasp_nscf_flow(structure: Any, uid: str, *, model: str | None, starts: tuple[str, ...], inputset: str,
                   incar_overrides: dict[str, Any] | None = None, command: str = "vasp_std") -> Flow:
    """scf → predict (for the ml start) → one ICHARG = 11 run per start."""
    from dftflow.accel.vasp import VaspPredictMaker

    refused = {s: r for s in starts if (r := start_refusal(s))}
    if refused:
        raise ValueError("; ".join(f"start {s}: {r}" for s, r in refused.items()))
    user = [dict(incar_overrides)] if incar_overrides else []
    common = {"inputset": inputset, "incar_overrides": user, "command": command}
    scf = VaspNscfMaker(name="nscf scf", start="scf", **common).make(structure, uid=uid)
    jobs = [scf]
    predict = None
    if "ml" in starts:
        if not model:
            raise ValueError("the ml start needs a model")
        predict = VaspPredictMaker(name="nscf predict", model=model, starts=("ml",)).make(
            structure, uid=uid, reference=scf.output)
        jobs.append(predict)
    for start in starts:
        nscf = VaspNscfMaker(name=f"nscf {start}", start=start, **common)
        if start == "oracle":
            jobs.append(nscf.make(structure, uid=uid, start_chgcar=scf.output["chgcar"]))
        else:
            jobs.append(nscf.make(structure, uid=uid, start_chgcar=predict.output["chgcar"]["ml"],  # type: ignore[union-attr]
                                  occupancies=predict.output["occupancies"]))  # type: ignore[union-attr]
    return Flow(jobs, name=uid)
