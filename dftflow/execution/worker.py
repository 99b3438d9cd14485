"""Local workers: run queued jobflow jobs, one process each, with heartbeats.

A worker claims a job, rebuilds the jobflow ``Job`` from its stored form,
fills an in-memory ``JobStore`` with the outputs of the job's parents (so that
``OutputReference``s resolve), runs it in its own directory and records the
output document. Densities and other large files stay in the job directory;
only their paths and small results enter the queue database.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dftflow.execution.queue import JobQueue, NewJob, QueuedJob
from dftflow.procs import pid_alive


def flow_jobs(flow: Any) -> list[NewJob]:
    """The jobs of a jobflow ``Flow`` as queue entries (parents from their input references)."""
    from monty.json import jsanitize

    out = []
    for job in flow.jobs:
        payload = jsanitize(job.as_dict(), strict=True, enum_values=True, allow_bson=False)
        out.append(NewJob(job.uuid, job.name, payload, sorted(job.input_uuids)))
    return out


def job_dir_for(root: Path, flow_id: str, name: str, uuid: str) -> Path:
    """The directory of one job: the same on every attempt, so a retry can continue from it."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in flow_id)
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(root) / "calcs" / safe / f"{label}-{uuid[:8]}"


def job_dir(root: Path, queued: QueuedJob) -> Path:
    return job_dir_for(root, queued.flow_id, queued.name, queued.uuid)


def run_job(queued: QueuedJob, queue: JobQueue, root: Path) -> dict[str, Any]:
    """Run one jobflow job; returns its output document (JSON-ready)."""
    from monty.json import MontyDecoder

    job = MontyDecoder().process_decoded(queued.payload)
    return execute_job(job, queue.outputs(job.input_uuids), job_dir(root, queued))


def execute_job(job: Any, parents: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run a jobflow job (or its stored form) in ``workdir`` with its parents' output documents."""
    from jobflow import JobStore
    from maggma.stores import MemoryStore
    from monty.json import MontyDecoder, jsanitize

    if isinstance(job, dict):
        job = MontyDecoder().process_decoded(job)
    store = JobStore(MemoryStore())
    store.connect()
    missing = set(job.input_uuids) - set(parents)
    if missing:
        raise RuntimeError(f"outputs of parent job(s) {', '.join(sorted(missing))} are not available")
    for doc in parents.values():
        store.docs_store.update(doc, key=["uuid", "index"])
    workdir.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        response = job.run(store, job_dir=workdir)
    finally:
        os.chdir(cwd)
    if response.replace is not None or response.addition is not None or response.detour is not None:
        raise RuntimeError("dynamic flows (replace/addition/detour) are not supported by the embedded executor")
    doc = store.docs_store.query_one({"uuid": job.uuid})
    doc.pop("_id", None)
    return jsanitize(doc, strict=True, enum_values=True)


def _alive(owner: int | None) -> bool:
    return owner is None or pid_alive(owner)


def _heartbeat(path: Path, uuid: str, worker: str, stop: threading.Event, every: float,
               owner: int | None = None) -> None:
    queue = JobQueue(path)
    try:
        while not stop.wait(every):
            if not _alive(owner):
                # the build that started this worker is gone (killed with SIGTERM, say): stop now rather
                # than compute on unwatched; the job's heartbeat stops and it is found LOST and rerun
                os._exit(1)
            queue.heartbeat(uuid, worker)
    finally:
        queue.close()


def worker_loop(queue_path: str, root: str, worker: str, poll: float = 0.2, heartbeat_s: float = 10.0,
                env: dict[str, str] | None = None, owner: int | None = None) -> None:
    """Claim and run jobs until nothing can make progress, or until the process ``owner`` is gone."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.update(env or {})
    queue = JobQueue(queue_path)
    try:
        while _alive(owner):
            queue.detect_lost()
            queued = queue.claim(worker)
            if queued is None:
                if not queue.runnable():
                    return
                time.sleep(poll)
                continue
            stop = threading.Event()
            beat = threading.Thread(target=_heartbeat, args=(Path(queue_path), queued.uuid, worker, stop, heartbeat_s,
                                                             owner), daemon=True)
            beat.start()
            try:
                output = run_job(queued, queue, Path(root))
            except Exception as exc:  # a failed job is recorded with its reason; the worker goes on
                first = (str(exc).strip().splitlines() or [""])[0]
                reason = f"{type(exc).__name__}: {first}" if not _is_user_error(exc) else first
                trace = traceback.format_exc(limit=8)
                queue.fail(queued.uuid, worker, reason)
                where = job_dir(Path(root), queued)
                if where.exists():
                    (where / "error.txt").write_text(trace)
            else:
                queue.complete(queued.uuid, worker, output)
            finally:
                stop.set()
                beat.join()
    finally:
        queue.close()


def _is_user_error(exc: BaseException) -> bool:
    from dftflow.errors import DftflowError

    return isinstance(exc, DftflowError)


def run_workers(queue_path: Path, root: Path, workers: int,
                on_tick: Callable[[dict[str, int]], None] | None = None, poll: float = 0.5,
                env: dict[str, str] | None = None) -> dict[str, int]:
    """Run ``workers`` worker processes until the queue can make no more progress.

    Workers start from a fork server whose environment is the one of the first
    call in this process; ``env`` is set in every worker explicitly (e.g. the
    VASP command of the cluster profile).
    """
    context = multiprocessing.get_context("forkserver")
    queue = JobQueue(queue_path)
    try:
        for _round in range(5):  # new rounds only if every worker died with work left
            procs = [context.Process(target=worker_loop,
                                     args=(str(queue_path), str(root), f"{os.getpid()}-{_round}-{i}"),
                                     kwargs={"env": env, "owner": os.getpid()})
                     for i in range(workers)]
            for p in procs:
                p.start()
            while any(p.is_alive() for p in procs):
                if on_tick:
                    on_tick(queue.counts())
                time.sleep(poll)
            for p in procs:
                p.join()
            queue.detect_lost()
            if not queue.runnable():
                break
        counts = queue.counts()
        if on_tick:
            on_tick(counts)
        return counts
    finally:
        queue.close()
