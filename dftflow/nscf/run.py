"""``dftflow nscf-eval``: queue the reference SCF and the non-self-consistent steps of every material, run them,
write the report.

The evaluation directory is a small project like accel-eval's: ``jobs.sqlite``
(every calculation a job, so a rerun continues where it stopped and computes
nothing twice), ``calcs/<material>/<job>`` and the report (``nscf.json``,
``nscf.csv``, ``nscf_errors.png``). The input set chooses the engine: GPAW
(:mod:`dftflow.nscf.gpaw`) or VASP (:mod:`dftflow.nscf.vasp`, ``ICHARG = 11``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from dftflow.errors import InputError
from dftflow.nscf import STARTS, hybrid_refusal


def inputset_engine(inputset: str) -> str:
    """``gpaw`` or ``vasp``: the engine an input set (name or YAML path) is written for."""
    import yaml

    from dftflow.resources import resolve

    path = resolve("inputsets", inputset)
    data = yaml.safe_load(path.read_text()) or {}
    return str(data.get("engine", "vasp"))  # the VASP sets name no engine (dftflow.vasp.inputs)


def nscf_eval(out: Path, materials: list[tuple[str, Structure]], *, model: Path | None, starts: tuple[str, ...],
              inputset: str = "gpaw_pbe_static", overrides: dict[str, Any] | None = None,
              occupancies: str = "auto", workers: int = 1, figures: bool = True, profile: str | None = None,
              dry_run: bool = False, experimental: bool = False,
              on_tick: Callable[[dict[str, int]], None] | None = None) -> dict[str, Any]:
    """Run (or continue) the evaluation in ``out`` and write its report.

    The input set chooses the engine. GPAW runs on ``workers`` local
    processes. VASP runs under custodian on local workers too (the command
    of ``DFTFLOW_VASP_COMMANDS``, or ``vasp_std``; the ``DFTFLOW_*`` variables
    of this process are set in every worker), or, with a cluster ``profile``,
    in SLURM allocations: a rerun collects what has finished and submits what
    is left, as accel-eval does. ``overrides`` are input-set fields for GPAW,
    INCAR tags for VASP. ``experimental``: put the fundamental gaps next to the experimental ones
    of the bundled table (:mod:`dftflow.nscf.experimental`) for the materials it lists.
    """
    import os

    from dftflow.accel.run import collect, pin_settings
    from dftflow.execution.queue import JobQueue
    from dftflow.execution.worker import flow_jobs, run_workers
    from dftflow.nscf.report import write_report

    unknown = [s for s in starts if s not in STARTS]
    if unknown or not starts:
        raise InputError(f"--start {','.join(starts)}: choose from {', '.join(STARTS)}")
    if occupancies not in ("auto", "predicted", "atomic"):
        raise InputError(f"--occupancies {occupancies!r}: auto, predicted or atomic")
    engine = inputset_engine(inputset)
    if engine == "gpaw":
        from dftflow.inputsets import load_inputset, with_overrides

        iset = with_overrides(load_inputset(inputset), overrides or {})
        xc, name = iset.xc, iset.name
        if profile:
            raise InputError(f"--profile {profile}: GPAW evaluations run on local workers (--workers)")
    else:
        from dftflow.nscf.vasp import start_refusal, vasp_xc
        from dftflow.vasp.inputs import load_vasp_inputset

        viset = load_vasp_inputset(inputset)
        name, xc = viset.name, vasp_xc(inputset, overrides)
        if viset.calculation == "relax":
            raise InputError(f"input set {name}: a relaxation; nscf-eval compares with a static (ecd-pbe-static, "
                             "mp-static)")
    refusal = hybrid_refusal(xc)
    if refusal:
        raise InputError(f"input set {name}: {refusal}")
    if engine == "vasp":
        refused = [f"start {s}: {r}" for s in starts if (r := start_refusal(s))]
        if refused:
            raise InputError(f"input set {name} (VASP): " + "; ".join(refused))
        if occupancies != "auto":
            raise InputError(f"--occupancies {occupancies}: with VASP the ml start takes the augmentation "
                             "occupancies of the model's VASP occupancy head where it has one, else none "
                             "(auto only)")
    if "ml" in starts and (model is None or not model.exists()):
        raise InputError(f"{model}: no such checkpoint (the ml start needs a model)")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"engine": engine, "model": str(model.resolve()) if model and "ml" in starts else None,
                "starts": list(starts), "inputset": inputset, "overrides": overrides or {},
                "occupancies": occupancies}
    pin_settings(out, settings)

    def flow(uid: str, structure: Structure) -> Any:
        if engine == "gpaw":
            from dftflow.nscf.gpaw import gpaw_nscf_flow

            return gpaw_nscf_flow(structure, uid, model=settings["model"], starts=starts, inputset=inputset,
                                  overrides=overrides, occupancies=occupancies)
        from dftflow.nscf.vasp import vasp_nscf_flow

        return vasp_nscf_flow(structure, uid, model=settings["model"], starts=starts, inputset=inputset,
                              incar_overrides=overrides)

    queue_path = out / "jobs.sqlite"
    queue = JobQueue(queue_path)
    try:
        queue.add_flows([(uid, flow_jobs(flow(uid, structure))) for uid, structure in materials
                         if not queue.has_flow(uid)])
    finally:
        queue.close()
    launched: list[dict[str, Any]] = []
    if profile:
        from dftflow.accel.run import submit_allocations

        launched = submit_allocations(out, profile, dry_run=dry_run, what="nscf_eval")
    else:
        env = {k: v for k, v in os.environ.items() if k.startswith("DFTFLOW_")} if engine == "vasp" else None
        run_workers(queue_path, out, workers, on_tick=on_tick, env=env)
    results, problems = collect(queue_path)
    if engine == "gpaw":
        from dftflow.gpaw.params import versions

        found = versions()
    else:
        found = next((r["versions"] for r in results if r.get("versions")), {})
    matches = None
    if experimental:
        from dftflow.nscf.experimental import match

        matches = {}
        for uid, structure in materials:
            entry, reason = match(structure)
            matches[uid] = {"entry": entry.model_dump() if entry else None, "reason": reason}
    report = write_report(results, starts, out, settings={**settings, "versions": found}, figures=figures,
                          experimental=matches)
    queue = JobQueue(queue_path)
    try:
        report["jobs"] = queue.counts()
    finally:
        queue.close()
    report["problems"] = problems
    report["launched"] = launched
    (out / "nscf.json").write_text(json.dumps(report, indent=2))
    return report
