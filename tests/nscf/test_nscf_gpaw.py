"""nscf-eval on GPAW: one non-self-consistent step at a fixed density against the reference SCF.

The method check holds the *converged* density fixed: the step must give back
the SCF's energy, forces and gaps. GPAW's atomic start is the control that
shows the comparison can fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import gpaw  # noqa: F401 - installed by scripts/setup.sh: a broken build must fail here, not skip
import numpy as np
import pytest

from dftflow.gpaw.jobs import _prepare
from dftflow.gpaw.nscf import nscf_from_density, properties
from dftflow.gpaw.restart import scf_from_density, state_of
from dftflow.nscf.report import errors
from tests.helpers_gpaw import OVERRIDES, inputset, primitive


def displaced(name: str):
    """The primitive demo crystal with its first atom moved by 0.02 (fractional): nonzero forces."""
    structure = primitive(name)
    structure.translate_sites([0], [0.02, 0.0, 0.0])
    return structure


@pytest.fixture(scope="module", params=["Si", "LiF"])
def runs(request, tmp_path_factory) -> dict:
    """The reference SCF and the non-self-consistent steps from its converged density and from the atoms."""
    root = tmp_path_factory.mktemp(request.param)
    atoms, params = _prepare(displaced(request.param), inputset(), root)
    ref = scf_from_density(atoms, params, None, txt=str(root / "scf.txt"))
    truth = state_of(ref["dft"])
    oracle = nscf_from_density(atoms, params, truth, txt=str(root / "oracle.txt"))
    default = nscf_from_density(atoms, params, None, txt=str(root / "default.txt"))
    return {"name": request.param, "scf": properties(ref["dft"]), "truth": truth,
            "oracle": oracle, "default": default}


def test_converged_density_gives_the_scf_properties(runs: dict) -> None:
    """The method check: at the converged density one non-self-consistent step is the SCF."""
    scf, oracle = runs["scf"], runs["oracle"]
    err = errors(oracle, scf)
    print(f"{runs['name']} oracle errors (eV, eV/atom, eV/Å):", {k: f"{v:.2e}" for k, v in err.items()})
    assert np.abs(np.asarray(scf["forces"])).max() > 0.05  # the displaced atom makes the force check real
    assert err["energy"] < 1e-4
    assert err["gap_direct"] < 1e-3 and err["gap_indirect"] < 1e-3
    assert err["force_max"] < 3e-3
    assert err["band_energy"] < 1e-3
    assert oracle["density_change"] == 0.0  # neither the grid nor a density matrix moved
    assert oracle["n_iter"] >= 2  # the wave functions were converged, not taken from the LCAO start


def test_atomic_start_is_clearly_worse_than_the_converged_density(runs: dict) -> None:
    """The control: the same step from GPAW's atomic guess misses every property by far more."""
    scf = runs["scf"]
    oracle, default = errors(runs["oracle"], scf), errors(runs["default"], scf)
    print(f"{runs['name']} default-start errors (eV, eV/atom, eV/Å):", {k: f"{v:.3g}" for k, v in default.items()})
    assert default["energy"] > 1e-2  # 10 meV/atom, ten times chemical accuracy
    assert default["force_max"] > 0.03
    assert default["gap_indirect"] > 0.043
    for key in oracle:
        assert default[key] > 100 * oracle[key], key
    assert runs["default"]["density_change"] == 0.0


def test_band_gaps_direct_and_indirect() -> None:
    """Gaps from (spin, k, band) eigenvalues: indirect across k-points, direct at one k-point, 0 for a metal."""
    from dftflow.gpaw.nscf import band_gaps

    eigs = np.array([[[-1.0, 2.0], [-0.5, 1.5], [-2.0, 1.0]]])  # VBM -0.5 at k1, CBM 1.0 at k2
    assert band_gaps(eigs, 0.0) == {"gap_direct": 2.0, "gap_indirect": 1.5, "metal": False}
    down = np.array([[[-0.2, 1.2], [-3.0, 3.0], [-3.0, 3.0]]])  # the other spin: direct 1.4 at k0
    spin = np.concatenate([eigs, down])
    assert band_gaps(spin, 0.0) == pytest.approx({"gap_direct": 1.4, "gap_indirect": 1.2, "metal": False})
    metal = np.array([[[-1.0, 0.5], [-0.2, -0.1]]])  # band 2 crosses the Fermi level
    assert band_gaps(metal, 0.0) == {"gap_direct": 0.0, "gap_indirect": 0.0, "metal": True}


def test_hybrid_functional_is_refused(tmp_path: Path) -> None:
    """HSE06 needs the orbitals for its potential: a density alone cannot define the step."""
    from typer.testing import CliRunner

    from dftflow.cli.app import app
    from dftflow.gpaw.params import EngineError

    poscar = tmp_path / "Si.vasp"
    primitive("Si").to(filename=str(poscar), fmt="poscar")
    result = CliRunner().invoke(app, ["nscf-eval", str(poscar), "--start", "oracle", "--inputset",
                                      "gpaw_hse06_static", "--set", "ecut=200", "--set", "kpoint_density=4",
                                      "--out", str(tmp_path / "eval")])
    assert result.exit_code != 0
    message = " ".join(str(result.exception or result.output).split())
    assert "hybrid functional" in message and "HSE06" in message and "orbitals" in message
    assert not (tmp_path / "eval" / "jobs.sqlite").exists()
    with pytest.raises(EngineError, match="hybrid functional"):
        nscf_from_density(None, {"xc": "HSE06"}, None)  # type: ignore[arg-type]


def test_cli_reports_writes_and_resumes(tmp_path: Path) -> None:
    """nscf-eval: JSON fields per material and aggregated, CSV and PNG written, a rerun computes nothing."""
    from typer.testing import CliRunner

    from dftflow.cli.app import app

    poscar = tmp_path / "Si_displaced.vasp"
    displaced("Si").to(filename=str(poscar), fmt="poscar")
    out = tmp_path / "eval"
    args = ["nscf-eval", str(poscar), "--start", "oracle,default", "--out", str(out), "--json"]
    for key, value in OVERRIDES.items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["problems"] == [] and report["jobs"]["COMPLETED"] == 3
    [row] = report["materials"]
    assert row["uid"] == "Si_displaced" and row["natoms"] == 2 and row["metal"] is False
    assert row["gap_indirect"] > 0.1 and row["max_force"] > 0.05
    for prop in ("energy", "force_max", "force_mae", "gap_direct", "gap_indirect", "band_energy"):
        assert row[f"{prop}_err_oracle"] < 3e-3, prop
        assert row[f"{prop}_err_default"] > 10 * row[f"{prop}_err_oracle"], prop
        for start in ("oracle", "default"):
            stats = report["summary"][start][prop]
            assert stats["n"] == 1 and stats["mae"] == stats["max"] == row[f"{prop}_err_{start}"]
    assert row["occupancies_oracle"] == "converged" and row["occupancies_default"] == "atomic"
    assert report["chemical_accuracy"] == {"energy": 1e-3, "force": 0.030, "gap": 0.043}
    assert report["settings"]["starts"] == ["oracle", "default"]
    csv_lines = (out / "nscf.csv").read_text().splitlines()
    assert len(csv_lines) == 2 and "energy_err_oracle" in csv_lines[0]
    [figure] = report["figures"]
    assert Path(figure).name == "nscf_errors.png" and Path(figure).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "nscf.json").read_text())["materials"] == report["materials"]

    # resumable: the rerun finds every job done, touches no calculation and reports the same numbers
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("calcs/*/*/result.json")}
    assert len(stamps) == 3
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["materials"] == report["materials"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("calcs/*/*/result.json")} == stamps
    # other settings in the same directory are refused, not mixed
    other = list(args)
    other[other.index("--start") + 1] = "default"
    changed = CliRunner().invoke(app, other)
    assert changed.exit_code != 0 and "starts" in str(changed.exception)
