"""relax → static for Si through custodian and the VASP double, run by the embedded executor."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from pymatgen.core import Structure
from pymatgen.io.vasp import Vasprun

from dftflow.execution.queue import JobQueue
from dftflow.execution.worker import flow_jobs, run_workers
from dftflow.vasp.jobs import vasp_flow

SI = "fixtures/vasp/Si_mp_gga_relax"


def si(shared: Path) -> Structure:
    text = gzip.decompress((shared / SI / "GGA_Relax_1" / "inputs" / "POSCAR.gz").read_bytes()).decode()
    return Structure.from_str(text, fmt="poscar")


def run_flow(tmp_path: Path, structure: Structure, env: dict[str, str]) -> dict:
    project = tmp_path / "project"
    queue = JobQueue(project / "jobs.sqlite")
    queue.add_flow("Si", flow_jobs(vasp_flow(structure, "Si", relax_set="mp-relax", static_set="mp-static")))
    queue.close()
    counts = run_workers(project / "jobs.sqlite", project, 1, env=env)
    queue = JobQueue(project / "jobs.sqlite")
    jobs = {j["name"]: j for j in queue.jobs()}
    queue.close()
    return {"counts": counts, "jobs": jobs}


def test_relax_then_static_matches_the_reference(shared: Path, tmp_path: Path, vasp_double) -> None:
    out = run_flow(tmp_path, si(shared), vasp_double())
    assert out["counts"]["COMPLETED"] == 2, {n: j["error"] for n, j in out["jobs"].items()}
    relax = out["jobs"]["relax"]["output"]["output"]
    static = out["jobs"]["static"]["output"]["output"]
    ref_relax = Vasprun(str(shared / SI / "GGA_Relax_1" / "outputs" / "vasprun.xml.gz"), parse_dos=False,
                        parse_eigen=False, parse_potcar_file=False)
    ref_static = Vasprun(str(shared / SI / "GGA_Static" / "outputs" / "vasprun.xml.gz"), parse_dos=False,
                         parse_eigen=False, parse_potcar_file=False)
    assert relax["energy"] == pytest.approx(ref_relax.final_energy)
    assert static["energy"] == pytest.approx(ref_static.final_energy)
    assert Structure.from_dict(relax["structure"]).lattice.abc == pytest.approx(ref_relax.final_structure.lattice.abc)
    # the static ran on the relaxed cell (the double checked its POSCAR against the reference's)
    assert static["incar"]["NSW"] == 0 and static["kpoints"]["mesh"] == [7, 7, 7]
    assert static["chgcar"] and Path(static["chgcar"]).stat().st_size > 1000
    assert static["scf_steps"] and all(n > 0 for n in static["scf_steps"])
    assert static["versions"]["vasp"] == ref_static.vasp_version
    assert Path(static["dir"], "custodian.json").exists()


def test_an_error_in_the_output_is_corrected_by_custodian_and_rerun(shared: Path, tmp_path: Path,
                                                                   vasp_double) -> None:
    env = vasp_double(inject={"GGA_Relax_1": {"stdout": "Tetrahedron method fails for NKPT<4", "times": 1,
                                              "allow": ["ISMEAR", "SIGMA"]}})
    out = run_flow(tmp_path, si(shared), env)
    assert out["counts"]["COMPLETED"] == 2, {n: j["error"] for n, j in out["jobs"].items()}
    relax = out["jobs"]["relax"]["output"]["output"]
    handled = [c for run in relax["corrections"] for c in (run if isinstance(run, list) else [run])]
    assert any("tet" in json.dumps(c) for c in handled), relax["corrections"]
    assert relax["incar"]["ISMEAR"] == -5  # the inputs as the set wrote them ...
    final_incar = (Path(relax["dir"]) / "INCAR").read_text()
    assert "ISMEAR = 0" in final_incar  # ... and custodian's correction on disk, VASP rerun with it
    assert (tmp_path / "double-state" / "GGA_Relax_1.runs").read_text() == "2"


def test_a_crash_no_handler_fixes_climbs_the_input_sets_ladder(shared: Path, tmp_path: Path, vasp_double) -> None:
    """custodian gives up on an unrecognised crash; the job reruns on the next rung of the ladder and completes."""
    inputset = tmp_path / "mp-static-ladder.yaml"
    text = (Path(__file__).parents[2] / "inputsets" / "mp-static.yaml").read_text()
    inputset.write_text(text.replace("name: mp-static", "name: mp-static-ladder")
                        + "ladder:\n  - name: all-band\n    reason: a test rung\n    incar: {ALGO: All}\n")
    env = vasp_double(inject={"GGA_Static": {"stdout": "forrtl: severe (174): SIGSEGV, segmentation fault",
                                             "returncode": 174, "times": 1, "allow": ["ALGO"]}})
    project = tmp_path / "project"
    queue = JobQueue(project / "jobs.sqlite")
    queue.add_flow("Si", flow_jobs(vasp_flow(si(shared), "Si", relax_set="mp-relax", static_set=str(inputset))))
    queue.close()
    counts = run_workers(project / "jobs.sqlite", project, 1, env=env)
    queue = JobQueue(project / "jobs.sqlite")
    jobs = {j["name"]: j for j in queue.jobs()}
    queue.close()
    assert counts["COMPLETED"] == 2, {n: j["error"] for n, j in jobs.items()}
    static = jobs["static"]["output"]["output"]
    assert [h["rung"] for h in static["ladder_history"]] == [0]
    assert "return code is 174" in static["ladder_history"][0]["error"]
    assert static["rung"] == 1 and static["incar"]["ALGO"] == "All"
    assert "ALGO = All" in (Path(static["dir"]) / "INCAR").read_text()  # what the double ran on the second try
    assert (tmp_path / "double-state" / "GGA_Static.runs").read_text() == "2"
    assert static["converged_electronic"]


def test_wrong_inputs_fail_with_the_doubles_reason(shared: Path, tmp_path: Path, vasp_double) -> None:
    env = vasp_double()
    structure = si(shared)
    structure.scale_lattice(structure.volume * 1.2)  # not the reference's cell
    out = run_flow(tmp_path, structure, env)
    assert out["counts"]["FAILED"] == 1
    assert "lattice" in out["jobs"]["relax"]["error"] or "k-mesh" in out["jobs"]["relax"]["error"]


def test_vasp_project_densities_are_harvested(shared: Path, tmp_path: Path, vasp_double) -> None:
    from dftflow.dataset.harvest import from_project, harvest
    from dftflow.dataset.store import Dataset

    out = run_flow(tmp_path, si(shared), vasp_double(chgcar_outcar=True))
    assert out["counts"]["COMPLETED"] == 2
    items = list(from_project(tmp_path / "project"))
    assert [i.material_id for i in items] == ["Si@PBE"]  # the static only: the relaxation keeps no density
    summary = harvest(items, tmp_path / "dataset")
    assert summary["stored"] == 1, summary
    ds = Dataset(tmp_path / "dataset")
    rec = ds.read("Si@PBE")
    ds.close()
    assert rec["engine"] == "vasp" and rec["nelect"] == 8.0 and rec["grid"] == [40, 40, 40]
    assert rec["settings"]["incar"]["NSW"] == 0 and rec["provenance"]["uid"] == "Si"
