"""Move a project of the embedded engine (``jobs.sqlite``) onto the LaunchPad of an ``engine: fireworks`` profile.

Every workflow in the project's queue becomes the FireWorks workflow that
``submit`` would have added for it: the same jobflow jobs (rebuilt from their
stored form, same uuids, so the same job directories ``calcs/<uid>/<job>-<uuid>/``)
converted by jobflow's bridge, claimed once per structure like ``submit``'s
(:func:`dftflow.execution.fw_engine.add_workflows`).

* A COMPLETED job keeps its result: its output document goes to the
  workflow's output store (``outputs/<uid>.json``, where its children read
  it) and its firework is completed on the LaunchPad through FireWorks' own
  ``checkout_fw`` / ``complete_launch``, with a launch in its job directory
  whose message says where it ran. Its children become READY as FireWorks
  decides, and ``status`` shows it with its energy like any other.
* Everything else (READY, WAITING, FAILED, LOST) is queued: the next
  ``submit`` runs it. A relaxation interrupted before continues from the
  CONTCAR in its directory.
* A job still RUNNING in an embedded allocation stops the move (``status``
  settles it once the allocation has ended); nothing is changed then.

Running it again adds nothing: structures already claimed are skipped and a
firework already completed is left alone. A crash half-way (on MongoDB; a
mongomock opening is all or nothing) is finished by running it again.
``jobs.sqlite`` is kept, read-only from then on, and ``submit.json`` names the
FireWorks profile, so ``status``, ``retry``, ``submit`` and ``harvest`` use
the LaunchPad.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from dftflow.config.profile import load_profile
from dftflow.errors import InputError
from dftflow.execution import fw_engine
from dftflow.execution.fw_launchpad import open_launchpad
from dftflow.execution.queue import JobQueue

PENDING = ("READY", "WAITING", "FAILED", "LOST")


def _settings(root: Path) -> dict[str, Any]:
    path = root / "submit.json"
    if not (root / "jobs.sqlite").exists():
        raise InputError(f"{root / 'jobs.sqlite'}: not found; fw-migrate moves a project of the embedded engine")
    if not path.exists():
        raise InputError(f"{path}: not found; fw-migrate moves projects made by `dftflow submit` "
                         "(a build-dataset project runs its jobs on local workers)")
    settings = json.loads(path.read_text())
    if settings.get("engine", "embedded") == "fireworks" and "migrated_from" not in settings:
        raise InputError(f"{path}: this project was submitted to the fireworks engine; there is nothing to move")
    return settings


def _recover_embedded(root: Path, settings: dict[str, Any], env: dict[str, str] | None) -> None:
    """Read back what the project's embedded allocations left, before the queue is read (a first move only)."""
    if settings.get("engine", "embedded") != "embedded":
        return
    from dftflow.execution.launches import Launcher

    launcher = Launcher(root, load_profile(settings["profile"]), env=env)
    try:
        launcher.recover()
    finally:
        launcher.close()


def _write_documents(root: Path, uid: str, docs: list[dict[str, Any]]) -> None:
    store = fw_engine.job_store(root, uid)
    store.connect()
    try:
        for doc in docs:
            store.docs_store.update(doc, key=["uuid", "index"])
    finally:
        store.close()


def _complete(lp: Any, fw: dict[str, Any], job: dict[str, Any], fworker: Any) -> bool:
    """Complete a READY firework with the result the embedded engine recorded; False if it is not READY."""
    from fireworks import FWAction

    fw_id, launch_id = lp.checkout_fw(fworker, fw["spec"]["_dftflow"]["dir"], fw_id=fw["fw_id"])
    if launch_id is None:
        return False
    message = (f"ran on the embedded engine (jobs.sqlite, {job['attempts']} attempt(s)); moved to the LaunchPad "
               "by dftflow fw-migrate")
    lp.complete_launch(launch_id, FWAction(stored_data={"_message": message, "dftflow_migrated": True}),
                       "COMPLETED")
    return True


def migrate(root: Path, profile_ref: str, *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Queue on the profile's LaunchPad what the embedded project has not run; keep what it completed.

    Returns how many workflows were added, fireworks completed from the embedded results,
    and fireworks left to run.
    """
    from jobflow import Flow
    from monty.json import MontyDecoder

    root = Path(root).resolve()
    profile = load_profile(profile_ref)
    if profile.engine != "fireworks" or profile.fireworks is None:
        raise InputError(f"profile {profile.name}: engine is {profile.engine}; fw-migrate needs a profile with "
                         "engine: fireworks")
    settings = _settings(root)
    _recover_embedded(root, settings, env)
    queue = JobQueue(root / "jobs.sqlite")
    try:
        jobs = queue.jobs()
        payloads = queue.payloads()
    finally:
        queue.close()
    running = sorted({j["flow_id"] for j in jobs if j["state"] == "RUNNING"})
    if running:
        raise InputError(f"{root / 'jobs.sqlite'}: jobs of {len(running)} workflow(s) are still RUNNING in "
                         f"embedded allocations ({', '.join(running[:5])}{', ...' if len(running) > 5 else ''}); "
                         f"run `dftflow status -p {root}` after they end, then fw-migrate again")
    flows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for job in jobs:
        flows[job["flow_id"]].append(job)
    for uid, members in flows.items():
        docs = [j["output"] for j in members if j["state"] == "COMPLETED" and j["output"]]
        if docs:
            _write_documents(root, uid, docs)

    def builder(members: list[dict[str, Any]]) -> Any:
        def build() -> Any:
            jobs_ = [MontyDecoder().process_decoded(payloads[j["uuid"]]) for j in members]
            for job in jobs_:
                job.hosts = []  # the stored form names the flow it was made in; this one replaces it
            return Flow(jobs_, name=members[0]["flow_id"])

        return build

    completed = 0
    key = fw_engine.project_key(root)
    with open_launchpad(profile.fireworks, root) as lp:
        from fireworks import FWorker  # after the opening: a mongomock LaunchPad chooses FireWorks' client

        fworker = FWorker(name=profile.fireworks.fworker, query={"spec._dftflow.project": key})
        added = fw_engine.add_workflows(lp, root, [(uid, builder(members)) for uid, members in flows.items()])
        for job in jobs:  # queue order: a parent before its children
            if job["state"] != "COMPLETED":
                continue
            fw = lp.fireworks.find_one({"spec._dftflow.project": key, "spec._dftflow.job_uuid": job["uuid"]},
                                       {"fw_id": 1, "state": 1, "spec._dftflow": 1})
            if fw is not None and fw["state"] == "READY":
                completed += _complete(lp, fw, job, fworker)
        left = lp.fireworks.count_documents({"spec._dftflow.project": key, "state": {"$ne": "COMPLETED"}})
    moved = {"engine": "embedded", "profile": settings["profile"], "time": time.time()}
    new = {**settings, "profile": str(profile_ref), "engine": "fireworks",
           "migrated_from": settings.get("migrated_from", moved)}
    (root / "submit.json").write_text(json.dumps(new))
    return {"workflows_added": added, "completed_from_embedded": completed, "to_run": left,
            "workflows": len(flows), "jobs": len(jobs)}
