"""SCF step counts against independent counts of the same real VASP outputs."""

from __future__ import annotations

import gzip
import re

import pytest

from dftflow.errors import InputError
from dftflow.gpaw.log import gpaw_log_steps
from dftflow.vasp.outputs import oszicar_steps, outcar_steps


def _free_energy_headers(path) -> int:
    # VASP prints this lower-case block once per electronic step (the upper-case one once per ionic step)
    text = gzip.open(path, "rt", errors="replace").read()
    return len(re.findall(r"^\s*Free energy of the ion-electron system \(eV\)", text, flags=re.M))


def test_outcar_steps_match_an_independent_count_on_the_ecd_outcars(shared):
    outcars = sorted((shared / "fixtures" / "ecd_outcars").glob("*/OUTCAR.gz"))
    assert len(outcars) == 8
    counts = {}
    for path in outcars:
        steps = outcar_steps(path)
        assert len(steps) == 1, path  # statics
        assert steps[0] == _free_energy_headers(path), path
        counts[path.parent.name] = steps[0]
    # HSE starting from the PBE density (NELMDL 0) needs fewer steps than the PBE run of Fe10Si6
    assert counts["icsd-99966-Fe10Si6_PBE"] == 49
    assert counts["icsd-99966-Fe10Si6_HSE"] == 39


@pytest.mark.parametrize("run", ["GGA_Relax_1", "GGA_Relax_2", "GGA_Static"])
def test_oszicar_and_outcar_steps_match_vasprun_per_ionic_step(shared, run):
    from pymatgen.io.vasp import Oszicar, Vasprun

    outputs = shared / "fixtures" / "vasp" / "Si_mp_gga_relax" / run / "outputs"
    vr = Vasprun(str(outputs / "vasprun.xml.gz"), parse_dos=False, parse_eigen=False, parse_potcar_file=False)
    expected = [len(step["electronic_steps"]) for step in vr.ionic_steps]
    assert oszicar_steps(outputs / "OSZICAR.gz") == expected
    assert outcar_steps(outputs / "OUTCAR.gz") == expected
    assert [len(s) for s in Oszicar(str(outputs / "OSZICAR.gz")).electronic_steps] == expected


def test_hse_outcar_steps_match_vasprun(shared):
    from pymatgen.io.vasp import Vasprun

    outputs = shared / "fixtures" / "vasp" / "Si_hse_static" / "outputs"
    vr = Vasprun(str(outputs / "vasprun.xml.gz"), parse_dos=False, parse_eigen=False, parse_potcar_file=False)
    assert outcar_steps(outputs / "OUTCAR.gz") == [len(s["electronic_steps"]) for s in vr.ionic_steps]


def test_truncated_oszicar_still_counts_its_steps(tmp_path, shared):
    text = gzip.open(shared / "fixtures" / "vasp" / "Si_mp_gga_relax" / "GGA_Relax_1" / "outputs" / "OSZICAR.gz",
                     "rt").read().splitlines()
    first_ionic = next(i for i, line in enumerate(text) if " F= " in line)
    cut = tmp_path / "OSZICAR"
    cut.write_text("\n".join(text[:first_ionic - 2]) + "\n")  # killed during the first ionic step
    assert oszicar_steps(cut) == [sum(1 for line in text[:first_ionic - 2] if line.startswith(("DAV:", "RMM:")))]


def test_gpaw_log_separates_fixed_density_steps(tmp_path):
    log = tmp_path / "gpaw.txt"
    log.write_text(
        "SCF iterations\n|iter     |     time |      energy | eigst |  dens |\n"
        "|iter:   1| 08:14:03 |  -10.714079 | -0.08 |       |\n"
        "|iter:   2| 08:14:03 |  -10.703114 | -2.40 |      c|\n"
        "SCF iterations\n|iter     |     time |      energy | eigst |  dens |\n"
        "|iter:   1| 08:14:03 |  -10.712345c| -0.08 |       |\n"
        "|iter:   2| 08:14:03 |  -10.703114 | -2.40 | -0.79 |\n"
        "|iter:   3| 08:14:03 |  -10.602774 | -2.11 | -0.81c|\n"
        "SCF iterations\n|iter     |     time |      energy | eigst |  dens |\n"
        "|iter:   1| 08:14:04 |  -10.602770 | -5.08 | -4.79 |\n")
    steps = gpaw_log_steps(log)
    assert (steps.fixed, steps.scf, steps.total) == (2, [3, 1], 6)
    assert steps.first_scf_energy == -10.712345  # the first SCF loop's first row, not a fixed step's


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        oszicar_steps(tmp_path / "OSZICAR")
