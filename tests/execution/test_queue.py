"""The embedded executor: exactly-once execution, dependencies, lost workers, retries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jobflow import Flow

from dftflow.execution.queue import JobQueue
from dftflow.execution.worker import flow_jobs, run_workers
from tests.helpers_jobs import add, boom, record

REPO = Path(__file__).resolve().parents[2]


def lines(marker: Path) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


def test_many_workers_run_every_job_exactly_once(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    queue = JobQueue(tmp_path / "jobs.sqlite")
    n = 120
    for i in range(n):
        queue.add_flow(f"f{i}", flow_jobs(Flow([record(str(marker), i)])))
    counts = run_workers(tmp_path / "jobs.sqlite", tmp_path, workers=4)
    assert counts["COMPLETED"] == n and sum(counts.values()) == n
    values = sorted(int(line.split()[0]) for line in lines(marker))
    assert values == list(range(n))  # each ran once, none twice
    assert len({line.split()[1] for line in lines(marker)}) > 1  # really in several processes


def test_adding_a_flow_twice_queues_it_once(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite")
    jobs = flow_jobs(Flow([record(str(tmp_path / "m"), 1)]))
    assert queue.add_flow("a", jobs) == 1
    assert queue.add_flow("a", jobs) == 0
    assert queue.counts()["READY"] == 1


def test_outputs_flow_through_references(tmp_path: Path) -> None:
    first = record(str(tmp_path / "m"), 40)
    second = add(first.output, 2)
    queue = JobQueue(tmp_path / "jobs.sqlite")
    queue.add_flow("chain", flow_jobs(Flow([first, second])))
    assert queue.counts()["WAITING"] == 1
    run_workers(tmp_path / "jobs.sqlite", tmp_path, workers=2)
    out = {j["name"]: j["output"]["output"] for j in queue.jobs()}
    assert out["add"] == 42
    # each job ran in its own directory under calcs/<flow>/
    assert (tmp_path / "calcs" / "chain").is_dir() and len(list((tmp_path / "calcs" / "chain").iterdir())) == 2


def test_failure_is_recorded_and_blocks_only_its_children(tmp_path: Path) -> None:
    bad = boom("the input was wrong")
    child = add(bad.output, 1)
    queue = JobQueue(tmp_path / "jobs.sqlite")
    queue.add_flow("bad", flow_jobs(Flow([bad, child])))
    queue.add_flow("good", flow_jobs(Flow([record(str(tmp_path / "m"), 7)])))
    counts = run_workers(tmp_path / "jobs.sqlite", tmp_path, workers=2)
    assert counts == {"WAITING": 1, "READY": 0, "RUNNING": 0, "COMPLETED": 1, "FAILED": 1, "LOST": 0}
    failed = next(j for j in queue.jobs() if j["state"] == "FAILED")
    assert failed["error"] == "ValueError: the input was wrong"
    assert not queue.runnable()
    assert queue.retry() == 1 and queue.counts()["READY"] == 1


def test_retry_picks_failures_by_reason_and_structure(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite")
    queue.add_flow("scf", flow_jobs(Flow([boom("SCF did not converge in 80 iterations")])))
    queue.add_flow("setup", flow_jobs(Flow([boom("DFT+U correction cannot be scaled")])))
    queue.add_flow("other", flow_jobs(Flow([boom("DFT+U correction cannot be scaled")])))
    run_workers(tmp_path / "jobs.sqlite", tmp_path, workers=1)
    assert queue.counts()["FAILED"] == 3
    assert queue.retry(reason="no such reason") == 0
    assert queue.retry(reason="dft+u", flow_ids=["setup"]) == 1  # case-insensitive, and only that structure
    ready = {j["flow_id"] for j in queue.jobs() if j["state"] == "READY"}
    assert ready == {"setup"}
    assert queue.retry(reason="DFT+U") == 1  # the other one; the SCF failure stays
    still = [j["flow_id"] for j in queue.jobs() if j["state"] == "FAILED"]
    assert still == ["scf"]


def test_a_presumed_dead_worker_cannot_record_twice(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite")
    queue.add_flow("f", flow_jobs(Flow([record(str(tmp_path / "m"), 1)])))
    first = queue.claim("worker-a")
    assert first is not None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    queue.db.execute("UPDATE jobs SET pid=? WHERE uuid=?", (dead.pid, first.uuid))  # its process is gone
    assert queue.detect_lost() == [first.uuid]
    second = queue.claim("worker-b")
    assert second is not None and second.uuid == first.uuid and second.attempts == 2
    assert queue.complete(first.uuid, "worker-a", {"late": True}) is False
    assert queue.complete(second.uuid, "worker-b", {"ok": True}) is True
    assert queue.outputs([first.uuid])[first.uuid] == {"ok": True}


def test_silent_worker_on_another_host_is_lost_after_the_lease(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite", lease_s=5)
    queue.add_flow("f", flow_jobs(Flow([record(str(tmp_path / "m"), 1)])), max_attempts=1)
    job = queue.claim("remote")
    queue.db.execute("UPDATE jobs SET host='node042', heartbeat=? WHERE uuid=?", (time.time() - 60, job.uuid))
    assert queue.detect_lost() == [job.uuid]
    row = queue.jobs()[0]
    assert row["state"] == "LOST" and "no heartbeat from node042" in row["error"]


@pytest.mark.slow
def test_kill_9_of_a_worker_mid_job_reruns_that_job_once(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    db = tmp_path / "jobs.sqlite"
    queue = JobQueue(db)
    for i in range(6):
        queue.add_flow(f"f{i}", flow_jobs(Flow([record(str(marker), i, sleep=1.5)])))
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from pathlib import Path; "
            "from dftflow.execution.worker import run_workers; "
            f"print(run_workers(Path({str(db)!r}), Path({str(tmp_path)!r}), 2))")
    runner = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    victim = None
    deadline = time.time() + 60
    while victim is None and time.time() < deadline:
        row = queue.db.execute("SELECT uuid, pid FROM jobs WHERE state='RUNNING' LIMIT 1").fetchone()
        if row and row[1]:
            victim = row
        time.sleep(0.05)
    assert victim is not None
    time.sleep(0.3)
    os.kill(victim[1], signal.SIGKILL)  # the worker dies in the middle of the job
    out, _ = runner.communicate(timeout=120)
    counts = queue.counts()
    assert counts["COMPLETED"] == 6, out
    values = sorted(int(line.split()[0]) for line in lines(marker))
    assert values == list(range(6))  # the killed job finished exactly once, on its second attempt
    killed = next(j for j in queue.jobs() if j["uuid"] == victim[0])
    assert killed["attempts"] == 2
