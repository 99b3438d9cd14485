"""VASP workflows through a real one-node SLURM: submit → sbatch → rocket → custodian → "vasp" → recovery."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pymatgen.io.vasp import Vasprun
from typer.testing import CliRunner

from dftflow.cli.app import app
from dftflow.execution.queue import JobQueue
from tests import slurm_cluster

DOUBLE = Path(__file__).resolve().parents[1] / "vasp_double" / "vasp_std"
SI = "fixtures/vasp/Si_mp_gga_relax"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = slurm_cluster.why_unavailable()
    if why:
        pytest.skip(why)
    c = slurm_cluster.start(tmp_path_factory.mktemp("slurm"), cpus=8, max_time_min=30)
    yield c
    c.stop()


@pytest.fixture()
def setup(cluster, shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vasp_double):
    """A profile for the local cluster, the double configured, SLURM_CONF set; returns helpers."""
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))

    def profile(walltime: str = "00:05:00", pack: int = 1, max_queued: int = 10, margin: int = 0) -> Path:
        data = {"name": "test-slurm", "scheduler": "slurm", "pack": pack,
                "slurm": {"partition": "debug", "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 1,
                          "walltime": walltime, "stop_margin_s": margin, "max_queued": max_queued,
                          "extra_directives": ["--mem=100M"]},
                "commands": {"vasp_std": f"{sys.executable} {DOUBLE}"}, "store": {"type": "file"}}
        path = tmp_path / "profile.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    poscar = tmp_path / "Si.vasp"
    poscar.write_bytes(gzip.decompress((shared / SI / "GGA_Relax_1" / "inputs" / "POSCAR.gz").read_bytes()))
    return {"profile": profile, "poscar": poscar, "double": vasp_double, "project": tmp_path / "project"}


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
    copies = []
    for i in range(6):
        p = tmp_path / f"Si{i}.vasp"
        p.write_bytes(setup["poscar"].read_bytes())
        copies.append(str(p))
    args = [sys.executable, "-m", "dftflow", "submit", *copies, "-p", str(project), "--profile", str(profile),
            "--relax-set", "mp-relax", "--static-set", "mp-static", "--json"]
    # two submit hosts at once: each workflow is queued once, each job claimed by one allocation
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
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
