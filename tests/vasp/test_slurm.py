"""VASP workflows through a real one-node SLURM: submit → sbatch → rocket → custodian → "vasp" → recovery."""

from __future__ import annotations

import gzip
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from pymatgen.io.vasp import Vasprun
from typer.testing import CliRunner

from dftflow.cli.app import app
from dftflow.execution.queue import JobQueue
from tests.helpers_process import submit_at_once

DOUBLE = Path(__file__).resolve().parents[1] / "vasp_double" / "vasp_std"
SI = "fixtures/vasp/Si_mp_gga_relax"
pytestmark = pytest.mark.slow


@pytest.fixture()
def setup(cluster, shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vasp_double):
    """A profile for the local cluster, the double configured, SLURM_CONF set; returns helpers."""
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))

    def profile(walltime: str = "00:05:00", pack: int = 1, max_queued: int = 10, margin: int = 0,
                **slurm) -> Path:
        data = {"name": "test-slurm", "scheduler": "slurm", "pack": pack,
                "slurm": {"partition": "debug", "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 1,
                          "walltime": walltime, "stop_margin_s": margin, "max_queued": max_queued,
                          "extra_directives": ["--mem=100M"], **slurm},
                "commands": {"vasp_std": f"{sys.executable} {DOUBLE}"}, "store": {"type": "file"}}
        path = tmp_path / "profile.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    poscar = tmp_path / "Si.vasp"
    poscar.write_bytes(gzip.decompress((shared / SI / "GGA_Relax_1" / "inputs" / "POSCAR.gz").read_bytes()))
    return {"profile": profile, "poscar": poscar, "double": vasp_double, "project": tmp_path / "project",
            "double-state": tmp_path / "double-state"}


def cli(*args: str) -> dict:
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def wait_until_settled(project: Path, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = cli("status", "-p", str(project))
        if status["launches"] and all(x["state"] == "DONE" for x in status["launches"]):
            return status
        time.sleep(2)
    raise AssertionError(f"allocations still active after {timeout} s: {status['launches']}")


def test_relax_static_flow_through_slurm(setup, shared: Path) -> None:
    setup["double"]()
    project = setup["project"]
    out = cli("submit", str(setup["poscar"]), "-p", str(project), "--profile", str(setup["profile"]()),
              "--relax-set", "mp-relax", "--static-set", "mp-static")
    assert out["workflows_added"] == 1 and len(out["launched"]) == 1 and out["launched"][0]["slurm_id"]
    status = wait_until_settled(project)
    assert status["counts"]["COMPLETED"] == 2, status["failures"]
    jobs = {j["job"]: j for j in status["jobs"]}
    ref = Vasprun(str(shared / SI / "GGA_Static" / "outputs" / "vasprun.xml.gz"), parse_dos=False,
                  parse_eigen=False, parse_potcar_file=False)
    assert jobs["static"]["energy"] == pytest.approx(ref.final_energy)
    assert status["launches"][0]["slurm_state"] == "COMPLETED"
    # the batch script ran the rocket; the store was written only here, from the result files
    launch_dir = Path(out["launched"][0]["dir"])
    assert len(list((launch_dir / "results").glob("*.json"))) == 2
    assert list(launch_dir.glob("slurm-*.out"))


def test_walltime_kill_is_detected_and_retry_completes(setup) -> None:
    project = setup["project"]
    profile = setup["profile"](walltime="00:01:00")
    setup["double"](sleep={"GGA_Relax_1": 600}, ignore_stopcar=True)  # runs into SLURM's time limit
    cli("submit", str(setup["poscar"]), "-p", str(project), "--profile", str(profile),
        "--relax-set", "mp-relax", "--static-set", "mp-static")
    status = wait_until_settled(project, timeout=200)
    assert status["launches"][0]["slurm_state"] == "TIMEOUT"
    failed = {f["job"]: f for f in status["failures"]}
    assert failed["relax"]["state"] == "FAILED" and "TIMEOUT" in failed["relax"]["error"]
    assert status["counts"]["WAITING"] == 1  # the static waits for its relaxation again
    # retry: the relaxation continues from the CONTCAR the killed attempt left (the double's Relax_2 run)
    setup["double"]()
    again = cli("retry", "-p", str(project))
    assert again["requeued"] == 1 and len(again["launched"]) == 1
    status = wait_until_settled(project)
    assert status["counts"]["COMPLETED"] == 2, status["failures"]
    relax = next(j for j in status["jobs"] if j["job"] == "relax")
    queue = JobQueue(project / "jobs.sqlite")
    doc = next(j for j in queue.jobs() if j["name"] == "relax")["output"]["output"]
    queue.close()
    assert any("CONTCAR" in n for n in doc["notes"]) and relax["state"] == "COMPLETED"


def test_parallel_allocations_never_lose_or_duplicate_a_workflow(setup, tmp_path: Path) -> None:
    setup["double"]()
    project = setup["project"]
    profile = setup["profile"](pack=1, max_queued=3)
    # two submit hosts at once: each workflow is queued once, each job claimed by one allocation
    outs = submit_at_once(setup["poscar"], tmp_path, project, profile, timeout=120)
    assert sum(o["workflows_added"] for o in outs) == 6
    launched = sum(len(o["launched"]) for o in outs)
    assert 1 <= launched <= 6
    deadline = time.time() + 300
    while time.time() < deadline:  # keep submitting as allocations finish (max_queued 3)
        status = cli("status", "-p", str(project))
        if status["counts"]["COMPLETED"] == 12:
            break
        cli("submit", "-p", str(project), "--profile", str(profile), "--relax-set", "mp-relax",
            "--static-set", "mp-static")
        time.sleep(3)
    status = wait_until_settled(project)
    assert status["counts"]["COMPLETED"] == 12, status["failures"]
    queue = JobQueue(project / "jobs.sqlite")
    flows = {j["flow_id"] for j in queue.jobs()}
    queue.close()
    assert flows == {f"Si{i}" for i in range(6)}
    results = [p.name for p in (project / "launches").glob("*/results/*.json")]
    assert len(results) == len(set(results)) == 12  # every job ran in exactly one allocation
    state = tmp_path / "double-state"
    assert int((state / "GGA_Relax_1.runs").read_text()) == 6
    assert int((state / "GGA_Static.runs").read_text()) == 6


def test_accel_eval_arms_run_through_slurm(setup, shared: Path, si_checkpoint: Path, tmp_path: Path) -> None:
    """accel-eval --engine vasp: the arms are workflows on SLURM; a rerun collects the report."""
    setup["double"]()
    poscar = tmp_path / "Si-static.vasp"
    poscar.write_bytes(gzip.decompress((shared / SI / "GGA_Static" / "inputs" / "POSCAR.gz").read_bytes()))
    out = tmp_path / "accel"
    args = ["accel-eval", str(poscar), "--engine", "vasp", "--profile", str(setup["profile"](pack=1)),
            "--model", str(si_checkpoint), "--inputset", "mp-static", "--out", str(out)]
    first = cli(*args)
    assert len(first["launched"]) == 1 and first["materials"] == []  # nothing finished yet
    status = wait_until_settled(out)
    while status["counts"]["COMPLETED"] < 5:  # the arms wait for default → predict; submit again as they unblock
        assert not status["failures"], status["failures"]
        cli(*args)
        status = wait_until_settled(out)
    report = cli(*args)
    [row] = report["materials"]
    assert row["arms"] == ["default", "ml", "ml-true-occ", "oracle", "predict"]
    assert row["steps_default"] == 10 and row["ratio_ml"] == 1.0  # the replayed GGA_Static run
    assert report["settings"]["nfixed"] == 5 and report["problems"] == []
    assert len(list((out / "launches").glob("*/results/*.json"))) == 5


def test_nscf_eval_runs_through_slurm(setup, shared: Path, tmp_path: Path) -> None:
    """nscf-eval with a VASP set and --profile: the static and its ICHARG = 11 step run in SLURM allocations."""
    setup["double"]()
    poscar = tmp_path / "Si-static.vasp"
    poscar.write_bytes(gzip.decompress((shared / SI / "GGA_Static" / "inputs" / "POSCAR.gz").read_bytes()))
    out = tmp_path / "nscf"
    args = ["nscf-eval", str(poscar), "--start", "oracle", "--inputset", "mp-static",
            "--profile", str(setup["profile"](pack=1)), "--out", str(out)]
    first = cli(*args)
    assert len(first["launched"]) == 1 and first["materials"] == []  # nothing finished yet
    status = wait_until_settled(out)
    while status["counts"]["COMPLETED"] < 2:  # the step waits for the static; submit again as it unblocks
        assert not status["failures"], status["failures"]
        cli(*args)
        status = wait_until_settled(out)
    report = cli(*args)
    [row] = report["materials"]
    reads = [json.loads(line) for line in (setup["double-state"] / "reads.jsonl").read_text().splitlines()]
    assert sorted(r["ICHARG"] for r in reads) == ["11", "2"]
    assert next(r for r in reads if r["ICHARG"] == "11")["chgcar_is_reference"] is True
    assert row["gap_indirect"] > 0.5 and row["gap_indirect_err_oracle"] == row["gap_direct_err_oracle"] == 0.0
    assert "energy_err_oracle" not in row and report["summary"]["oracle"]["energy"]["not_available"]
    assert report["settings"]["engine"] == "vasp" and report["problems"] == []
    assert len(list((out / "launches").glob("*/results/*.json"))) == 2


def submit(setup, **profile) -> dict:
    return cli("submit", str(setup["poscar"]), "-p", str(setup["project"]), "--profile",
               str(setup["profile"](**profile)), "--relax-set", "mp-relax", "--static-set", "mp-static")


def jobs_by_name(project: Path) -> dict[str, dict]:
    """The project's jobs by name, each with its history (lost, stopped, requeued, ...)."""
    queue = JobQueue(project / "jobs.sqlite")
    try:
        return {j["name"]: {**j, "history": queue.history(j["uuid"])} for j in queue.jobs()}
    finally:
        queue.close()


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.5)


def slurm_job(cluster, slurm_id: str) -> dict[str, str]:
    """``scontrol show job`` as key=value pairs (kept for MinJobAge after the end)."""
    out = cluster.run("scontrol", "show", "job", "-o", slurm_id).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def test_stopcar_before_the_walltime_ends_vasp_cleanly_and_requeues_the_job(setup, cluster) -> None:
    """walltime 2 min, stop margin 30 s: custodian writes a STOPCAR ~30 + 60 s (its buffer) before the end,
    the double ends at the next ionic step with a readable partial run, and the relax goes back to the
    queue (READY, its reason recorded); the next allocation continues it from the CONTCAR."""
    project, margin = setup["project"], 30
    setup["double"](sleep={"GGA_Relax_1": 90})  # 3 ionic steps of 30 s: would outlast the STOPCAR
    out = submit(setup, walltime="00:02:00", margin=margin)
    [launch] = out["launched"]
    status = wait_until_settled(project, timeout=200)
    # the rocket ended by itself: no SLURM kill at the time limit, no failure
    assert status["launches"][0]["slurm_state"] == "COMPLETED" and status["failures"] == []
    jobs = jobs_by_name(project)
    relax, static = jobs["relax"], jobs["static"]
    assert relax["state"] == "READY" and relax["attempts"] == 1
    assert relax["error"].startswith("stopped cleanly: STOPCAR (LSTOP = .TRUE.)")
    assert relax["history"][-1]["event"] == "stopped"
    assert static["state"] == "WAITING" and static["history"][-1]["event"] == "waiting"
    # the STOPCAR was written before the margin, within custodian's buffer (60 s) and check interval (10 s)
    result = json.loads((Path(launch["dir"]) / "results" / f"{relax['uuid']}.json").read_text())
    assert result["state"] == "STOPPED"
    info = slurm_job(cluster, launch["slurm_id"])
    start = datetime.fromisoformat(info["StartTime"]).timestamp()
    assert abs(result["job_end"] - (start + 120)) <= 3  # DFTFLOW_JOB_END is the allocation's real end
    [stop] = [json.loads(x) for x in (setup["double-state"] / "stops.jsonl").read_text().splitlines()]
    workdir = Path(stop["dir"])
    stopcar = workdir / "STOPCAR"
    left = result["job_end"] - stopcar.stat().st_mtime
    assert margin < left <= margin + 60 + 10 + 5, left
    # VASP (the double) honoured LSTOP at its next ionic step and left a complete, readable partial run
    assert stop["stop"] == "LSTOP" and 1 <= stop["ionic_steps"] < stop["of"] == 3
    assert stop["time"] < result["job_end"] - margin
    run = Vasprun(str(workdir / "vasprun.xml"), parse_dos=False, parse_eigen=False, parse_potcar_file=False)
    assert len(run.ionic_steps) == stop["ionic_steps"]
    assert (workdir / "CONTCAR").stat().st_size > 0
    walltime = [c for run_ in json.loads((workdir / "custodian.json").read_text()) for c in run_["corrections"]]
    assert any("Walltime reached" in c["errors"] for c in walltime)
    # the next allocation continues the relaxation from its CONTCAR, then runs the static
    setup["double"]()
    again = submit(setup)
    assert len(again["launched"]) == 1
    status = wait_until_settled(project)
    assert status["counts"]["COMPLETED"] == 2, status["failures"]
    queue = JobQueue(project / "jobs.sqlite")
    doc = next(j for j in queue.jobs() if j["name"] == "relax")["output"]["output"]
    queue.close()
    assert any("CONTCAR" in n for n in doc["notes"])


def test_rocket_starts_no_job_with_less_than_the_stop_margin_left(setup) -> None:
    """walltime 1 min, stop margin 45 s, 20 s spent before the rocket starts: the relax is not started and
    goes back to the queue untouched (READY, no attempt counted), with the reason."""
    project = setup["project"]
    setup["double"]()
    out = submit(setup, walltime="00:01:00", margin=45, pre_run=["sleep 20"])
    [launch] = out["launched"]
    status = wait_until_settled(project, timeout=150)
    assert status["launches"][0]["slurm_state"] == "COMPLETED" and status["failures"] == []
    jobs = jobs_by_name(project)
    assert jobs["relax"]["state"] == "READY" and jobs["relax"]["attempts"] == 0
    assert jobs["static"]["state"] == "WAITING"
    reason = jobs["relax"]["history"][-1]["reason"]
    assert f"not started in SLURM job {launch['slurm_id']} (COMPLETED)" in reason
    assert "less than the stop margin of 45 s" in reason
    assert not list((Path(launch["dir"]) / "results").iterdir())  # nothing started, nothing reported
    assert not (setup["double-state"] / "reads.jsonl").exists()  # VASP never ran
    # it is pending work for the next allocation
    nxt = cli("submit", "-p", str(project), "--profile", str(setup["profile"]()), "--dry-run")
    assert [x["flows"] for x in nxt["launched"]] == [launch["flows"]]


def _assert_running_job_lost(setup, launch: dict, end: str) -> None:
    project = setup["project"]
    status = wait_until_settled(project, timeout=120)
    assert status["launches"][0]["slurm_state"] == end
    jobs = jobs_by_name(project)
    relax, static = jobs["relax"], jobs["static"]
    assert relax["state"] == "LOST"
    assert relax["error"] == f"lost: SLURM job {launch['slurm_id']} ended {end} while it ran"
    assert static["state"] == "WAITING" and static["attempts"] == 0  # never started: back in the queue
    assert not (Path(launch["dir"]) / "results" / f"{relax['uuid']}.json").exists()
    # lost work is re-runnable: `retry` puts it back in the queue
    queue = JobQueue(project / "jobs.sqlite")
    try:
        assert queue.retry() == 1
        assert {j["name"]: j["state"] for j in queue.jobs()} == {"relax": "READY", "static": "WAITING"}
    finally:
        queue.close()


def test_cancelled_allocation_loses_its_running_job(setup, cluster) -> None:
    setup["double"](sleep={"GGA_Relax_1": 600})
    [launch] = submit(setup)["launched"]
    wait_for(lambda: (setup["double-state"] / "reads.jsonl").exists(), 120, "the relax started")
    cluster.run("scancel", launch["slurm_id"])
    _assert_running_job_lost(setup, launch, "CANCELLED")


def test_node_failure_loses_the_running_job(setup, cluster) -> None:
    """A node set DOWN under a running allocation (not requeued: --no-requeue) ends it NODE_FAIL."""
    node = cluster.run("sinfo", "-h", "-o", "%N").stdout.strip()
    setup["double"](sleep={"GGA_Relax_1": 600})
    [launch] = submit(setup, extra_directives=["--mem=100M", "--no-requeue"])["launched"]
    wait_for(lambda: (setup["double-state"] / "reads.jsonl").exists(), 120, "the relax started")
    try:
        cluster.run("scontrol", "update", f"nodename={node}", "state=down", "reason=dftflow-test")
        wait_for(lambda: slurm_job(cluster, launch["slurm_id"]).get("JobState") == "NODE_FAIL", 60,
                 "the allocation ending NODE_FAIL")
    finally:
        cluster.run("scontrol", "update", f"nodename={node}", "state=resume", check=False)
        wait_for(lambda: cluster.run("sinfo", "-h", "-o", "%t").stdout.strip() == "idle", 60, "the node idle again")
    _assert_running_job_lost(setup, launch, "NODE_FAIL")
