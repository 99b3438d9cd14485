"""A job queue in one SQLite file: atomic claims, dependencies, and lost-job detection.

Why not a FireWorks LaunchPad on mongomock (docs/execution.md): mongomock's
file persistence rewrites one JSON file from one process, so concurrent
workers can lose updates and a ``kill -9`` mid-write can truncate the state.
SQLite gives transactions across processes, an exclusive claim
(``BEGIN IMMEDIATE``) and a journal that survives a killed writer.

States: ``WAITING`` (a parent is not complete) → ``READY`` → ``RUNNING`` →
``COMPLETED`` | ``FAILED``. A ``RUNNING`` job whose worker process is gone (same
host) or silent for longer than ``lease_s`` is *lost*: it returns to ``READY``
for another attempt, or becomes ``LOST`` after ``max_attempts``. A job stopped on
purpose (before an allocation's walltime) returns to ``READY`` with its reason, or is
``FAILED`` after ``max_attempts`` stops. Results are
accepted only from the worker that holds the claim, so a job is never recorded
twice, even if a presumed-dead worker wakes up.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dftflow.procs import pid_alive
from dftflow.sqlitetx import transaction

STATES = ("WAITING", "READY", "RUNNING", "COMPLETED", "FAILED", "LOST")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs(
    uuid TEXT PRIMARY KEY, flow_id TEXT NOT NULL, name TEXT NOT NULL, payload TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
    worker TEXT, host TEXT, pid INTEGER, created REAL NOT NULL, started REAL, heartbeat REAL,
    finished REAL, output TEXT, error TEXT, history TEXT NOT NULL DEFAULT '[]');
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created);
CREATE INDEX IF NOT EXISTS jobs_flow ON jobs(flow_id);
CREATE TABLE IF NOT EXISTS deps(child TEXT NOT NULL, parent TEXT NOT NULL, PRIMARY KEY(child, parent));
CREATE INDEX IF NOT EXISTS deps_parent ON deps(parent);
"""


@dataclass(slots=True)
class QueuedJob:
    uuid: str
    flow_id: str
    name: str
    payload: dict[str, Any]
    attempts: int = 0


@dataclass(slots=True)
class NewJob:
    uuid: str
    name: str
    payload: dict[str, Any]
    parents: list[str]


class JobQueue:
    def __init__(self, path: Path | str, *, lease_s: float = 600.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lease_s = lease_s
        self.db = sqlite3.connect(self.path, timeout=120, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.host = socket.gethostname()

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self.db)

    # -- adding work ---------------------------------------------------------
    def add_flow(self, flow_id: str, jobs: Iterable[NewJob], max_attempts: int = 3) -> int:
        """Queue a flow's jobs, atomically; a flow id already queued is left as it is. Returns jobs added."""
        with self._tx() as db:
            return self._insert_flow(db, flow_id, jobs, max_attempts, time.time())

    def add_flows(self, flows: Iterable[tuple[str, Iterable[NewJob]]], max_attempts: int = 3) -> int:
        """Queue many flows in one transaction (flow ids already queued are skipped); returns flows added."""
        now = time.time()
        with self._tx() as db:
            return sum(1 for flow_id, jobs in flows if self._insert_flow(db, flow_id, jobs, max_attempts, now))

    @staticmethod
    def _insert_flow(db: sqlite3.Connection, flow_id: str, jobs: Iterable[NewJob], max_attempts: int,
                     now: float) -> int:
        if db.execute("SELECT 1 FROM jobs WHERE flow_id=? LIMIT 1", (flow_id,)).fetchone():
            return 0
        added = 0
        for job in jobs:
            db.execute("INSERT INTO jobs(uuid, flow_id, name, payload, state, max_attempts, created) "
                       "VALUES(?,?,?,?,?,?,?)", (job.uuid, flow_id, job.name, json.dumps(job.payload),
                                                 "WAITING" if job.parents else "READY", max_attempts, now))
            db.executemany("INSERT OR IGNORE INTO deps VALUES(?,?)", [(job.uuid, p) for p in job.parents])
            added += 1
        return added

    def has_flow(self, flow_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM jobs WHERE flow_id=? LIMIT 1", (flow_id,)).fetchone() is not None

    # -- workers -------------------------------------------------------------
    def claim(self, worker: str) -> QueuedJob | None:
        """Atomically take the oldest READY job."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT uuid, flow_id, name, payload, attempts FROM jobs WHERE state='READY' "
                             "ORDER BY created, rowid LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state='RUNNING', worker=?, host=?, pid=?, started=?, heartbeat=?, "
                       "attempts=attempts+1 WHERE uuid=?", (worker, self.host, os.getpid(), now, now, row[0]))
        return QueuedJob(row[0], row[1], row[2], json.loads(row[3]), row[4] + 1)

    def _pending(self, db: sqlite3.Connection, flow_ids: list[str]) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(flow_ids))
        rows = db.execute(f"SELECT uuid, flow_id, name, payload FROM jobs WHERE flow_id IN ({marks}) "
                          "AND state IN ('READY','WAITING') ORDER BY created, rowid", flow_ids).fetchall()
        out = []
        for uuid, flow_id, name, payload in rows:
            parents = [p for (p,) in db.execute("SELECT parent FROM deps WHERE child=?", (uuid,))]
            out.append({"uuid": uuid, "flow_id": flow_id, "name": name, "payload": json.loads(payload),
                        "parents": parents})
        return out

    def pending_jobs(self, flow_ids: list[str]) -> list[dict[str, Any]]:
        """The READY and WAITING jobs of these flows, in queue order, with their parents."""
        return self._pending(self.db, list(flow_ids))

    def claim_flows(self, flow_ids: list[str], worker: str, *, external: bool = True) -> list[dict[str, Any]]:
        """Claim every pending job of these flows for one batch allocation (``worker``), atomically.

        ``external`` claims carry no host/pid/heartbeat: the allocation cannot
        report back, so only the scheduler can tell whether it is alive.
        """
        now = time.time()
        with self._tx() as db:
            jobs = self._pending(db, list(flow_ids))
            for job in jobs:
                db.execute("UPDATE jobs SET state='RUNNING', worker=?, host=?, pid=?, started=?, heartbeat=?, "
                           "attempts=attempts+1 WHERE uuid=? AND state IN ('READY','WAITING')",
                           (worker, None if external else self.host, None if external else os.getpid(),
                            now, None if external else now, job["uuid"]))
        return jobs

    def release_claims(self, worker: str, state: str, *, uuids: Iterable[str] | None = None,
                       reason: str | None = None) -> int:
        """End ``worker``'s claims: FAILED/LOST (with ``reason``), READY, or AUTO (READY or WAITING by parents)."""
        now = time.time()
        n = 0
        with self._tx() as db:
            rows = db.execute("SELECT uuid, attempts, history FROM jobs WHERE state='RUNNING' AND worker=?",
                              (worker,)).fetchall()
            wanted = set(uuids) if uuids is not None else None
            for uuid, attempts, history in rows:
                if wanted is not None and uuid not in wanted:
                    continue
                new = state
                if state == "AUTO":
                    pending = db.execute("SELECT COUNT(*) FROM deps d JOIN jobs j ON j.uuid=d.parent "
                                         "WHERE d.child=? AND j.state != 'COMPLETED'", (uuid,)).fetchone()[0]
                    new = "WAITING" if pending else "READY"
                if new in ("READY", "WAITING"):
                    attempts = max(0, attempts - 1)  # it never ran: the attempt does not count
                events = json.loads(history) + [{"time": now, "event": new.lower(), "reason": reason,
                                                 "worker": worker}]
                db.execute("UPDATE jobs SET state=?, worker=NULL, host=NULL, pid=NULL, attempts=?, finished=?, "
                           "error=?, history=? WHERE uuid=?",
                           (new, attempts, now if new in ("FAILED", "LOST") else None,
                            reason if new in ("FAILED", "LOST") else None, json.dumps(events), uuid))
                n += 1
        return n

    def heartbeat(self, uuid: str, worker: str) -> bool:
        cur = self.db.execute("UPDATE jobs SET heartbeat=? WHERE uuid=? AND state='RUNNING' AND worker=?",
                              (time.time(), uuid, worker))
        return cur.rowcount == 1

    def complete(self, uuid: str, worker: str, output: Any) -> bool:
        """Record a result; False (and nothing written) if this worker no longer holds the job."""
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET state='COMPLETED', finished=?, output=?, error=NULL "
                             "WHERE uuid=? AND state='RUNNING' AND worker=?",
                             (time.time(), json.dumps(output), uuid, worker))
            if cur.rowcount != 1:
                return False
            children = [c for (c,) in db.execute("SELECT child FROM deps WHERE parent=?", (uuid,))]
            for child in children:
                pending = db.execute(
                    "SELECT COUNT(*) FROM deps d JOIN jobs j ON j.uuid = d.parent "
                    "WHERE d.child=? AND j.state != 'COMPLETED'", (child,)).fetchone()[0]
                if pending == 0:
                    db.execute("UPDATE jobs SET state='READY' WHERE uuid=? AND state='WAITING'", (child,))
        return True

    def fail(self, uuid: str, worker: str, reason: str) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET state='FAILED', finished=?, error=? "
                             "WHERE uuid=? AND state='RUNNING' AND worker=?", (time.time(), reason, uuid, worker))
            return cur.rowcount == 1

    def requeue_stopped(self, uuid: str, worker: str, reason: str) -> bool:
        """A job ``worker`` stopped on purpose (e.g. before the walltime) goes back to READY with ``reason``.

        The attempt counts: after ``max_attempts`` stops the job is FAILED instead (``retry`` resumes it).
        False (and nothing written) if ``worker`` no longer holds the job.
        """
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT attempts, max_attempts, history FROM jobs WHERE uuid=? AND state='RUNNING' "
                             "AND worker=?", (uuid, worker)).fetchone()
            if row is None:
                return False
            attempts, max_attempts, history = row
            state = "READY" if attempts < max_attempts else "FAILED"
            if state == "FAILED":
                reason = f"{reason} (stopped in {attempts} attempts; `dftflow retry` continues it)"
            events = json.loads(history) + [{"time": now, "event": "stopped", "reason": reason, "worker": worker}]
            db.execute("UPDATE jobs SET state=?, worker=NULL, host=NULL, pid=NULL, finished=?, error=?, history=? "
                       "WHERE uuid=?", (state, now if state == "FAILED" else None, reason, json.dumps(events), uuid))
        return True

    def history(self, uuid: str) -> list[dict[str, Any]]:
        """The events of one job (lost, stopped, requeued, ...), oldest first."""
        row = self.db.execute("SELECT history FROM jobs WHERE uuid=?", (uuid,)).fetchone()
        return json.loads(row[0]) if row else []

    def detect_lost(self) -> list[str]:
        """Requeue RUNNING jobs whose worker died (this host) or went silent (any host)."""
        now = time.time()
        lost = []
        with self._tx() as db:
            for uuid, host, pid, beat, attempts, max_attempts, history in db.execute(
                    "SELECT uuid, host, pid, heartbeat, attempts, max_attempts, history FROM jobs "
                    "WHERE state='RUNNING'").fetchall():
                if host == self.host and pid is not None and not pid_alive(pid):
                    why = f"worker pid {pid} on {host} died"
                elif beat is not None and now - beat > self.lease_s:
                    why = f"no heartbeat from {host} for {now - beat:.0f} s"
                else:
                    continue
                events = json.loads(history) + [{"time": now, "event": "lost", "reason": why, "attempt": attempts}]
                state = "READY" if attempts < max_attempts else "LOST"
                db.execute("UPDATE jobs SET state=?, worker=NULL, pid=NULL, error=?, history=? WHERE uuid=?",
                           (state, f"lost: {why}", json.dumps(events), uuid))
                lost.append(uuid)
        return lost

    def retry(self, states: Iterable[str] = ("FAILED", "LOST"), flow_ids: Iterable[str] | None = None,
              reason: str | None = None) -> int:
        """Put failed/lost jobs back in the queue (their attempts are reset).

        ``flow_ids`` limits it to those structures' jobs, ``reason`` to jobs whose
        recorded error contains that text (case-insensitive), e.g. only the lost
        ones or one error class, and not the SCFs that will fail the same way again.
        """
        states = tuple(states)
        marks = ",".join("?" * len(states))
        query = f"UPDATE jobs SET state='READY', attempts=0, error=NULL WHERE state IN ({marks})"
        args: list[Any] = list(states)
        if flow_ids is not None:
            ids = list(flow_ids)
            query += f" AND flow_id IN ({','.join('?' * len(ids))})"
            args += ids
        if reason:
            query += " AND instr(lower(coalesce(error, '')), ?) > 0"
            args.append(reason.lower())
        with self._tx() as db:
            n = db.execute(query, args).rowcount
            # parents back in the queue make their waiting children wait for them again
        return n

    # -- queries -------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        out.update(dict(self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")))
        return out

    def runnable(self) -> bool:
        """Whether anything can still make progress (READY, RUNNING, or WAITING on live parents)."""
        c = self.counts()
        if c["READY"] or c["RUNNING"]:
            return True
        if not c["WAITING"]:
            return False
        blocked = self.db.execute(
            "SELECT COUNT(DISTINCT d.child) FROM deps d JOIN jobs j ON j.uuid=d.parent "
            "JOIN jobs c ON c.uuid=d.child WHERE c.state='WAITING' AND j.state IN ('FAILED','LOST')").fetchone()[0]
        return blocked < c["WAITING"]

    def outputs(self, uuids: Iterable[str]) -> dict[str, Any]:
        out = {}
        for uuid in uuids:
            row = self.db.execute("SELECT output FROM jobs WHERE uuid=? AND state='COMPLETED'", (uuid,)).fetchone()
            if row is not None:
                out[uuid] = json.loads(row[0])
        return out

    def payloads(self) -> dict[str, Any]:
        """Every job's stored jobflow form (``Job.as_dict``), by uuid."""
        return {u: json.loads(p) for u, p in self.db.execute("SELECT uuid, payload FROM jobs")}

    def jobs(self, flow_id: str | None = None) -> list[dict[str, Any]]:
        query = ("SELECT uuid, flow_id, name, state, attempts, error, started, finished, output FROM jobs"
                 + (" WHERE flow_id=?" if flow_id else "") + " ORDER BY created, rowid")
        rows = self.db.execute(query, (flow_id,) if flow_id else ())
        return [{"uuid": u, "flow_id": f, "name": n, "state": s, "attempts": a, "error": e,
                 "started": st, "finished": fi, "output": json.loads(o) if o else None}
                for u, f, n, s, a, e, st, fi, o in rows]
