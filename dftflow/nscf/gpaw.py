"""The nscf-eval jobs on GPAW: the reference SCF, then one non-self-consistent step per start.

Per material the flow is ``scf`` (GPAW's default start converged
self-consistently: the reference properties and the ``oracle`` density),
``predict`` when the ``ml`` start is asked for (the same prediction job as
accel-eval), then one :func:`dftflow.gpaw.nscf.nscf_from_density` per start,
all with the same parameters.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobflow import Flow, Maker, job
from pymatgen.core import Structure

from dftflow.nscf import STARTS


@dataclass(kw_only=True)
class GpawNscfMaker(Maker):
    """The reference SCF (``start='scf'``) or a non-self-consistent step from one start."""

    name: str = "nscf scf"
    start: str = "scf"
    inputset: str = "gpaw_pbe_static"
    overrides: dict[str, Any] = field(default_factory=dict)
    occupancies: str = "auto"

    @job
    def make(self, structure: Structure, uid: str = "", reference: dict[str, Any] | None = None,
             prediction: dict[str, Any] | None = None) -> dict[str, Any]:
        return run_nscf(self, structure, uid=uid, reference=reference, prediction=prediction)


def ml_occupancies(occupancies: str, prediction: dict[str, Any]) -> str:
    """The occupancy source of a total-density model's start: ``predicted`` (its occupancy head) or ``atomic``.

    ``auto`` takes the predicted density matrices when the model has a GPAW
    occupancy head. ``refresh`` (accel-eval's default) needs fixed-density
    steps that change the density matrices, so it has no place here.
    """
    if occupancies == "auto":
        return "predicted" if prediction.get("density_matrices") else "atomic"
    if occupancies not in ("predicted", "atomic"):
        raise ValueError(f"occupancies {occupancies!r}: nscf-eval takes auto, predicted or atomic")
    return occupancies


def start_density(maker: GpawNscfMaker, atoms: Any, params: dict[str, Any], reference: dict[str, Any] | None,
                  prediction: dict[str, Any] | None) -> tuple[Any, str]:
    """(density to hold fixed, where its density matrices come from) of one start."""
    from dftflow.accel.gpaw import GpawArmMaker, _start
    from dftflow.gpaw.restart import DensityState

    if maker.start == "default":
        return None, "atomic"
    if reference is None:
        raise ValueError(f"start {maker.start} needs the reference SCF")
    if maker.start == "oracle":
        return DensityState.load(reference["density"]), "converged"
    if prediction is None:
        raise ValueError("start ml needs a prediction")
    occupancies = "auto" if prediction.get("kind") == "correction" else ml_occupancies(maker.occupancies, prediction)
    arm = GpawArmMaker(arm="ml", inputset=maker.inputset, overrides=maker.overrides, occupancies=occupancies)
    start, refresh, source = _start(arm, atoms, params, reference, prediction)
    if refresh:  # cannot happen with the sources above; a guard against accel-eval's defaults changing
        raise ValueError("the ml start asks for refreshed occupancies, which would move the density")
    return start, source


def run_nscf(maker: GpawNscfMaker, structure: Structure, *, uid: str = "", reference: dict[str, Any] | None = None,
             prediction: dict[str, Any] | None = None) -> dict[str, Any]:
    from gpaw.new.scf import KohnShamConvergenceError

    from dftflow.accel.gpaw import _atoms_params
    from dftflow.gpaw.nscf import nscf_from_density, properties
    from dftflow.gpaw.params import EngineError, params_hash, versions
    from dftflow.gpaw.restart import scf_from_density, state_of

    if maker.start != "scf" and maker.start not in STARTS:
        raise ValueError(f"unknown start {maker.start!r} (known: {', '.join(STARTS)})")
    workdir = Path.cwd()
    atoms, params, iset = _atoms_params(structure, maker.inputset, maker.overrides)
    log = workdir / "gpaw.txt"
    out: dict[str, Any] = {"uid": uid, "start": maker.start, "engine": "gpaw", "natoms": len(atoms),
                           "dir": str(workdir), "inputset": iset.name, "parameters": params,
                           "parameters_hash": params_hash(params), "versions": versions()}
    if maker.start == "scf":
        t0 = time.perf_counter()
        try:
            run = scf_from_density(atoms, params, None, txt=str(log))
        except KohnShamConvergenceError as exc:
            raise EngineError(f"reference SCF did not converge in {iset.maxiter} iterations; see {log}") from exc
        density = workdir / "density.npz"
        state_of(run["dft"]).save(density)
        out.update(properties(run["dft"]), n_iter=run["n_scf"], density=str(density),
                   wall_s=round(time.perf_counter() - t0, 3))
    else:
        start, source = start_density(maker, atoms, params, reference, prediction)
        run = nscf_from_density(atoms, params, start, txt=str(log))
        wall = run.pop("wall")
        del run["dft"]
        out.update(run, occupancies=source, wall_s=round(wall, 3),
                   fallback=(prediction or {}).get("fallback") if maker.start == "ml" else None)
    (workdir / "result.json").write_text(json.dumps(out, indent=2))
    return out


def gpaw_nscf_flow(structure: Structure, uid: str, *, model: str | None, starts: tuple[str, ...], inputset: str,
                   overrides: dict[str, Any] | None = None, occupancies: str = "auto") -> Flow:
    """scf → predict (for the ml start) → one non-self-consistent step per start."""
    from dftflow.accel.gpaw import PredictStartMaker

    unknown = [s for s in starts if s not in STARTS]
    if unknown:
        raise ValueError(f"unknown start(s) {', '.join(unknown)} (known: {', '.join(STARTS)})")
    common = {"inputset": inputset, "overrides": dict(overrides or {}), "occupancies": occupancies}
    scf = GpawNscfMaker(name="nscf scf", start="scf", **common).make(structure, uid=uid)
    jobs = [scf]
    prediction = None
    if "ml" in starts:
        if not model:
            raise ValueError("the ml start needs a model")
        predict = PredictStartMaker(name="nscf predict", model=model, inputset=inputset,
                                    overrides=dict(overrides or {})).make(structure, uid=uid)
        jobs.append(predict)
        prediction = predict.output
    for start in starts:
        jobs.append(GpawNscfMaker(name=f"nscf {start}", start=start, **common).make(
            structure, uid=uid, reference=scf.output, prediction=prediction if start == "ml" else None))
    return Flow(jobs, name=uid)
