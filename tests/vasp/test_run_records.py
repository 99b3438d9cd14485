"""What a VASP job records when its outputs or an earlier attempt's files are damaged.

A run must either use what it finds or say, in its notes, what it did instead:
a broken CONTCAR may not silently restart a relaxation, and an unreadable OUTCAR
may not silently change the next run's ISPIN.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from dftflow.vasp.jobs import VaspMaker, parse_run, run_vasp
from dftflow.vasp.outputs import oszicar_magnetization

STATIC = "fixtures/vasp/Si_mp_gga_relax/GGA_Static/outputs"
RELAX = "fixtures/vasp/Si_mp_gga_relax/GGA_Relax_1"


def _unpacked(shared: Path, tmp_path: Path, names=("vasprun.xml", "OUTCAR", "OSZICAR")) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    for name in names:
        (out / name).write_bytes(gzip.decompress((shared / STATIC / f"{name}.gz").read_bytes()))
    return out


def test_a_spin_polarised_run_reads_its_magnetisation_from_the_outcar(shared: Path, tmp_path: Path) -> None:
    result = parse_run(_unpacked(shared, tmp_path))
    assert result["magnetization"] == pytest.approx(0.0, abs=1e-3)
    assert result["magmoms"] is not None and len(result["magmoms"]) == 2
    assert result["notes"] == []


def test_an_unreadable_outcar_falls_back_to_the_oszicar_and_says_so(shared: Path, tmp_path: Path) -> None:
    run = _unpacked(shared, tmp_path)
    (run / "OSZICAR").write_text((run / "OSZICAR").read_text().replace("mag=    -0.0000", "mag=     1.2500"))
    (run / "OUTCAR").write_text("garbage\n")
    result = parse_run(run)
    assert result["magnetization"] == pytest.approx(1.25)  # the OSZICAR's, not a default
    assert result["magmoms"] is None
    assert any("OSZICAR" in n and "OUTCAR" in n for n in result["notes"]), result["notes"]


def test_no_magnetisation_anywhere_is_recorded_not_guessed(shared: Path, tmp_path: Path) -> None:
    run = _unpacked(shared, tmp_path, names=("vasprun.xml",))
    result = parse_run(run)
    assert result["magnetization"] is None
    assert any("magnetisation unknown" in n and "missing" in n for n in result["notes"]), result["notes"]


def test_oszicar_magnetization_reads_the_last_ionic_step(tmp_path: Path) -> None:
    path = tmp_path / "OSZICAR"
    path.write_text("DAV:   1    -0.1E+02\n   1 F= -.1E+02 E0= -.1E+02  d E =0.0  mag=     2.0000\n"
                    "DAV:   1    -0.1E+02\n   2 F= -.1E+02 E0= -.1E+02  d E =0.0  mag=     0.5000\n")
    assert oszicar_magnetization(path) == 0.5
    path.write_text("   1 F= -.1E+02 E0= -.1E+02  d E =0.0  mag=     NaN\n")
    assert oszicar_magnetization(path) is None
    path.write_text("   1 F= -.1E+02 E0= -.1E+02  d E =0.0\n")
    assert oszicar_magnetization(path) is None


def _si(shared: Path) -> Structure:
    text = gzip.decompress((shared / RELAX / "inputs" / "POSCAR.gz").read_bytes()).decode()
    return Structure.from_str(text, fmt="poscar")


@pytest.mark.parametrize("contcar", ["broken", "other"])
def test_a_rejected_contcar_restarts_the_relaxation_with_a_note(shared: Path, tmp_path: Path, vasp_double,
                                                                contcar: str) -> None:
    vasp_double()
    work = tmp_path / "job"
    work.mkdir()
    if contcar == "broken":
        (work / "CONTCAR").write_text("Si2\n1.0\n 3.8 0 0\n0 3.8\n")  # truncated lattice block
    else:
        Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(work / "CONTCAR"))
    kept = (work / "CONTCAR").read_text()
    result = run_vasp(VaspMaker(name="relax", inputset="mp-relax"), _si(shared), directory=work)
    assert result["converged_electronic"]
    note = next(n for n in result["notes"] if "CONTCAR of an earlier attempt" in n)
    assert ("unreadable" in note) if contcar == "broken" else ("holds NaCl, not Si" in note)
    assert (work / "CONTCAR.rejected").read_text() == kept  # nothing lost
    assert not any("continued from" in n for n in result["notes"])


def test_a_good_contcar_is_continued_from(shared: Path, tmp_path: Path, vasp_double) -> None:
    vasp_double()
    work = tmp_path / "job"
    work.mkdir()
    si = _si(shared)
    si.to(filename=str(work / "CONTCAR"))
    result = run_vasp(VaspMaker(name="relax", inputset="mp-relax"), si, directory=work)
    assert "continued from the CONTCAR of an interrupted attempt" in result["notes"]
    assert not (work / "CONTCAR.rejected").exists()
    shutil.rmtree(work)
