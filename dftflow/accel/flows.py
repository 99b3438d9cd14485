"""One accel-eval workflow per material: the default arm, the prediction, then the restarted arms."""

from __future__ import annotations

from typing import Any

from jobflow import Flow
from pymatgen.core import Structure


def gpaw_accel_flow(structure: Structure, uid: str, *, model: str, arms: tuple[str, ...], inputset: str,
                    overrides: dict[str, Any] | None = None, nfixed: int = 3, occupancies: str = "auto",
                    correction_scale: float | None = None) -> Flow:
    """default → predict → the other arms (each from the default's converged density and the prediction)."""
    from dftflow.accel.gpaw import ARMS, GpawArmMaker, PredictStartMaker, arm_scale

    unknown = [a for a in arms if arm_scale(a)[0] not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {', '.join(unknown)} (known: {', '.join(ARMS)})")
    common = {"inputset": inputset, "overrides": dict(overrides or {}), "nfixed": nfixed, "occupancies": occupancies}
    default = GpawArmMaker(name="accel default", arm="default", **common).make(structure, uid=uid)
    jobs = [default]
    prediction = None
    if any(a.startswith("ml") for a in arms):
        predict = PredictStartMaker(model=model, inputset=inputset, overrides=dict(overrides or {}),
                                    correction_scale=correction_scale).make(structure, uid=uid)
        jobs.append(predict)
        prediction = predict.output
    for arm in arms:
        if arm == "default":
            continue
        jobs.append(GpawArmMaker(name=f"accel {arm}", arm=arm, **common).make(
            structure, uid=uid, reference=default.output, prediction=prediction if arm.startswith("ml") else None))
    return Flow(jobs, name=uid)


def vasp_accel_flow(structure: Structure, uid: str, *, model: str, arms: tuple[str, ...], inputset: str,
                    incar_overrides: dict[str, Any] | None = None, nfixed: int = 5, command: str = "vasp_std") -> Flow:
    """default → predict (on the default's grid, with its occupancies for ml-true-occ) → the other arms."""
    from dftflow.accel.vasp import VASP_ARMS, VaspArmMaker, VaspPredictMaker, arm_tags

    unknown = [a for a in arms if a not in VASP_ARMS]
    if unknown:
        raise ValueError(f"arm(s) {', '.join(unknown)} are not available with VASP (known: {', '.join(VASP_ARMS)})")
    user = [dict(incar_overrides)] if incar_overrides else []

    def maker(arm: str) -> VaspArmMaker:
        return VaspArmMaker(name=f"accel {arm}", arm=arm, inputset=inputset, nfixed=nfixed, command=command,
                            incar_overrides=[*user, arm_tags(arm, nfixed)])

    default = maker("default").make(structure, uid=uid)
    jobs = [default]
    predict = None
    if any(a.startswith("ml") for a in arms):
        predict = VaspPredictMaker(model=model).make(structure, uid=uid, reference=default.output)
        jobs.append(predict)
    for arm in arms:
        if arm == "default":
            continue
        start = default.output["chgcar"] if arm == "oracle" else predict.output["chgcar"][arm]  # type: ignore[union-attr]
        jobs.append(maker(arm).make(structure, uid=uid, start_chgcar=start))
    return Flow(jobs, name=uid)
