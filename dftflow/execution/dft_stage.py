"""The ``dft`` stage of build-dataset: queue a flow per structure and run it locally."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from dftflow.catalog import Catalog
from dftflow.config.recipe import DftSettings
from dftflow.errors import ConfigError
from dftflow.execution.queue import JobQueue
from dftflow.execution.worker import flow_jobs, run_workers
from dftflow.project import Project
from dftflow.sources.records import unpack


def _targets(catalog: Catalog, settings: DftSettings) -> list[str]:
    if settings.structures == "kept":
        uids = [u for (u,) in catalog.db.execute(
            "SELECT uid FROM outcomes WHERE filter='dedup' AND status='pass' ORDER BY uid")]
    else:
        uids = catalog.selection(settings.structures.split(":", 1)[1])
    return uids[: settings.limit] if settings.limit else uids


def queue_flows(project: Project, catalog: Catalog, settings: DftSettings) -> dict[str, Any]:
    """Add a flow for every target structure not queued yet (idempotent)."""
    from dftflow.flows.dataset import dataset_flow

    queue = JobQueue(project.root / "jobs.sqlite")
    hybrid_set = set(catalog.selection(settings.hybrid_selection)) if settings.hybrid_selection else None
    added = skipped = 0
    try:
        for uid in _targets(catalog, settings):
            if queue.has_flow(uid):
                skipped += 1
                continue
            structure = unpack(json.loads(catalog.get(uid)["data"]))
            if settings.primitive:
                structure = structure.get_primitive_structure()
            hybrid = settings.hybrid if (hybrid_set is None or uid in hybrid_set) else None
            flow = dataset_flow(structure, uid, static=settings.static, relax=settings.relax, hybrid=hybrid,
                                overrides=settings.overrides, engine=settings.engine)
            queue.add_flow(uid, flow_jobs(flow), max_attempts=settings.max_attempts)
            added += 1
    finally:
        queue.close()
    return {"flows_added": added, "flows_already_queued": skipped}


def run_dft(project: Project, catalog: Catalog, settings: DftSettings, *, workers: int,
            on_tick: Callable[[dict[str, int]], None] | None = None) -> dict[str, Any]:
    queued = queue_flows(project, catalog, settings)
    changed = changed_settings(project)
    requeued = 0
    if changed:
        first = changed[0]
        if settings.on_settings_change == "refuse":
            raise ConfigError(
                f"{project.root}: {len(changed)} finished calculation(s) used other settings than their input "
                f"sets give now (first: {first['uid']} {first['job']}: {first['change']}); set "
                "dft.on_settings_change: requeue to redo them with the current settings, or restore the input sets")
        queue = JobQueue(project.root / "jobs.sqlite")
        try:
            requeued = queue.retry(states=("COMPLETED",), flow_ids=sorted({c["uid"] for c in changed}))
        finally:
            queue.close()
    counts = run_workers(project.root / "jobs.sqlite", project.root, workers, on_tick=on_tick)
    rows = results(project)
    return {**queued, "requeued_changed_settings": requeued, "jobs": counts, "results": rows, "cost": cost(rows)}


def _difference(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    """The first parameter that differs, as 'key: old -> new'."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                return _difference(a, b, f"{prefix}{key}.")
            return f"{prefix}{key}: {a!r} -> {b!r}"
    return "parameters differ"


def changed_settings(project: Project) -> list[dict[str, str]]:
    """Finished GPAW calculations whose recorded parameters differ from what their input set gives now.

    Every job records the GPAW parameters it ran with (``parameters``, ``parameters_hash``); they are
    resolved again from the job's input set, overrides and structure. An edited input set or U table
    (or a new dftflow that resolves them differently) shows up here instead of mixing two settings
    in one dataset without a word.
    """
    from pymatgen.core import Structure

    from dftflow.gpaw.params import gpaw_parameters, params_hash, to_atoms
    from dftflow.inputsets import load_inputset, with_overrides

    path = project.root / "jobs.sqlite"
    if not path.exists():
        return []
    queue = JobQueue(path)
    try:
        rows = queue.db.execute("SELECT flow_id, name, payload, output FROM jobs WHERE state='COMPLETED' "
                                "ORDER BY created, rowid").fetchall()
    finally:
        queue.close()
    sets: dict[str, Any] = {}
    changed = []
    for flow_id, name, payload, output in rows:
        out = (json.loads(output) if output else {}).get("output") or {}
        maker = json.loads(payload).get("function", {}).get("@bound", {}) if payload else {}
        if not out.get("parameters_hash") or not out.get("structure") or not out.get("inputset"):
            continue  # not a GPAW calculation of this kind (a VASP job, an old record)
        reference = maker.get("inputset") or out["inputset"]  # as the recipe gave it: a name or a path
        key = json.dumps([reference, maker.get("overrides") or {}], sort_keys=True)
        if key not in sets:
            sets[key] = with_overrides(load_inputset(reference), maker.get("overrides") or {})
        structure = Structure.from_dict(out["structure"])
        now = gpaw_parameters(to_atoms(structure, sets[key]), sets[key])
        if params_hash(now) != out["parameters_hash"]:
            changed.append({"uid": flow_id, "job": name,
                            "change": _difference(out.get("parameters") or {}, now)})
    return changed


def cost(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the calculations cost: wall seconds per structure (median, mean, slowest) and core-hours in all.

    Failed jobs count with the time they ran (``seconds`` of the queue's start and finish), since that
    time is spent too; runs are single-threaded, so wall time is core time.
    """
    import statistics

    done = [r["wall_s"] for r in rows if r["state"] == "COMPLETED" and r.get("wall_s") is not None]
    spent = sum(r.get("seconds") or 0.0 for r in rows)
    if not done:
        return {"completed": 0, "core_hours": round(spent / 3600, 3)}
    return {"completed": len(done), "failed": sum(r["state"] in ("FAILED", "LOST") for r in rows),
            "median_s": round(statistics.median(done), 1), "mean_s": round(statistics.fmean(done), 1),
            "max_s": round(max(done), 1), "core_hours": round(spent / 3600, 3)}


def results(project: Project) -> list[dict[str, Any]]:
    """Per job: structure, calculation, state, energy, SCF iterations, electron count, wall time or failure."""
    path = project.root / "jobs.sqlite"
    if not path.exists():
        return []
    queue = JobQueue(path)
    try:
        return [job_row(job["flow_id"], job["name"], job["state"], job["attempts"], job["output"],
                        (job["finished"] - job["started"]) if job["finished"] and job["started"] else None,
                        job["error"]) for job in queue.jobs()]
    finally:
        queue.close()


def job_row(uid: str, name: str, state: str, attempts: int, document: dict[str, Any] | None,
            seconds: float | None, error: str | None) -> dict[str, Any]:
    """One row of ``dftflow status``: a job's state and what its output document says (any engine)."""
    out = (document or {}).get("output") or {}
    return {"uid": uid, "job": name, "state": state, "attempts": attempts,
            "energy": out.get("energy"), "n_scf": out.get("n_scf"), "ionic_steps": out.get("ionic_steps"),
            "electrons": out.get("integrated_electrons"), "expected": out.get("nvalence"),
            "magmom": out.get("magmom"), "wall_s": out.get("wall_s"), "dir": out.get("dir"),
            "seconds": seconds, "error": error}
