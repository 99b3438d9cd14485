"""``dftflow accel-eval``: queue the arms of every material as workflows, run them, write the report.

The evaluation directory is a small project: ``jobs.sqlite`` (the arms as
jobs, so a rerun continues where it stopped and ``dftflow status``/``retry``
work on it), ``calcs/<material>/<arm>`` and the report (``accel.json``,
``accel.csv``, figures).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from dftflow.errors import InputError


def dataset_materials(dataset: Path, split: Path, task: str, subset: str = "test") -> list[tuple[str, Structure]]:
    """The structures of one subset of a task of a split (``dftflow dataset split``)."""
    from dftflow.dataset.split import load_split, task_sets
    from dftflow.dataset.store import Dataset

    sets = task_sets(load_split(split), task)
    if subset not in sets:
        raise InputError(f"{split}: task {task} has no {subset!r} set (it has {', '.join(sets)})")
    ds = Dataset(dataset)
    try:
        out = []
        for material_id in sets[subset]:
            h = ds.header(material_id)
            out.append((material_id, Structure(h["lattice"], h["numbers"], h["frac_coords"])))
        return out
    finally:
        ds.close()


def collect(queue_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(arm and prediction results, failed or lost jobs with their reasons)."""
    from dftflow.execution.queue import JobQueue

    queue = JobQueue(queue_path)
    try:
        results, problems = [], []
        for job in queue.jobs():
            out = (job["output"] or {}).get("output") if job["state"] == "COMPLETED" else None
            if out is None:
                if job["state"] in ("FAILED", "LOST"):
                    problems.append({"uid": job["flow_id"], "job": job["name"], "state": job["state"],
                                     "error": job["error"]})
                continue
            results.append({**out, "arm": out.get("arm", "predict"), "uid": job["flow_id"]})
        return results, problems
    finally:
        queue.close()


def pin_settings(out: Path, settings: dict[str, Any]) -> None:
    """Record an evaluation's settings in ``out/settings.json``; refuse a directory holding other ones."""
    path = out / "settings.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise InputError(f"{out}: an evaluation with other settings ({', '.join(changed)}) is there; "
                             "use another --out directory")
    path.write_text(json.dumps(settings, indent=2))


def accel_eval(out: Path, materials: list[tuple[str, Structure]], *, model: Path, engine: str = "gpaw",
               arms: tuple[str, ...], inputset: str | None = None, overrides: dict[str, Any] | None = None,
               nfixed: int | None = None, occupancies: str = "auto", workers: int = 1, figures: bool = True,
               profile: str | None = None, dry_run: bool = False, correction_scale: float | None = None,
               on_tick: Callable[[dict[str, int]], None] | None = None) -> dict[str, Any]:
    """Run (or continue) the evaluation in ``out`` and write its report.

    GPAW arms run here, on ``workers`` local processes. VASP arms are submitted
    to SLURM with the cluster ``profile`` (a rerun collects what has finished
    and submits what is left), like ``dftflow submit``.
    """
    from dftflow.accel.flows import gpaw_accel_flow, vasp_accel_flow
    from dftflow.accel.report import write_report
    from dftflow.execution.queue import JobQueue
    from dftflow.execution.worker import flow_jobs, run_workers

    if engine not in ("gpaw", "vasp"):
        raise InputError(f"--engine {engine}: gpaw or vasp")
    if engine == "vasp" and not profile:
        raise InputError("--engine vasp needs --profile (a cluster profile with a slurm scheduler)")
    if not model.exists():
        raise InputError(f"{model}: no such checkpoint")
    if occupancies not in ("auto", "predicted", "predicted-refresh", "refresh", "atomic"):
        raise InputError(f"--occupancies {occupancies!r}: auto, predicted, predicted-refresh, refresh or atomic")
    if "default" not in arms:
        arms = ("default", *arms)
    inputset = inputset or ("gpaw_pbe_static" if engine == "gpaw" else "ecd-pbe-static")
    nfixed = (3 if engine == "gpaw" else 5) if nfixed is None else nfixed
    out.mkdir(parents=True, exist_ok=True)
    settings = {"engine": engine, "model": str(model.resolve()), "arms": list(arms), "inputset": inputset,
                "overrides": overrides or {}, "nfixed": nfixed,
                "occupancies": occupancies if engine == "gpaw" else "vasp-atomic"}
    if correction_scale is not None:  # recorded only when set, so earlier evaluations stay comparable
        settings["correction_scale"] = correction_scale
    pin_settings(out, settings)

    def flow(uid: str, structure: Structure) -> Any:
        if engine == "gpaw":
            return gpaw_accel_flow(structure, uid, model=str(model.resolve()), arms=arms, inputset=inputset,
                                   overrides=overrides, nfixed=nfixed, occupancies=occupancies,
                                   correction_scale=correction_scale)
        return vasp_accel_flow(structure, uid, model=str(model.resolve()), arms=arms, inputset=inputset,
                               incar_overrides=overrides, nfixed=nfixed)

    queue_path = out / "jobs.sqlite"
    queue = JobQueue(queue_path)
    try:
        queue.add_flows([(uid, flow_jobs(flow(uid, structure))) for uid, structure in materials
                         if not queue.has_flow(uid)])
    finally:
        queue.close()
    launched: list[dict[str, Any]] = []
    if engine == "gpaw":
        run_workers(queue_path, out, workers, on_tick=on_tick)
    else:
        launched = submit_allocations(out, profile, dry_run=dry_run, what="accel_eval")  # type: ignore[arg-type]
    results, problems = collect(queue_path)
    if engine == "gpaw":
        from dftflow.gpaw.params import versions

        settings["versions"] = versions()
    else:
        settings["versions"] = next((r["versions"] for r in results if r.get("versions")), {})
    report = write_report(results, arms, out, settings=settings, figures=figures)
    queue = JobQueue(queue_path)
    try:
        report["jobs"] = queue.counts()
    finally:
        queue.close()
    report["problems"] = problems
    report["launched"] = launched
    (out / "accel.json").write_text(json.dumps(report, indent=2))
    return report


def submit_allocations(root: Path, profile: str, *, dry_run: bool, what: str) -> list[dict[str, Any]]:
    """Collect the finished allocations of the evaluation in ``root`` and submit SLURM allocations for its
    queued jobs (``what``: the command, recorded in ``submit.json`` for ``dftflow status``/``retry``)."""
    from dftflow.config.profile import load_profile
    from dftflow.execution.launches import Launcher

    prof = load_profile(profile)
    if prof.scheduler != "slurm" or prof.store.type != "file":
        raise InputError(f"profile {prof.name}: {what.replace('_', '-')} with VASP needs a slurm profile with "
                         "store.type file")
    if prof.engine != "embedded":
        raise InputError(f"profile {prof.name}: {what.replace('_', '-')} runs its jobs on the embedded engine, not "
                         f"on engine: {prof.engine} (docs/execution.md)")
    (root / "submit.json").write_text(json.dumps({"profile": str(profile), what: True}))
    launcher = Launcher(root, prof)
    try:
        launcher.recover()
        return launcher.launch(dry_run=dry_run)
    finally:
        launcher.close()
