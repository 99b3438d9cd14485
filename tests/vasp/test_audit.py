"""`dftflow inputs diff`: ECD's OUTCARs match the ECD sets on every field the sets claim; a wrong U or POTCAR shows."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dftflow.cli.app import app
from dftflow.resources import resolve
from dftflow.vasp.audit import diff_run, read_outcar_inputs

RUNS = ["icsd-1611-O3Pb1Ti1", "icsd-163383-O1Zn1", "icsd-183198-Cd1N1", "icsd-99966-Fe10Si6"]
HSE_RUNG = {"icsd-1611-O3Pb1Ti1": 0, "icsd-163383-O1Zn1": 0, "icsd-183198-Cd1N1": 1, "icsd-99966-Fe10Si6": 2}


def _run(shared: Path, material: str, functional: str) -> Path:
    return shared / "fixtures" / "ecd_outcars" / f"{material}_{functional}"


@pytest.mark.parametrize("functional", ["PBE", "HSE"])
@pytest.mark.parametrize("material", RUNS)
def test_ecd_runs_match_the_ecd_sets(shared: Path, material: str, functional: str) -> None:
    from pymatgen.core import Structure

    d = _run(shared, material, functional)
    result = diff_run(Structure.from_file(d / "POSCAR"), d / "OUTCAR.gz")
    assert result.inputset == ("ecd-hse06-static" if functional == "HSE" else "ecd-pbe-static")
    assert result.rung == (HSE_RUNG[material] if functional == "HSE" else 0)
    compared = {f.field for f in result.fields}
    assert {"ENCUT", "EDIFF", "LDAU", "LMAXMIX", "ISPIN", "POTCAR", "KPOINTS", "ALGO", "PREC"} <= compared
    assert len(result.fields) >= 33
    # the only misses are the set's documented deviations (LCHARG, ICHARG of some HSE runs)
    assert [(f.field, f.run) for f in result.misses if not f.deliberate] == []
    assert {f.field for f in result.misses} <= {"LCHARG", "ICHARG"}


def test_a_directory_of_runs_gives_the_parity_table(shared: Path) -> None:
    res = CliRunner().invoke(app, ["inputs", "diff", str(shared / "fixtures" / "ecd_outcars"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)["parity"]
    assert summary["runs"] == 8 and summary["total"] >= 270
    assert summary["total"] - summary["matched"] == summary["deliberate_misses"] == 4
    assert summary["fraction_without_deliberate"] == 1.0
    assert summary["misses_by_field"] == {"LCHARG": 2, "ICHARG": 2}
    text = CliRunner().invoke(app, ["inputs", "diff", str(shared / "fixtures" / "ecd_outcars")]).output
    assert "parity" in text and "98.6 %" in text


def _copy_run(shared: Path, material: str, functional: str, dest: Path, edit=None, poscar: bool = True) -> Path:
    src = _run(shared, material, functional)
    dest.mkdir(parents=True)
    with gzip.open(src / "OUTCAR.gz", "rt") as fh:
        text = fh.read()
    if edit:
        text = edit(text)
    (dest / "OUTCAR").write_text(text)
    if poscar:
        shutil.copy(src / "POSCAR", dest / "POSCAR")
    return dest


def test_a_wrong_u_in_a_run_is_reported(shared: Path, tmp_path: Path) -> None:
    def wrong_u(text: str) -> str:  # the run used MP-like U 6.5 on Zn instead of AFLOW's 7.5
        return text.replace("LDAUU =   0.0  7.5", "LDAUU =   0.0  6.5")

    d = _copy_run(shared, "icsd-163383-O1Zn1", "PBE", tmp_path / "ZnO", wrong_u)
    res = CliRunner().invoke(app, ["inputs", "diff", str(d / "POSCAR"), str(d / "OUTCAR"), "--json"])
    assert res.exit_code == 0, res.output
    misses = {f["field"]: f for f in json.loads(res.output)["fields"] if not f["match"]}
    assert set(misses) == {"LDAUU"}
    assert misses["LDAUU"]["run"] == [0.0, 6.5] and misses["LDAUU"]["inputset"] == [0.0, 7.5]
    table = CliRunner().invoke(app, ["inputs", "diff", str(d / "POSCAR"), str(d / "OUTCAR")]).output
    assert "LDAUU" in table and "6.5" in table and "34/35" in table


def _set_with(tmp_path: Path, potcars: dict[str, str] | None = None, u: dict[str, float] | None = None) -> Path:
    base = yaml.safe_load(resolve("inputsets", "ecd-pbe-static.yaml").read_text())
    table = yaml.safe_load(resolve("inputsets", "potcars_vasp_recommended.yaml").read_text())
    table["symbols"].update(potcars or {})
    hub = yaml.safe_load(resolve("inputsets", "hubbard_u.yaml").read_text())
    for el, value in (u or {}).items():
        hub["values"][el]["U"] = value
    (tmp_path / "potcars.yaml").write_text(yaml.safe_dump(table))
    (tmp_path / "u.yaml").write_text(yaml.safe_dump(hub))
    base["potcars"] = "potcars.yaml"
    base["hubbard"]["table"] = "u.yaml"
    path = tmp_path / "broken-set.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def test_a_wrong_potcar_or_u_in_the_set_is_reported(shared: Path, tmp_path: Path) -> None:
    d = _run(shared, "icsd-99966-Fe10Si6", "PBE")
    res = CliRunner().invoke(app, ["inputs", "diff", str(d / "POSCAR"), str(d / "OUTCAR.gz"), "--set",
                                   str(_set_with(tmp_path, potcars={"Fe": "Fe_pv"}, u={"Fe": 5.3})), "--json"])
    assert res.exit_code == 0, res.output
    misses = {f["field"]: f for f in json.loads(res.output)["fields"] if not f["match"]}
    assert set(misses) == {"POTCAR", "LDAUU"}
    assert misses["POTCAR"]["run"] == ["Fe", "Si"] and misses["POTCAR"]["inputset"] == ["Fe_pv", "Si"]
    assert misses["LDAUU"]["run"] == [4.6, 0.0]


def test_a_run_without_poscar_uses_the_outcar_structure(shared: Path, tmp_path: Path) -> None:
    _copy_run(shared, "icsd-183198-Cd1N1", "PBE", tmp_path / "runs" / "CdN", poscar=False)
    res = CliRunner().invoke(app, ["inputs", "diff", str(tmp_path / "runs"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["parity"]["matched"] == data["parity"]["total"] and data["runs"][0]["run"] == "CdN"


def test_outcar_fields_are_read_as_printed(shared: Path) -> None:
    run = read_outcar_inputs(_run(shared, "icsd-1611-O3Pb1Ti1", "PBE") / "OUTCAR.gz")
    assert run["potcar_symbols"] == ["O", "Pb_d", "Ti_sv"]
    assert run["incar"]["LDAUL"] == [-1, -1, 2] and run["incar"]["LDAUU"] == [0.0, 0.0, 4.4]
    assert run["incar"]["ALGO"] == "Normal" and run["incar"]["ENCUT"] == 520.0 and run["kpoints"]["nkpts"] == 196


def test_not_an_outcar_is_a_clear_error(tmp_path: Path, shared: Path) -> None:
    bad = tmp_path / "OUTCAR"
    bad.write_text("hello\n")
    poscar = _run(shared, "icsd-163383-O1Zn1", "PBE") / "POSCAR"
    res = CliRunner().invoke(app, ["inputs", "diff", str(poscar), str(bad)])
    assert res.exit_code != 0 and "Startparameter" in str(res.exception or res.output)
