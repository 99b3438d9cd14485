"""The accel-eval arms on GPAW: one SCF per arm, identical but for the starting density.

Per material the flow is ``default`` (GPAW's atomic guess; its converged
density is the reference of the other arms) and ``predict`` (the model's total
density on the calculation's grid, rescaled to the valence electron count),
then the restarts:

* ``ml`` (deployable): predicted grid with occupancies that need no converged
  calculation (``occupancies``: ``predicted`` by the model's occupancy head,
  ``refresh``, the density matrices of the wave functions converged in the
  predicted density's potential, ``predicted-refresh``, the refresh after fixed
  steps in the potential with predicted occupancies, or ``atomic``; ``auto``:
  refresh, the best measured so far);
* ``ml-atomic-occ``: predicted grid with GPAW's atomic density matrices;
* ``ml-true-occ`` (not deployable): predicted grid with the converged density
  matrices, the protocol behind published SCF savings;
* ``oracle``: the converged density itself (the floor).

Every arm makes the same ``nfixed`` fixed-density steps first, with fresh wave
functions (LCAO eigenstates of the starting potential), the same parameters
and the same convergence criteria.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jobflow import Maker, job
from pymatgen.core import Structure

# A correction model's change is refused (default start, with the reason) when it relocates more than this
# fraction of the valence electrons, Σ|Δnt|·dV / N: GPAW PBE(+U) statics of 1,583 prototype crystals move a
# median 4.5 % and at most 21 % (docs/accel.md), so a larger change is a model outside what it learnt.
MAX_MOVED_FRACTION = 0.5

ARMS: dict[str, dict[str, Any]] = {
    "default": {"deployable": True, "label": "default guess"},
    "ml": {"deployable": True, "label": "ML grid + deployable occupancies"},
    "ml-atomic-occ": {"deployable": True, "label": "ML grid + atomic occupancies"},
    "ml-true-occ": {"deployable": False, "label": "ML grid + true occupancies (not deployable)"},
    "oracle": {"deployable": False, "label": "converged density (floor)"},
}


def arm_scale(arm: str) -> tuple[str, float | None]:
    """``ml@0.5`` → (``ml``, 0.5): the ``ml`` arm of a correction model with its correction scaled by 0.5
    (what ``dftflow models calibrate`` compares); any other arm → (arm, None)."""
    base, _, scale = arm.partition("@")
    if not scale:
        return arm, None
    try:
        value = float(scale)
    except ValueError:
        raise ValueError(f"arm {arm!r}: the part after '@' must be a number (ml@0.5)") from None
    if base != "ml" or not 0 <= value <= 2:
        raise ValueError(f"arm {arm!r}: only the ml arm takes a correction scale, between 0 and 2")
    return base, value


def arm_label(arm: str) -> str:
    base, scale = arm_scale(arm)
    return ARMS[base]["label"] + (f", correction × {scale:g}" if scale is not None else "")


def _atoms_params(structure: Structure, inputset: str, overrides: dict[str, Any]) -> tuple[Any, dict[str, Any], Any]:
    from dftflow.gpaw.jobs import _prepare
    from dftflow.inputsets import load_inputset, with_overrides

    iset = with_overrides(load_inputset(inputset), overrides)
    atoms, params = _prepare(structure, iset, Path.cwd())
    return atoms, params, iset


def band_character(dft: Any) -> dict[str, Any]:
    """Band gap (eV, 0 for metals) and whether any band crosses the Fermi level."""
    calc = dft.ase_calculator()
    nspins, nkpts = calc.get_number_of_spins(), len(calc.get_ibz_k_points())
    eigs = np.array([[calc.get_eigenvalues(kpt=k, spin=s) for k in range(nkpts)] for s in range(nspins)])
    ef = float(calc.get_fermi_level())
    below, above = eigs < ef, eigs > ef
    crossing = bool(np.any(below.any(axis=(0, 1)) & above.any(axis=(0, 1))))
    gap = 0.0 if crossing or not below.any() or not above.any() else float(eigs[above].min() - eigs[below].max())
    return {"metal": crossing, "gap": gap}


@dataclass(kw_only=True)
class GpawArmMaker(Maker):
    """One arm: a GPAW SCF from the arm's starting density, with its step counts and wall time."""

    name: str = "accel default"
    arm: str = "default"
    inputset: str = "gpaw_pbe_static"
    overrides: dict[str, Any] = field(default_factory=dict)
    nfixed: int = 3
    occupancies: str = "auto"

    @job
    def make(self, structure: Structure, uid: str = "", reference: dict[str, Any] | None = None,
             prediction: dict[str, Any] | None = None) -> dict[str, Any]:
        return run_arm(self, structure, uid=uid, reference=reference, prediction=prediction)


def _start(maker: GpawArmMaker, atoms: Any, params: dict[str, Any], reference: dict[str, Any] | None,
           prediction: dict[str, Any] | None) -> tuple[Any, bool, str]:
    """(start density, refresh occupancies, occupancy source) of an arm."""
    from dftflow.gpaw.restart import DensityState, GridConverter

    arm, scale = arm_scale(maker.arm)
    if arm == "default":
        return None, False, "atomic"
    if reference is None:
        raise ValueError(f"arm {maker.arm} needs the default arm's converged density")
    truth = DensityState.load(reference["density"])
    if maker.arm == "oracle":
        return truth, False, "converged"
    if prediction is None:
        raise ValueError(f"arm {maker.arm} needs a prediction")
    conv = GridConverter(atoms, params)
    if prediction.get("kind") == "correction":
        return _corrected_start(arm, conv, truth, prediction, scale)
    if scale is not None:
        raise ValueError(f"arm {maker.arm}: a correction scale needs a correction model (data.target smooth_delta)")
    rho = np.load(prediction["rho"])
    diff = np.load(prediction["diff"]) if prediction.get("diff") else None
    if maker.arm == "ml-true-occ":
        return conv.state(rho, truth.D_asii, magnetization=diff), False, "converged"
    source = maker.occupancies
    if source == "auto":  # the best measured deployable source so far (docs/accel.md)
        source = "refresh"
    if maker.arm == "ml-atomic-occ" or source == "atomic":
        return conv.state(rho, conv.atomic.D_asii, magnetization=diff), False, "atomic"
    if maker.arm == "ml" and source in ("predicted", "predicted-refresh"):
        if not prediction.get("density_matrices"):
            raise ValueError(f"occupancies {source!r}: no predicted density matrices "
                             f"({prediction.get('occupancy_note') or 'the model has no occupancy head'})")
        with np.load(prediction["density_matrices"]) as data:
            total = [data[f"D_{a}"] for a in range(len(atoms))]
        start = conv.state(rho, conv.split_spins(total), magnetization=diff)
        return start, source == "predicted-refresh", source
    if maker.arm == "ml" and source == "refresh":
        return conv.state(rho, conv.atomic.D_asii, magnetization=diff), True, "refresh"
    raise ValueError(f"unknown arm {maker.arm!r} or occupancies {maker.occupancies!r}")


def _corrected_start(arm: str, conv: Any, truth: Any, prediction: dict[str, Any],
                     scale: float | None = None) -> tuple[Any, bool, str]:
    """GPAW's atomic guess plus a correction model's change, scaled by the model's calibrated factor.

    The smooth density and the density matrices are corrected directly (no
    split of a total density), each spin channel by half of the spin-summed
    change, so the start keeps the atomic guess's magnetisation. A zero
    correction (or an element the model never saw: ``fallback``) is GPAW's
    default start exactly.
    """
    from ase.units import Bohr

    from dftflow.gpaw.restart import DensityState

    atomic = conv.atomic
    if prediction.get("fallback"):
        return DensityState(atomic.nt_sR.copy(), [D.copy() for D in atomic.D_asii]), False, "atomic (fallback)"
    scale = float(prediction.get("correction_scale", 1.0)) if scale is None else scale
    nspins = atomic.nt_sR.shape[0]
    delta = np.load(prediction["delta"]) * Bohr**3 * scale / nspins
    nt = atomic.nt_sR + delta[None]
    if arm == "ml-true-occ":
        return DensityState(nt, [np.asarray(D, dtype=float).copy() for D in truth.D_asii]), False, "converged"
    if arm == "ml-atomic-occ" or not prediction.get("delta_D"):
        return DensityState(nt, [D.copy() for D in atomic.D_asii]), False, "atomic"
    with np.load(prediction["delta_D"]) as data:
        delta_D = [data[f"D_{a}"] for a in range(len(atomic.D_asii))]
    D = [A + scale * dD[None] / nspins for A, dD in zip(atomic.D_asii, delta_D, strict=True)]
    return DensityState(nt, D), False, "predicted change"


def run_arm(maker: GpawArmMaker, structure: Structure, *, uid: str = "", reference: dict[str, Any] | None = None,
            prediction: dict[str, Any] | None = None) -> dict[str, Any]:
    from gpaw.new.scf import KohnShamConvergenceError

    from dftflow.gpaw.log import gpaw_log_steps
    from dftflow.gpaw.params import EngineError, params_hash, versions
    from dftflow.gpaw.restart import scf_from_density, state_of

    arm, _ = arm_scale(maker.arm)
    if arm not in ARMS:
        raise ValueError(f"unknown arm {maker.arm!r} (known: {', '.join(ARMS)}, ml@SCALE)")
    workdir = Path.cwd()
    atoms, params, iset = _atoms_params(structure, maker.inputset, maker.overrides)
    t0 = time.perf_counter()
    start, refresh, source = _start(maker, atoms, params, reference, prediction)
    t_start = time.perf_counter() - t0
    log = workdir / "gpaw.txt"
    try:
        run = scf_from_density(atoms, params, start, nfixed=maker.nfixed, refresh_occupancies=refresh, txt=str(log))
    except KohnShamConvergenceError as exc:
        raise EngineError(f"arm {maker.arm}: SCF did not converge in {iset.maxiter} iterations; see {log}") from exc
    dft = run["dft"]
    logged = gpaw_log_steps(log)
    out: dict[str, Any] = {
        "uid": uid, "arm": maker.arm, "engine": "gpaw", "deployable": ARMS[arm]["deployable"],
        "occupancies": source, "energy": run["energy"], "natoms": len(atoms),
        "n_scf": run["n_scf"], "n_fixed": run["n_fixed"], "steps": run["n_scf"] + run["n_fixed"],
        "steps_log": {"fixed": logged.fixed, "scf": logged.scf}, "start_energy": logged.first_scf_energy,
        "wall_s": round(run["wall"], 3), "setup_s": round(t_start, 3), "dir": str(workdir),
        "inputset": iset.name, "parameters": params, "parameters_hash": params_hash(params),
        "nfixed": maker.nfixed, "versions": versions(),
    }
    if maker.arm == "default":
        density = workdir / "density.npz"
        state_of(dft).save(density)
        out["density"] = str(density)
        out.update(band_character(dft))
        magmom = 0.0
        if params.get("spinpol"):
            mm_v, mm_av = dft.magmoms()
            magmom = float(np.abs(mm_av[:, 2]).sum())
        out["magnetic"] = bool(magmom > 0.1)
        out["abs_magmom"] = magmom
    (workdir / "result.json").write_text(json.dumps(out, indent=2))
    return out


@dataclass(kw_only=True)
class PredictStartMaker(Maker):
    """The model's density on the GPAW calculation's grid, rescaled to its valence electron count."""

    name: str = "accel predict"
    model: str = ""
    inputset: str = "gpaw_pbe_static"
    overrides: dict[str, Any] = field(default_factory=dict)
    correction_scale: float | None = None  # correction models: None takes the checkpoint's calibrated factor

    @job
    def make(self, structure: Structure, uid: str = "") -> dict[str, Any]:
        return run_predict(self, structure, uid=uid)


def run_predict(maker: PredictStartMaker, structure: Structure, *, uid: str = "") -> dict[str, Any]:
    import torch

    from dftflow.gpaw.restart import GridConverter
    from dftflow.ml.predict import is_correction_model, load_model, predict_density

    workdir = Path.cwd()
    atoms, params, _ = _atoms_params(structure, maker.inputset, maker.overrides)
    conv = GridConverter(atoms, params)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model, ckpt = load_model(maker.model)
    t_load = time.perf_counter() - t0
    if is_correction_model(ckpt):
        return _predict_correction(maker, structure, conv, model, ckpt, workdir, uid=uid, t_load=t_load)
    result = predict_density(model, ckpt, structure, conv.grid, nelect=conv.nvalence)
    np.save(workdir / "rho.npy", result["rho"].astype(np.float64))
    occupancy_s, occupancy_note = None, None
    if model.occupancy_head is not None and model.occupancy_head.kind != "gpaw":
        occupancy_note = f"the occupancy head predicts {model.occupancy_head.kind} occupancies, not GPAW's"
    elif model.occupancy_head is not None:
        from dftflow.ml.predict import save_density_matrices

        t1 = time.perf_counter()
        # an element the head never saw keeps the free atom's density matrix (GPAW's atomic guess)
        unseen = save_density_matrices(model, structure, workdir / "density_matrices.npz")
        occupancy_s = time.perf_counter() - t1
        if unseen:
            occupancy_note = f"atomic density matrices for {', '.join(unseen)} (not in the head's training data)"
    out = {"uid": uid, "rho": str(workdir / "rho.npy"), "diff": None, "grid": list(conv.grid),
           "seconds": round(result["seconds"], 3), "load_s": round(t_load, 3), "nelect": conv.nvalence,
           "electrons_predicted": result["electrons_predicted"], "scale": result["scale"],
           "model": str(Path(maker.model).resolve()), "model_step": ckpt.get("step"),
           "density_matrices": str(workdir / "density_matrices.npz") if occupancy_s is not None else None,
           "occupancy_s": None if occupancy_s is None else round(occupancy_s, 4), "occupancy_note": occupancy_note,
           "saed": (ckpt.get("saed") or {}).get("source") if isinstance(ckpt.get("saed"), dict) else None}
    if result["diff"] is not None:
        np.save(workdir / "diff.npy", result["diff"].astype(np.float64))
        out["diff"] = str(workdir / "diff.npy")
    (workdir / "result.json").write_text(json.dumps(out, indent=2))
    return out


def _predict_correction(maker: PredictStartMaker, structure: Structure, conv: Any, model: Any, ckpt: dict[str, Any],
                        workdir: Path, *, uid: str, t_load: float) -> dict[str, Any]:
    """A correction model's prediction for the ``ml`` arms, or the fallback to the default start, with its reason."""
    from dftflow.ml.predict import predict_correction, unseen_elements

    out: dict[str, Any] = {"uid": uid, "kind": "correction", "grid": list(conv.grid), "nelect": conv.nvalence,
                           "model": str(Path(maker.model).resolve()), "model_step": ckpt.get("step"),
                           "load_s": round(t_load, 3), "delta": None, "delta_D": None, "fallback": None,
                           "correction_scale": maker.correction_scale if maker.correction_scale is not None
                           else float(ckpt.get("correction_scale", 1.0)), "seconds": 0.0, "occupancy_note": None}
    unseen = unseen_elements(ckpt, structure)
    if unseen:
        out["fallback"] = f"default start: the model was not trained on {', '.join(unseen)}"
    else:
        result = predict_correction(model, ckpt, structure, conv.grid)
        np.save(workdir / "delta.npy", result["delta"].astype(np.float64))
        moved = float(np.abs(result["delta"]).sum()) * structure.volume / result["delta"].size / conv.nvalence
        out.update(delta=str(workdir / "delta.npy"), seconds=round(result["seconds"], 3),
                   points_evaluated=result["points_evaluated"], moved_fraction=round(moved, 6))
        if not moved <= MAX_MOVED_FRACTION:  # NaN too
            out["fallback"] = (f"default start: the predicted correction moves {100 * moved:.3g} % of the valence "
                               f"electrons (more than {100 * MAX_MOVED_FRACTION:g} %: outside what the model learnt)")
        if result["delta_D"] is not None:
            np.savez(workdir / "delta_D.npz", **{f"D_{a}": D for a, D in enumerate(result["delta_D"])})
            out["delta_D"] = str(workdir / "delta_D.npz")
        else:
            out["occupancy_note"] = "atomic density matrices (the model has no occupancy head)"
    (workdir / "result.json").write_text(json.dumps(out, indent=2))
    return out
