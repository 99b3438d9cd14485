"""``dftflow nscf-eval``: queue the reference SCF and the non-self-consistent steps of every material, run them,
write the report.

The evaluation directory is a small project like accel-eval's: ``jobs.sqlite``
(every calculation a job, so a rerun continues where it stopped and computes
nothing twice), ``calcs/<material>/<job>`` and the report (``nscf.json``,
``nscf.csv``, ``nscf_errors.png``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from dftflow.errors import InputError
from dftflow.nscf import STARTS, hybrid_refusal


def nscf_eval(out: Path, materials: list[tuple[str, Structure]], *, model: Path | None, starts: tuple[str, ...],
              inputset: str = "gpaw_pbe_static", overrides: dict[str, Any] | None = None,
              occupancies: str = "auto", workers: int = 1, figures: bool = True, experimental: bool = False,
              on_tick: Callable[[dict[str, int]], None] | None = None) -> dict[str, Any]:
    """Run (or continue) the evaluation in ``out`` on local GPAW workers and write its report.

    ``experimental``: put the fundamental gaps next to the experimental ones of the bundled table
    (:mod:`dftflow.nscf.experimental`) for the materials it lists.
    """
    from dftflow.accel.run import collect, pin_settings
    from dftflow.execution.queue import JobQueue
    from dftflow.execution.worker import flow_jobs, run_workers
    from dftflow.gpaw.params import versions
    from dftflow.inputsets import load_inputset, with_overrides
    from dftflow.nscf.gpaw import gpaw_nscf_flow
    from dftflow.nscf.report import write_report

    unknown = [s for s in starts if s not in STARTS]
    if unknown or not starts:
        raise InputError(f"--start {','.join(starts)}: choose from {', '.join(STARTS)}")
    if occupancies not in ("auto", "predicted", "atomic"):
        raise InputError(f"--occupancies {occupancies!r}: auto, predicted or atomic")
    iset = with_overrides(load_inputset(inputset), overrides or {})
    if iset.engine != "gpaw":
        raise InputError(f"input set {iset.name}: nscf-eval runs GPAW only so far (VASP ICHARG=11 is to come)")
    refusal = hybrid_refusal(iset.xc)
    if refusal:
        raise InputError(f"input set {iset.name}: {refusal}")
    if "ml" in starts and (model is None or not model.exists()):
        raise InputError(f"{model}: no such checkpoint (the ml start needs a model)")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"engine": "gpaw", "model": str(model.resolve()) if model and "ml" in starts else None,
                "starts": list(starts), "inputset": inputset, "overrides": overrides or {},
                "occupancies": occupancies}
    pin_settings(out, settings)

    queue_path = out / "jobs.sqlite"
    queue = JobQueue(queue_path)
    try:
        queue.add_flows([(uid, flow_jobs(gpaw_nscf_flow(structure, uid, model=settings["model"], starts=starts,
                                                        inputset=inputset, overrides=overrides,
                                                        occupancies=occupancies)))
                         for uid, structure in materials if not queue.has_flow(uid)])
    finally:
        queue.close()
    run_workers(queue_path, out, workers, on_tick=on_tick)
    results, problems = collect(queue_path)
    matches = None
    if experimental:
        from dftflow.nscf.experimental import match

        matches = {}
        for uid, structure in materials:
            entry, reason = match(structure)
            matches[uid] = {"entry": entry.model_dump() if entry else None, "reason": reason}
    report = write_report(results, starts, out, settings={**settings, "versions": versions()}, figures=figures,
                          experimental=matches)
    queue = JobQueue(queue_path)
    try:
        report["jobs"] = queue.counts()
    finally:
        queue.close()
    report["problems"] = problems
    (out / "nscf.json").write_text(json.dumps(report, indent=2))
    return report
