"""build-dataset's dft stage with real GPAW: failures alone, status/retry, kill -9 and rerun."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import gpaw  # noqa: F401 - installed by scripts/setup.sh: a broken build must fail here, not skip
import pytest

from dftflow.procs import pid_alive
from tests.helpers_process import kill_group, wait_for_count

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "workflows" / "structures" / "demo"
TC = """data_Tc
_symmetry_space_group_name_H-M   'P 63/m m c'
_cell_length_a   2.743
_cell_length_b   2.743
_cell_length_c   4.400
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   120
_symmetry_Int_Tables_number   194
loop_
 _symmetry_equiv_pos_as_xyz
 'x, y, z'
 '-y, x-y, z'
 '-x+y, -x, z'
 '-x, -y, z+1/2'
 'y, -x+y, z+1/2'
 'x-y, x, z+1/2'
 'y, x, -z'
 'x-y, -y, -z'
 '-x, -x+y, -z'
 '-y, -x, -z+1/2'
 '-x+y, y, -z+1/2'
 'x, x-y, -z+1/2'
 '-x, -y, -z'
 'y, -x+y, -z'
 'x-y, x, -z'
 'x, y, -z+1/2'
 '-y, x-y, -z+1/2'
 '-x+y, -x, -z+1/2'
 '-y, -x, z'
 '-x+y, y, z'
 'x, x-y, z'
 'y, x, z+1/2'
 'x-y, -y, z+1/2'
 '-x, -x+y, z+1/2'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Tc  Tc1  0.33333333  0.66666667  0.25  1
"""


def dftflow(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dftflow", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}, timeout=900)


def recipe(tmp_path: Path, names: list[str], extra: str = "") -> Path:
    src = tmp_path / "structures"
    src.mkdir()
    for name in names:
        shutil.copy(DEMO / f"{name}.cif", src)
    (src / "Tc.cif").write_text(TC) if "Tc" in extra else None
    path = tmp_path / "r.yaml"
    path.write_text("""name: t
workers: 2
sources: [{type: cif, path: structures, label: t}]
dft:
  static: gpaw_pbe_static
  overrides: {ecut: 250, kpoint_density: 8}
""")
    return path


def test_failed_structure_fails_alone_then_status_and_retry(tmp_path: Path) -> None:
    path = recipe(tmp_path, ["Si", "NaCl"], extra="Tc")
    project = tmp_path / "p"
    out = dftflow("build-dataset", str(path), "--project", str(project), "--json", "--no-figures")
    assert out.returncode == 0, out.stderr
    results = {r["uid"]: r for r in json.loads(out.stdout)["stages"]["dft"]["results"]}
    assert results["t:Si.cif"]["state"] == results["t:NaCl.cif"]["state"] == "COMPLETED"
    assert abs(results["t:NaCl.cif"]["electrons"] - results["t:NaCl.cif"]["expected"]) < 1e-3
    assert results["t:Tc.cif"]["state"] == "FAILED"
    assert "no PAW setup for Tc" in results["t:Tc.cif"]["error"]
    # the cost per structure: the completed runs' own wall times, and all the time spent
    cost = json.loads(out.stdout)["stages"]["dft"]["cost"]
    walls = [results[u]["wall_s"] for u in ("t:Si.cif", "t:NaCl.cif")]
    assert cost["completed"] == 2 and cost["failed"] == 1
    assert cost["max_s"] == round(max(walls), 1) and cost["mean_s"] == round(sum(walls) / 2, 1)
    assert cost["core_hours"] * 3600 >= sum(walls)

    status = json.loads(dftflow("status", "-p", str(project), "--json").stdout)
    assert status["counts"]["COMPLETED"] == 2 and status["counts"]["FAILED"] == 1
    assert [f["uid"] for f in status["failures"]] == ["t:Tc.cif"]

    again = json.loads(dftflow("retry", "-p", str(project), "--json").stdout)
    assert again["requeued"] == 1 and again["counts"]["FAILED"] == 1  # same reason, recorded again
    # a re-run of build-dataset computes nothing twice
    rerun = json.loads(dftflow("build-dataset", str(path), "--project", str(project), "--json",
                               "--no-figures").stdout)
    assert rerun["stages"]["dft"]["flows_added"] == 0
    assert rerun["stages"]["dft"]["flows_already_queued"] == 3
    assert (project / "calcs" / "t_Si.cif").is_dir()


@pytest.mark.slow
def test_kill_9_during_build_dataset_then_rerun_completes_each_structure_once(tmp_path: Path) -> None:
    path = recipe(tmp_path, ["Si", "NaCl", "MgO", "LiF", "C_diamond"])
    project = tmp_path / "p"
    proc = subprocess.Popen([sys.executable, "-m", "dftflow", "build-dataset", str(path), "--project", str(project),
                             "--no-figures"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    db = project / "jobs.sqlite"
    running = wait_for_count(db, "SELECT COUNT(*) FROM jobs WHERE state='RUNNING'", 1, timeout=300, poll=0.1)
    assert running, "no job started"
    time.sleep(1.0)
    kill_group(proc)  # the build and its workers, mid-job
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM jobs WHERE state='COMPLETED'").fetchone()[0] < 5

    out = dftflow("build-dataset", str(path), "--project", str(project), "--json", "--no-figures")
    assert out.returncode == 0, out.stderr
    rows = con.execute("SELECT flow_id, state, attempts FROM jobs").fetchall()
    assert sorted(r[0] for r in rows) == sorted(f"t:{n}.cif" for n in ["Si", "NaCl", "MgO", "LiF", "C_diamond"])
    assert {r[1] for r in rows} == {"COMPLETED"}
    assert any(r[2] == 2 for r in rows)  # the job killed mid-run was detected as lost and run again
    for flow_id, *_ in rows:
        calc = project / "calcs" / flow_id.replace(":", "_")
        assert len(list(calc.iterdir())) == 1
        result = json.loads((next(calc.iterdir()) / "result.json").read_text())
        assert result["converged"] and result["n_scf"] > 0
        assert abs(result["integrated_electrons"] - result["nvalence"]) < 1e-3


def test_relax_then_static_flow_uses_the_relaxed_structure(tmp_path: Path) -> None:
    from pymatgen.core import Structure

    from dftflow.execution.queue import JobQueue
    from dftflow.execution.worker import flow_jobs, run_workers
    from dftflow.flows.dataset import dataset_flow

    si = Structure.from_file(DEMO / "Si.cif").get_primitive_structure()
    squeezed = si.copy()
    squeezed.scale_lattice(si.volume * 0.94)  # 6 % compressed: the relax must expand it
    flow = dataset_flow(squeezed, "Si", static="gpaw_pbe_static", relax="gpaw_pbe_relax",
                        overrides={"ecut": 250, "kpoint_density": 8})
    queue = JobQueue(tmp_path / "jobs.sqlite")
    queue.add_flow("Si", flow_jobs(flow))
    assert run_workers(tmp_path / "jobs.sqlite", tmp_path, 2)["COMPLETED"] == 2
    out = {j["name"]: j["output"]["output"] for j in queue.jobs()}
    relaxed = Structure.from_dict(out["gpaw relax"]["structure"])
    static = Structure.from_dict(out["gpaw static"]["structure"])
    assert out["gpaw relax"]["ionic_steps"] > 0
    assert relaxed.volume > squeezed.volume * 1.03
    assert static.lattice.abc == pytest.approx(relaxed.lattice.abc, abs=1e-6)
    assert out["gpaw static"]["energy"] == pytest.approx(out["gpaw relax"]["energy"], abs=5e-3)
    assert Path(out["gpaw static"]["chgcar"]).is_file()


def test_an_edited_input_set_is_refused_or_its_results_redone(tmp_path: Path) -> None:
    # a user's copy of the static set: editing it after the runs must not mix two settings in one project
    for name in ("gpaw_pbe_static", "hubbard_u"):
        shutil.copy(REPO / "inputsets" / f"{name}.yaml", tmp_path / f"{name}.yaml")
    mine = tmp_path / "gpaw_pbe_static.yaml"
    path = recipe(tmp_path, ["Si"])
    path.write_text(path.read_text().replace("static: gpaw_pbe_static", f"static: {mine}"))
    project = tmp_path / "p"
    first = dftflow("build-dataset", str(path), "--project", str(project), "--until", "dft", "--json",
                    "--no-figures")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["stages"]["dft"]["jobs"]["COMPLETED"] == 1

    mine.write_text(mine.read_text().replace("width: 0.05", "width: 0.1"))
    refused = dftflow("build-dataset", str(path), "--project", str(project), "--until", "dft", "--no-figures")
    assert refused.returncode == 1
    assert "1 finished calculation(s) used other settings" in refused.stderr
    assert "occupations.width: 0.05 -> 0.1" in refused.stderr and "on_settings_change" in refused.stderr

    path.write_text(path.read_text() + "  on_settings_change: requeue\n")
    redone = dftflow("build-dataset", str(path), "--project", str(project), "--until", "dft", "--json",
                     "--no-figures")
    assert redone.returncode == 0, redone.stderr
    stage = json.loads(redone.stdout)["stages"]["dft"]
    assert stage["requeued_changed_settings"] == 1 and stage["jobs"]["COMPLETED"] == 1
    (calc,) = (project / "calcs" / "t_Si.cif").iterdir()
    assert json.loads((calc / "result.json").read_text())["parameters"]["occupations"]["width"] == 0.1

    again = json.loads(dftflow("build-dataset", str(path), "--project", str(project), "--until", "dft", "--json",
                               "--no-figures").stdout)
    assert again["stages"]["dft"]["requeued_changed_settings"] == 0  # nothing changed since


@pytest.mark.slow
def test_workers_stop_when_the_build_that_started_them_is_killed(tmp_path: Path) -> None:
    # SIGTERM to the build alone (a scheduler's or a user's `kill`): its workers must not go on computing
    path = recipe(tmp_path, ["Si", "NaCl", "MgO", "LiF", "C_diamond"])
    project = tmp_path / "p"
    proc = subprocess.Popen([sys.executable, "-m", "dftflow", "build-dataset", str(path), "--project", str(project),
                             "--workers", "1", "--no-figures"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    db = project / "jobs.sqlite"
    try:
        assert wait_for_count(db, "SELECT COUNT(*) FROM jobs WHERE state='RUNNING'", 1, timeout=300, poll=0.1)
        with sqlite3.connect(db) as con:
            (worker,) = con.execute("SELECT pid FROM jobs WHERE state='RUNNING'").fetchone()
        assert worker and worker != proc.pid and pid_alive(worker)
        os.kill(proc.pid, 15)
        proc.wait(timeout=30)
        deadline = time.time() + 40  # a heartbeat period (10 s) and the job's own teardown
        while pid_alive(worker) and time.time() < deadline:
            time.sleep(0.5)
        assert not pid_alive(worker), "the worker outlived the build that started it"
        with sqlite3.connect(db) as con:
            done = con.execute("SELECT COUNT(*) FROM jobs WHERE state='COMPLETED'").fetchone()[0]
        assert done < 5
    finally:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
