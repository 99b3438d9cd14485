"""The FireWorks engine: the same jobflow flows as workflows on a LaunchPad (``engine: fireworks``).

Each flow is converted by jobflow's bridge (``flow_to_workflow``); its jobs write
their output documents to a maggma ``JSONStore`` of the workflow,
``<project>/outputs/<uid>.json`` (:mod:`dftflow.execution.fw_store`; densities stay in the job directories, the
documents hold their paths). A workflow's jobs run one after the other (relax →
static → HSE), so that file has one writer at a time.

A structure's workflow is added once. Every firework carries
``spec._dftflow = {project, uid, job_uuid, dir}``, and before converting anything
``add_workflows`` claims the key ``<project>|<uid>`` in the LaunchPad's
``dftflow_workflows`` collection with ``insert_one`` on ``_id``: a key already
there is skipped, and on MongoDB two ``submit``s racing for the same structure
get one ``DuplicateKeyError`` and one workflow. On a mongomock LaunchPad the
openings are serialised by the file lock (:mod:`dftflow.execution.fw_launchpad`).
A claim whose workflow was never inserted (the submit died in between) is
taken over after ``STALE_CLAIM_S``.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dftflow.execution.dft_stage import job_row
from dftflow.execution.worker import job_dir_for

STATES = ("WAITING", "READY", "RESERVED", "RUNNING", "COMPLETED", "FIZZLED", "DEFUSED", "PAUSED", "ARCHIVED")
FAILED_STATES = ("FIZZLED", "DEFUSED")
STALE_CLAIM_S = 900.0
CLAIMS = "dftflow_workflows"


def project_key(root: Path) -> str:
    """The project's name on a shared LaunchPad: its directory."""
    return str(Path(root).resolve())


def outputs_file(root: Path, uid: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in uid)
    return Path(root).resolve() / "outputs" / f"{safe}.json"


def job_store(root: Path, uid: str) -> Any:
    from jobflow import JobStore

    from dftflow.execution.fw_store import AtomicJSONStore

    path = outputs_file(root, uid)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JobStore(AtomicJSONStore(str(path), read_only=False))




def to_workflow(flow: Any, root: Path, uid: str) -> Any:
    """A jobflow flow as a FireWorks workflow of this project, each firework tagged and given its directory."""
    from jobflow.managers.fireworks import flow_to_workflow

    key = project_key(root)
    wf = flow_to_workflow(flow, job_store(root, uid), name=uid,
                          metadata={"dftflow_key": f"{key}|{uid}", "dftflow_project": key, "dftflow_uid": uid})
    for fw in wf.fws:
        job = fw.tasks[0]["job"]
        fw.spec["_dftflow"] = {"project": key, "uid": uid, "job_uuid": job.uuid,
                               "dir": str(job_dir_for(Path(root).resolve(), uid, job.name, job.uuid))}
    return wf


def _claim(lp: Any, key: str, uid: str, now: float) -> bool:
    from pymongo.errors import DuplicateKeyError

    claims = lp.db[CLAIMS]
    try:
        claims.insert_one({"_id": f"{key}|{uid}", "project": key, "uid": uid, "state": "adding", "time": now})
        return True
    except DuplicateKeyError:
        pass
    # a claim left by a submit that died before inserting its workflow is taken over, atomically
    stale = claims.find_one({"_id": f"{key}|{uid}", "state": "adding", "time": {"$lt": now - STALE_CLAIM_S}})
    if stale is None or lp.workflows.find_one({"metadata.dftflow_key": f"{key}|{uid}"}, {"_id": 1}):
        return False
    return claims.find_one_and_update({"_id": stale["_id"], "time": stale["time"]}, {"$set": {"time": now}}) \
        is not None


def add_workflows(lp: Any, root: Path, items: Iterable[tuple[str, Callable[[], Any]]]) -> int:
    """Add the workflow ``build()`` of every ``(uid, build)`` whose structure has none yet; returns how many.

    Flows are built only for structures not yet claimed; all new workflows go in with one
    ``bulk_add_wfs``.
    """
    key = project_key(root)
    claims = lp.db[CLAIMS]
    known = {d["uid"] for d in claims.find({"project": key, "state": "added"}, {"uid": 1})}
    now = time.time()
    mine: list[str] = []
    wfs = []
    try:
        for uid, build in items:
            if uid in known or uid in mine or not _claim(lp, key, uid, now):
                continue
            mine.append(uid)
            wfs.append(to_workflow(build(), root, uid))
        if wfs:
            with contextlib.redirect_stderr(io.StringIO()):  # bulk_add_wfs draws a tqdm bar
                lp.bulk_add_wfs(wfs)
    except BaseException:
        claims.delete_many({"_id": {"$in": [f"{key}|{u}" for u in mine]}, "state": "adding"})
        raise
    claims.update_many({"_id": {"$in": [f"{key}|{u}" for u in mine]}}, {"$set": {"state": "added"}})
    return len(wfs)


def fizzle_reason(launch: dict[str, Any] | None) -> str | None:
    """Why a launch fizzled, in one line: the exception's last line, or the message recorded with it."""
    if not launch:
        return None
    data = (launch.get("action") or {}).get("stored_data") or {}
    trace = ((data.get("_exception") or {}).get("_stacktrace") or "").strip()
    if trace:
        return trace.splitlines()[-1]
    return data.get("_message")


def _project_fireworks(lp: Any, root: Path, query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    q = {"spec._dftflow.project": project_key(root), **(query or {})}
    docs = lp.fireworks.find(q, {"fw_id": 1, "name": 1, "state": 1, "launches": 1, "archived_launches": 1,
                                 "spec._dftflow": 1})
    return sorted(docs, key=lambda d: d["fw_id"])


def _documents(root: Path, uid: str, cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if uid not in cache:
        path = outputs_file(root, uid)
        try:
            docs = json.loads(path.read_text()) if path.exists() else []
        except json.JSONDecodeError:
            docs = []  # being rewritten by a rocket: its job is not COMPLETED on the LaunchPad yet
        cache[uid] = {d["uuid"]: d for d in docs if isinstance(d, dict) and "uuid" in d}
    return cache[uid]


def rows(lp: Any, root: Path) -> list[dict[str, Any]]:
    """Per firework of the project: the same row as the embedded engine's ``results``, with FireWorks' state."""
    cache: dict[str, dict[str, Any]] = {}
    fireworks = _project_fireworks(lp, root)
    last = [fw["launches"][-1] for fw in fireworks if fw.get("launches")]
    launches = {d["launch_id"]: d for d in lp.launches.find(
        {"launch_id": {"$in": last}}, {"launch_id": 1, "action": 1, "runtime_secs": 1})} if last else {}
    out = []
    for fw in fireworks:
        tag = fw["spec"]["_dftflow"]
        launch = launches.get(fw["launches"][-1]) if fw.get("launches") else None
        doc = _documents(root, tag["uid"], cache).get(tag["job_uuid"]) if fw["state"] == "COMPLETED" else None
        seconds = launch.get("runtime_secs") if launch else None
        error = fizzle_reason(launch) if fw["state"] == "FIZZLED" else None
        row = job_row(tag["uid"], fw["name"], fw["state"], len(fw.get("launches") or [])
                      + len(fw.get("archived_launches") or []), doc, seconds, error)
        row.update({"fw_id": fw["fw_id"], "job_uuid": tag["job_uuid"], "output": (doc or {}).get("output")})
        out.append(row)
    return out


def counts(rows_: list[dict[str, Any]]) -> dict[str, int]:
    found = Counter(r["state"] for r in rows_)
    return {**dict.fromkeys(STATES, 0), **found}


def retry(lp: Any, root: Path) -> int:
    """Rerun the project's fizzled fireworks (their children wait for them again); returns how many."""
    fizzled = _project_fireworks(lp, root, {"state": "FIZZLED"})
    for fw in fizzled:
        lp.rerun_fw(fw["fw_id"])
    return len(fizzled)
