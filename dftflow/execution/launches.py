"""Run a project's workflows on SLURM with the embedded store: queue launches, offline rockets, recovery.

The project's ``jobs.sqlite`` has one writer, the submit host. ``launch``
claims the pending jobs of up to ``pack`` workflows, writes them with the
outputs of their finished parents into ``launches/<id>/launch.json`` and
submits a batch script (FireWorks' ``qlaunch`` with many rockets per
allocation, in its offline mode). On the compute node ``dftflow rocket`` runs
those jobs one after the other and leaves, per job, ``results/<uuid>.json``
(written atomically) — it never opens the store. ``recover`` (run by
``dftflow status``, ``submit`` and ``retry``, like ``lpad recover_offline``)
reads the result files into the store and settles allocations that ended:
the job that was running when SLURM stopped an allocation is FAILED with the
SLURM state (TIMEOUT, ...) or LOST (NODE_FAIL, CANCELLED, PREEMPTED, or an
allocation that vanished without a trace), and jobs that never started go back
to the queue. A job the rocket stopped cleanly before the walltime (custodian's
STOPCAR) is put back in the queue with its reason, to continue in the next
allocation; the rocket starts no job with less than the stop margin left.
A job is claimed by exactly one launch at a time and a result is accepted
only from the launch that holds the claim, so N allocations never lose or
duplicate work.
"""

from __future__ import annotations

import json
import os
import time
import traceback
import uuid as uuidlib
from pathlib import Path
from typing import Any

from dftflow.config.profile import ClusterProfile, stop_margin_s
from dftflow.execution.queue import JobQueue
from dftflow.execution.slurm import ACTIVE_STATES, final_state, job_script, job_state_after, queue_states, sbatch

_LAUNCHES = """
CREATE TABLE IF NOT EXISTS launches(
    launch_id TEXT PRIMARY KEY, slurm_id TEXT, dir TEXT NOT NULL, flows TEXT NOT NULL, jobs TEXT NOT NULL,
    state TEXT NOT NULL, submitted REAL NOT NULL, finished REAL, slurm_state TEXT, reason TEXT);
"""
_ROCKET_LOG = "rocket.json"  # in the launch directory: why the rocket stopped starting jobs, if it did


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class Launcher:
    """Submit-host side: launches on SLURM and recovery of their results."""

    def __init__(self, project: Path, profile: ClusterProfile, *, env: dict[str, str] | None = None) -> None:
        self.root = Path(project).resolve()
        self.profile = profile
        self.env = env
        self.queue = JobQueue(self.root / "jobs.sqlite")
        self.queue.db.executescript(_LAUNCHES)

    def close(self) -> None:
        self.queue.close()

    # -- submitting ----------------------------------------------------------
    def active(self) -> list[tuple[str, str]]:
        return list(self.queue.db.execute("SELECT launch_id, slurm_id FROM launches WHERE state='SUBMITTED'"))

    def launch(self, *, max_new: int | None = None, dry_run: bool = False) -> list[dict[str, Any]]:
        """Submit allocations for pending workflows, at most ``max_queued`` active at once."""
        assert self.profile.slurm is not None
        room = self.profile.slurm.max_queued - len(self.active())
        if max_new is not None:
            room = min(room, max_new)
        made = []
        while room > 0:
            flows = [f for (f,) in self.queue.db.execute(
                "SELECT flow_id FROM jobs GROUP BY flow_id HAVING SUM(state='READY') > 0 "
                "AND SUM(state='RUNNING') = 0 ORDER BY MIN(created) LIMIT ?", (self.profile.pack,))]
            if not flows:
                break
            made.append(self._launch(flows, dry_run=dry_run))
            room -= 1
            if dry_run:
                break
        return made

    def _launch(self, flows: list[str], *, dry_run: bool) -> dict[str, Any]:
        launch_id = time.strftime("%Y%m%d-%H%M%S-") + uuidlib.uuid4().hex[:8]
        worker = f"slurm:{launch_id}"
        directory = self.root / "launches" / launch_id
        (directory / "results").mkdir(parents=True, exist_ok=True)
        jobs = self.queue.claim_flows(flows, worker, external=True) if not dry_run else \
            self.queue.pending_jobs(flows)
        parents = {p for j in jobs for p in j["parents"]} - {j["uuid"] for j in jobs}
        spec = {"launch_id": launch_id, "worker": worker, "root": str(self.root),
                "commands": self.profile.commands, "jobs": jobs,
                "parent_outputs": self.queue.outputs(parents)}
        _write_json(directory / "launch.json", spec)
        script = directory / "job.sh"
        script.write_text(job_script(self.profile, directory, job_name=f"dftflow-{launch_id[-8:]}"))
        if dry_run:
            return {"launch_id": launch_id, "dir": str(directory), "flows": flows, "jobs": len(jobs), "slurm_id": None}
        try:
            slurm_id = sbatch(script, env=self.env)
        except BaseException:
            self.queue.release_claims(worker, "READY")  # nothing was submitted: the jobs are free again
            raise
        self.queue.db.execute("INSERT INTO launches VALUES(?,?,?,?,?,?,?,?,?,?)",
                              (launch_id, slurm_id, str(directory), json.dumps(flows),
                               json.dumps([j["uuid"] for j in jobs]), "SUBMITTED", time.time(), None, None, None))
        return {"launch_id": launch_id, "dir": str(directory), "flows": flows, "jobs": len(jobs), "slurm_id": slurm_id}

    # -- recovering ----------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """Apply result files of all active launches and settle the ones whose allocation ended."""
        active = self.active()
        states = queue_states([s for _, s in active], env=self.env)
        applied = settled = 0
        for launch_id, slurm_id in active:
            directory = self.root / "launches" / launch_id
            worker = f"slurm:{launch_id}"
            # squeue was asked before the files are read: an allocation missing from it has
            # written everything it will, so one pass over its results is complete
            applied += self._apply_results(directory, worker)
            if slurm_id in states:
                continue  # pending or running
            end = final_state(slurm_id, env=self.env)
            if end in ACTIVE_STATES:
                continue  # sacct still has it running: squeue missed it, ask again next time
            self._settle(directory, worker, slurm_id, end)
            self.queue.db.execute("UPDATE launches SET state='DONE', finished=?, slurm_state=? WHERE launch_id=?",
                                  (time.time(), end, launch_id))
            settled += 1
        return {"applied": applied, "settled": settled, "active": len(active) - settled}

    def _apply_results(self, directory: Path, worker: str) -> int:
        n = 0
        for path in sorted((directory / "results").glob("*.json")):
            result = json.loads(path.read_text())
            if result["state"] == "COMPLETED":
                ok = self.queue.complete(result["uuid"], worker, result["output"])
            elif result["state"] == "FAILED":
                ok = self.queue.fail(result["uuid"], worker, result["reason"])
            elif result["state"] == "STOPPED":
                ok = self.queue.requeue_stopped(result["uuid"], worker, result["reason"])
            else:
                continue
            n += int(ok)
        return n

    def _settle(self, directory: Path, worker: str, slurm_id: str, end: str) -> None:
        """Jobs the allocation still holds: the one it was running fails (or is lost), the rest are freed."""
        log = directory / _ROCKET_LOG
        why = json.loads(log.read_text()).get("stopped") if log.exists() else None
        for (uuid_,) in self.queue.db.execute(
                "SELECT uuid FROM jobs WHERE state='RUNNING' AND worker=?", (worker,)).fetchall():
            was_running = (directory / "results" / f"{uuid_}.started").exists()
            if not was_running:
                self.queue.release_claims(worker, "AUTO", uuids=[uuid_],
                                          reason=f"not started in SLURM job {slurm_id} ({end})"
                                          + (f": {why}" if why else ""))
            elif job_state_after(end) == "LOST":
                self.queue.release_claims(worker, "LOST", uuids=[uuid_],
                                          reason=f"lost: SLURM job {slurm_id} ended {end} while it ran")
            else:
                what = "reached its time limit (TIMEOUT)" if end == "TIMEOUT" else f"ended {end}"
                self.queue.release_claims(worker, "FAILED", uuids=[uuid_],
                                          reason=f"SLURM job {slurm_id} {what} while this job ran")

    def launches(self) -> list[dict[str, Any]]:
        rows = self.queue.db.execute("SELECT launch_id, slurm_id, state, slurm_state, flows, submitted, finished "
                                     "FROM launches ORDER BY submitted")
        return [{"launch_id": a, "slurm_id": b, "state": c, "slurm_state": d, "flows": json.loads(e),
                 "submitted": f, "finished": g} for a, b, c, d, e, f, g in rows]


def rocket(launch_dir: Path) -> int:
    """Compute-node side: run the jobs of one launch in order, one result file each; returns the failures.

    A job stopped cleanly before the walltime is not a failure: its result says STOPPED
    and the rocket ends (the allocation's time is up), as it does when less than the
    stop margin is left before a job would start.
    """
    from dftflow.execution.worker import execute_job, job_dir_for

    launch_dir = Path(launch_dir).resolve()
    spec = json.loads((launch_dir / "launch.json").read_text())
    os.environ["DFTFLOW_VASP_COMMANDS"] = json.dumps(spec.get("commands") or {})
    root = Path(spec["root"])
    results = launch_dir / "results"
    outputs: dict[str, Any] = dict(spec["parent_outputs"])
    unfinished: set[str] = set()  # failed (or stopped) here: their children do not run in this launch
    failures = 0
    margin = stop_margin_s()
    end = _job_end()
    (launch_dir / _ROCKET_LOG).unlink(missing_ok=True)  # from an earlier run of this launch (requeued)
    for job in spec["jobs"]:
        done = results / f"{job['uuid']}.json"
        if done.exists():  # the same launch run again (requeued by SLURM)
            res = json.loads(done.read_text())
            if res["state"] == "COMPLETED":
                outputs[job["uuid"]] = res["output"]
            else:
                unfinished.add(job["uuid"])
                failures += res["state"] == "FAILED"
            continue
        if unfinished & set(job["parents"]):
            unfinished.add(job["uuid"])
            continue  # stays claimed: recovery returns it to the queue behind its unfinished parent
        if end is not None and end - time.time() < margin:
            # too little time left to start: recovery puts this job and the rest back in the queue
            _write_json(launch_dir / _ROCKET_LOG, {"stopped": f"{end - time.time():.0f} s left in the allocation, "
                                                              f"less than the stop margin of {margin:.0f} s"})
            break
        started = time.time()
        (results / f"{job['uuid']}.started").write_text(str(started))
        workdir = job_dir_for(root, job["flow_id"], job["name"], job["uuid"])
        # custodian's WalltimeHandler times its wall_time from CUSTODIAN_WALLTIME_START, which the
        # first handler of this process sets: without this, later jobs would be stopped too early
        os.environ.pop("CUSTODIAN_WALLTIME_START", None)
        try:
            doc = execute_job(job["payload"], {p: outputs[p] for p in job["parents"] if p in outputs}, workdir)
        except Exception as exc:  # noqa: BLE001 - recorded with its reason; the next workflow goes on
            stopped = _stopped_before_walltime(workdir, started, end)
            if stopped is None:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                _write_json(done, {"uuid": job["uuid"], "state": "FAILED", "reason": first})
                workdir.mkdir(parents=True, exist_ok=True)
                (workdir / "error.txt").write_text(traceback.format_exc(limit=8))
                unfinished.add(job["uuid"])
                failures += 1
                continue
        else:
            stopped = _stopped_before_walltime(workdir, started, end)
            if stopped is None:
                outputs[job["uuid"]] = doc
                _write_json(done, {"uuid": job["uuid"], "state": "COMPLETED", "output": doc})
                continue
        # stopped by the STOPCAR: what VASP wrote is an interrupted run, not a result
        _write_json(done, {"uuid": job["uuid"], "state": "STOPPED", "reason": stopped, "job_end": end})
        _write_json(launch_dir / _ROCKET_LOG, {"stopped": f"{job['name']} was stopped before the walltime"})
        break
    return failures


def _job_end() -> float | None:
    """When the allocation ends (``DFTFLOW_JOB_END``, epoch seconds, set by the batch script)."""
    end = os.environ.get("DFTFLOW_JOB_END")
    return float(end) if end else None


def _stopped_before_walltime(workdir: Path, started: float, end: float | None) -> str | None:
    """Why a job was stopped cleanly before the walltime, or None if it was not.

    custodian's ``WalltimeHandler`` writes a STOPCAR into the job directory when the
    time left runs short; VASP then ends at its next ionic step, and what it wrote is
    an interrupted run, not a result. Only a STOPCAR written during this attempt and
    while VASP still ran counts: custodian checks its handlers once more after VASP
    has ended, and a STOPCAR written then (VASP's last output is older) stopped nothing.
    """
    stopcar = workdir / "STOPCAR"
    if not stopcar.exists():
        return None
    written = stopcar.stat().st_mtime
    outputs = [p.stat().st_mtime for p in (workdir / n for n in ("vasprun.xml", "OUTCAR", "OSZICAR")) if p.exists()]
    if written < started - 1 or (outputs and max(outputs) < written):
        return None
    before = f" {end - written:.0f} s before the allocation's end" if end is not None else ""
    return (f"stopped cleanly: STOPCAR ({stopcar.read_text().strip()}) written{before}; "
            "continues in the next allocation")
