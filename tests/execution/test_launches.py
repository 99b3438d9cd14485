"""SLURM launches without a cluster: end states of allocations, recovery and the rocket's walltime rules.

The same paths run through a real SLURM in tests/vasp/test_slurm.py; here ``sbatch``,
``squeue`` and ``sacct`` are small scripts printing what SLURM prints, which also covers
the states one node cannot produce (PREEMPTED, BOOT_FAIL, ...).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from jobflow import Flow

from dftflow.config.profile import DEFAULT_STOP_MARGIN_S, ClusterProfile, SlurmSettings
from dftflow.execution.launches import Launcher, rocket
from dftflow.execution.slurm import SlurmError, job_script, job_state_after, sacct_state, scontrol_state
from dftflow.execution.worker import flow_jobs
from tests.helpers_jobs import record
from tests.helpers_rocket import vasp_like, walltime_start


@pytest.mark.parametrize(("printed", "state", "job"), [
    ("CANCELLED by 0\n", "CANCELLED", "LOST"),
    ("CANCELLED+\n", "CANCELLED", "LOST"),
    ("NODE_FAIL\n", "NODE_FAIL", "LOST"),
    ("PREEMPTED\n", "PREEMPTED", "LOST"),
    ("BOOT_FAIL\n", "BOOT_FAIL", "LOST"),
    ("TIMEOUT\n", "TIMEOUT", "FAILED"),
    ("OUT_OF_MEMORY\n", "OUT_OF_MEMORY", "FAILED"),
    ("FAILED\n", "FAILED", "FAILED"),
    ("COMPLETED\n", "COMPLETED", "FAILED"),  # a job still claimed after a clean end did not report back
])
def test_sacct_states_map_to_the_running_job_state(printed: str, state: str, job: str) -> None:
    assert sacct_state(printed) == state
    assert job_state_after(state) == job


@pytest.mark.parametrize(("state", "job"), [("PREEMPTED", "LOST"), ("CANCELLED", "LOST"), ("NODE_FAIL", "LOST"),
                                           ("TIMEOUT", "FAILED")])
def test_scontrol_states_map_to_the_running_job_state(state: str, job: str) -> None:
    """``scontrol show job``: what recovery reads where accounting (sacct) is off, as on the test cluster."""
    text = f"JobId=7 JobName=dftflow\n   JobState={state} Reason=None Dependency=(null)\n"
    assert job_state_after(scontrol_state(text)) == job


def test_empty_answers() -> None:
    assert sacct_state("") is None and scontrol_state("slurm_load_jobs error: Invalid job id") is None


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture()
def launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A project with one two-job flow claimed by one launch (fake sbatch, job 4242); yields (launcher, launch)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir, "sbatch", "echo 4242")
    _fake(bin_dir, "squeue", 'printf "%s" "$FAKE_SQUEUE"; exit ${FAKE_SQUEUE_RC:-0}')
    _fake(bin_dir, "sacct", 'printf "%s" "$FAKE_SACCT"')
    _fake(bin_dir, "scontrol", "exit 1")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    profile = ClusterProfile(name="fake", scheduler="slurm", slurm=SlurmSettings(walltime="00:10:00"))
    la = Launcher(tmp_path / "project", profile)
    first = record(str(tmp_path / "marker"), 1)
    la.queue.add_flow("Si", flow_jobs(Flow([first, record(str(tmp_path / "marker"), 2)])))
    [launch] = la.launch()
    yield la, launch
    la.close()


def _started(launch: dict, la: Launcher) -> tuple[str, str]:
    """Mark the first job of the launch as started on the node; returns (started uuid, other uuid)."""
    spec = json.loads((Path(launch["dir"]) / "launch.json").read_text())
    a, b = (j["uuid"] for j in spec["jobs"])
    (Path(launch["dir"]) / "results" / f"{a}.started").write_text("0")
    return a, b


@pytest.mark.parametrize(("printed", "state"), [
    ("PREEMPTED\n", "LOST"), ("NODE_FAIL\n", "LOST"), ("CANCELLED by 0\n", "LOST"), ("TIMEOUT\n", "FAILED")])
def test_recovery_settles_the_running_job_by_how_the_allocation_ended(launcher, monkeypatch, printed, state):
    la, launch = launcher
    running, never = _started(launch, la)
    monkeypatch.setenv("FAKE_SACCT", printed)  # squeue no longer lists 4242
    assert la.recover()["settled"] == 1
    jobs = {j["uuid"]: j for j in la.queue.jobs()}
    end = printed.split()[0]
    assert jobs[running]["state"] == state and "SLURM job 4242" in jobs[running]["error"]
    assert end in jobs[running]["error"]
    assert jobs[never]["state"] in ("READY", "WAITING") and jobs[never]["attempts"] == 0
    assert la.launches()[0]["slurm_state"] == end


def test_recovery_waits_while_sacct_still_reports_the_allocation(launcher, monkeypatch) -> None:
    la, launch = launcher
    _started(launch, la)
    monkeypatch.setenv("FAKE_SACCT", "RUNNING\n")  # squeue missed it for a moment
    assert la.recover()["settled"] == 0 and la.launches()[0]["state"] == "SUBMITTED"


def test_recovery_settles_nothing_when_squeue_cannot_answer(launcher, monkeypatch) -> None:
    la, launch = launcher
    _started(launch, la)
    monkeypatch.setenv("FAKE_SQUEUE_RC", "1")  # e.g. "Unable to contact slurm controller"
    with pytest.raises(SlurmError):
        la.recover()
    assert {j["state"] for j in la.queue.jobs()} == {"RUNNING"}
    monkeypatch.setenv("FAKE_SQUEUE", "4242 RUNNING\n")
    monkeypatch.delenv("FAKE_SQUEUE_RC")
    assert la.recover()["settled"] == 0


# -- the rocket -------------------------------------------------------------------
def _rocket_launch(tmp_path: Path, jobs: list) -> tuple[Launcher, dict]:
    profile = ClusterProfile(name="fake", scheduler="slurm", pack=len(jobs),
                             slurm=SlurmSettings(walltime="00:10:00"))
    la = Launcher(tmp_path / "project", profile)
    for i, j in enumerate(jobs):
        la.queue.add_flow(f"f{i}", flow_jobs(Flow([j])))
    [launch] = la.launch()
    return la, launch


@pytest.fixture()
def fake_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir, "sbatch", "echo 77")
    _fake(bin_dir, "squeue", "exit 0")
    _fake(bin_dir, "sacct", "echo COMPLETED")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUSTODIAN_WALLTIME_START", raising=False)
    monkeypatch.setenv("DFTFLOW_VASP_COMMANDS", "{}")  # the rocket sets it from the launch


def _results(launch: dict) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (Path(launch["dir"]) / "results").glob("*.json")}


def test_rocket_requeues_a_job_vasp_stopped_and_starts_nothing_after_it(tmp_path, fake_sbatch, monkeypatch):
    monkeypatch.setenv("DFTFLOW_JOB_END", str(time.time() + 3600))
    monkeypatch.setenv("DFTFLOW_STOP_MARGIN", "60")
    la, launch = _rocket_launch(tmp_path, [vasp_like("LSTOP = .TRUE."), vasp_like()])
    try:
        assert rocket(Path(launch["dir"])) == 0  # a clean stop is not a failure
        [(uuid, res)] = _results(launch).items()
        assert res["state"] == "STOPPED" and res["reason"].startswith("stopped cleanly: STOPCAR (LSTOP = .TRUE.)")
        la.recover()
        jobs = {j["uuid"]: j for j in la.queue.jobs()}
        assert jobs[uuid]["state"] == "READY" and jobs[uuid]["attempts"] == 1
        assert jobs[uuid]["error"] == res["reason"]
        assert la.queue.history(uuid)[-1]["event"] == "stopped"
        other = next(j for u, j in jobs.items() if u != uuid)
        assert other["state"] == "READY" and other["attempts"] == 0  # not started: untouched
        assert "was stopped before the walltime" in la.queue.history(other["uuid"])[-1]["reason"]
    finally:
        la.close()


def test_a_stopcar_written_after_vasp_ended_stopped_nothing(tmp_path, fake_sbatch, monkeypatch) -> None:
    """custodian checks its handlers once more after VASP ends; a STOPCAR written then is no stop."""
    monkeypatch.setenv("DFTFLOW_JOB_END", str(time.time() + 3600))
    monkeypatch.setenv("DFTFLOW_STOP_MARGIN", "60")
    la, launch = _rocket_launch(tmp_path, [vasp_like("LSTOP = .TRUE.", after_vasp=True)])
    try:
        assert rocket(Path(launch["dir"])) == 0
        assert [r["state"] for r in _results(launch).values()] == ["COMPLETED"]
    finally:
        la.close()


def test_a_stopped_job_fails_after_max_attempts(tmp_path, fake_sbatch, monkeypatch) -> None:
    la, launch = _rocket_launch(tmp_path, [vasp_like("LSTOP = .TRUE.")])
    try:
        [uuid] = [j["uuid"] for j in la.queue.jobs()]
        la.queue.db.execute("UPDATE jobs SET attempts=3 WHERE uuid=?", (uuid,))
        assert la.queue.requeue_stopped(uuid, f"slurm:{launch['launch_id']}", "stopped cleanly")
        [job] = la.queue.jobs()
        assert job["state"] == "FAILED" and "stopped in 3 attempts" in job["error"]
        assert la.queue.retry() == 1
    finally:
        la.close()


def test_each_job_of_a_launch_times_its_walltime_from_its_own_start(tmp_path, fake_sbatch, monkeypatch) -> None:
    """custodian's WalltimeHandler reads CUSTODIAN_WALLTIME_START, which the first handler of a process sets:
    the rocket clears it before each job, or every later job would be stopped too early."""
    monkeypatch.setenv("DFTFLOW_JOB_END", str(time.time() + 3600))
    la, launch = _rocket_launch(tmp_path, [walltime_start(), walltime_start()])
    try:
        assert rocket(Path(launch["dir"])) == 0
        outputs = [r["output"]["output"] for r in _results(launch).values()]
        assert outputs == [None, None]
    finally:
        la.close()
        os.environ.pop("CUSTODIAN_WALLTIME_START", None)


@pytest.mark.parametrize(("left", "starts"), [(DEFAULT_STOP_MARGIN_S - 30, False), (DEFAULT_STOP_MARGIN_S + 120, True)])
def test_one_default_stop_margin_for_the_rocket_custodian_and_profiles(tmp_path, fake_sbatch, monkeypatch,
                                                                       left, starts) -> None:
    """Without DFTFLOW_STOP_MARGIN the rocket, the VASP jobs' WalltimeHandler and the profiles agree."""
    from dftflow.vasp.jobs import _remaining_walltime

    monkeypatch.delenv("DFTFLOW_STOP_MARGIN", raising=False)
    end = time.time() + left
    monkeypatch.setenv("DFTFLOW_JOB_END", str(end))
    assert _remaining_walltime() == pytest.approx(end - time.time() - DEFAULT_STOP_MARGIN_S, abs=2)
    settings = SlurmSettings()
    assert settings.stop_margin_s == DEFAULT_STOP_MARGIN_S
    assert f"export DFTFLOW_STOP_MARGIN={DEFAULT_STOP_MARGIN_S}\n" in job_script(
        ClusterProfile(name="p", scheduler="slurm", slurm=settings), tmp_path)
    la, launch = _rocket_launch(tmp_path, [vasp_like()])
    try:
        rocket(Path(launch["dir"]))
        assert bool(_results(launch)) is starts
        if not starts:
            assert json.loads((Path(launch["dir"]) / "rocket.json").read_text())["stopped"].endswith(
                f"less than the stop margin of {DEFAULT_STOP_MARGIN_S} s")
    finally:
        la.close()
