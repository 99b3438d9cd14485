"""nscf-eval on VASP: the reference static, then ICHARG = 11 runs under custodian, through the VASP double.

The double has no real ICHARG = 11 output to replay. What it can replay
honestly is the oracle step: at the static's own converged density the
fixed-density eigenvalues are the static's, so it replays the static for an
ICHARG = 11 run whose inputs match it and whose CHGCAR is that density, byte
for byte (tests/vasp_double/vasp_std). For any other density (the ml start)
it fails after logging what it read, as there is no real run to replay.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.vasp import Incar, Vasprun

from dftflow.density.chgcar import read_chgcar
from dftflow.errors import InputError
from dftflow.nscf.run import nscf_eval

STATIC = "fixtures/vasp/Si_mp_gga_relax/GGA_Static"
CHGCAR_RUN = "fixtures/vasp/Si_static_with_chgcar/outputs"


def si(shared: Path) -> Structure:
    text = gzip.decompress((shared / STATIC / "inputs" / "POSCAR.gz").read_bytes()).decode()
    return Structure.from_str(text, fmt="poscar")


@pytest.fixture(scope="module")
def vasp_head_model(si_vasp_dataset: Path, tmp_path_factory) -> Path:
    """A (barely trained) model with a VASP occupancy head from the real Si CHGCAR: its blocks fit the POTCAR."""
    from dftflow.ml.config import TrainConfig
    from dftflow.ml.train import train

    out = tmp_path_factory.mktemp("vasp-head") / "fit"
    train(TrainConfig.model_validate({
        "model": {"num_interactions": 1, "mul": 8, "lmax": 2, "num_basis": 6, "radial_neurons": 8,
                  "occupancy_layout": "vasp"},
        "data": {"dataset": str(si_vasp_dataset), "train_ids": ["src|Si"], "val_ids": ["src|Si"], "n_probes": 32,
                 "batch_size": 1, "val_probes": 200},
        "optim": {"max_steps": 2, "val_every": 2, "checkpoint_every": 2},
        "delta_saed": True, "saed_probes": 2000, "occupancy_weight": 1.0, "out": str(out)}))
    return out / "checkpoint_last.pt"


def test_vasp_oracle_step_gives_the_static_gaps(shared: Path, tmp_path: Path, vasp_double,
                                                vasp_head_model: Path) -> None:
    """ICHARG = 11 inputs and CHGCARs as claimed; the oracle's gaps are the reference SCF's; no energy/forces."""
    from dftflow.ml.predict import load_model, predict_occupancies

    vasp_double()
    out = tmp_path / "eval"
    report = nscf_eval(out, [("Si", si(shared))], model=vasp_head_model, starts=("ml", "oracle"),
                       inputset="mp-static", figures=True)
    # scf, predict and oracle completed; the ml step reached "VASP" with the right inputs, which has no real
    # run for that density to replay
    assert report["jobs"]["COMPLETED"] == 3, report["problems"]
    [problem] = report["problems"]
    assert problem["job"] == "nscf ml" and "no real run to replay" in problem["error"]

    reads = {Path(r["dir"]).name.rsplit("-", 1)[0]: r
             for r in map(json.loads, (tmp_path / "double-state" / "reads.jsonl").read_text().splitlines())}
    reference = read_chgcar(shared / CHGCAR_RUN / "CHGCAR.gz")
    sizes = [len(block) for block in reference.augmentation["total"]]
    assert (reads["nscf_scf"]["ICHARG"], reads["nscf_scf"]["ISTART"]) == ("2", "0")
    assert "chgcar_grid" not in reads["nscf_scf"]  # the reference starts from VASP's atoms
    for start in ("oracle", "ml"):
        read = reads[f"nscf_{start}"]
        assert (read["ICHARG"], read["ISTART"]) == ("11", "0"), start
        assert read["chgcar_grid"] == list(reference.grid), start
        assert read["augmentation_sizes"] == sizes == [138, 138], start  # ml: the model's VASP head
    assert reads["nscf_oracle"]["chgcar_is_reference"] is True
    assert reads["nscf_ml"]["chgcar_is_reference"] is False

    results = {r["start"]: r for r in map(json.loads, (p.read_text() for p in out.glob("calcs/*/*/result.json")))
               if "start" in r}
    scf_incar = Incar.from_file(Path(results["scf"]["dir"]) / "INCAR")
    assert scf_incar["ICHARG"] == 2 and scf_incar["LCHARG"] is True
    for start in ("oracle", "ml"):
        [path] = out.glob(f"calcs/Si/nscf_{start}-*/INCAR")
        incar = Incar.from_file(path)
        assert incar["ICHARG"] == 11 and incar["ISTART"] == 0 and incar["NSW"] == 0 and incar["LCHARG"] is False
        assert incar.get("LMAXMIX") == scf_incar.get("LMAXMIX")  # the CHGCAR's occupancies are read as written
        same = {k: v for k, v in incar.items() if k not in ("ICHARG", "LCHARG")}
        assert same == {k: v for k, v in scf_incar.items() if k not in ("ICHARG", "LCHARG")}, start

    # the ml start's CHGCAR: NELECT electrons on the reference's grid, the head's blocks with the POTCAR's sizes
    [predict_dir] = out.glob("calcs/Si/nscf_predict-*")
    ml = read_chgcar(predict_dir / "CHGCAR.ml")
    assert ml.grid == reference.grid
    assert float(ml.total.sum(dtype=np.float64)) / ml.total.size == pytest.approx(8.0, rel=1e-6)
    expected = predict_occupancies(load_model(vasp_head_model)[0], ml.structure)
    assert [len(b) for b in ml.augmentation["total"]] == sizes
    for mine, theirs in zip(ml.augmentation["total"], expected, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-12)  # E15.7 in the file
    # the oracle held the reference's CHGCAR, byte for byte (the double checked it too)
    assert (Path(results["oracle"]["dir"]) / "CHGCAR").read_bytes() == Path(results["scf"]["chgcar"]).read_bytes()

    # gaps: the reference's are pymatgen's of the real static; the oracle step gives them back exactly
    truth = Vasprun(str(shared / STATIC / "outputs" / "vasprun.xml.gz"), parse_dos=False, parse_eigen=True,
                    parse_potcar_file=False)
    gap, _, _, direct = truth.eigenvalue_band_properties
    scf, oracle = results["scf"], results["oracle"]
    assert direct is False and scf["gap_indirect"] == pytest.approx(gap, abs=1e-6) and scf["metal"] is False
    assert scf["gap_direct"] > scf["gap_indirect"] + 0.1  # Si: the direct gap is at another k-point
    assert scf["electrons"] == oracle["electrons"] == pytest.approx(8.0, abs=1e-5)
    assert oracle["energy"] is None and oracle["forces"] is None and "ICHARG = 11" in oracle["unavailable"]["energy"]
    assert scf["energy"] == pytest.approx(truth.final_energy)

    [row] = report["materials"]
    assert row["gap_indirect"] == pytest.approx(gap, abs=1e-6)
    assert row["gap_direct_err_oracle"] == 0.0 and row["gap_indirect_err_oracle"] == 0.0
    assert row["band_energy_err_oracle"] == 0.0 and row["occupancies_oracle"] == "converged"
    for prop in ("energy", "force_max", "force_mae"):
        assert f"{prop}_err_oracle" not in row
        stats = report["summary"]["oracle"][prop]
        assert stats["n"] == 0 and stats["mae"] is None and "consistent total energy" in stats["not_available"]
        assert report["not_available"]["oracle"][prop] == stats["not_available"]
    assert report["summary"]["oracle"]["gap_indirect"] == {"n": 1, "mae": 0.0, "max": 0.0}
    assert report["settings"]["engine"] == "vasp"
    header = (out / "nscf.csv").read_text().splitlines()[0].split(",")
    assert "gap_direct_err_oracle" in header and "energy_err_oracle" not in header
    assert Path(report["figures"][0]).read_bytes()[:4] == b"\x89PNG"


def test_vasp_refuses_the_default_start_and_hybrids(tmp_path: Path) -> None:
    """No CHGCAR of VASP's atomic guess, no density-only Hamiltonian for HSE06, no relaxation as the reference:
    refused before any job."""
    structure = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    cases = [(("default",), "mp-static", {}, ["ICHARG = 11", "CHGCAR", "atomic"]),
             (("oracle",), "ecd-hse06-static", {}, ["hybrid functional", "HSE06", "orbitals"]),
             (("oracle",), "mp-static", {"LHFCALC": True, "HFSCREEN": 0.2}, ["hybrid functional", "HSE06"]),
             (("oracle",), "mp-relax", {}, ["relaxation", "static"])]
    for i, (starts, inputset, overrides, words) in enumerate(cases):
        out = tmp_path / f"eval{i}"
        with pytest.raises(InputError) as err:
            nscf_eval(out, [("Si", structure)], model=None, starts=starts, inputset=inputset, overrides=overrides)
        for word in words:
            assert word in str(err.value), (inputset, str(err.value))
        assert not (out / "jobs.sqlite").exists()


def test_fixed_density_inputs_keep_the_reference_lmaxmix() -> None:
    """LMAXMIX by the input set's rule (4 with U on d, 6 with U on f), the same in the static and the step."""
    from dftflow.nscf.vasp import NSCF_TAGS, SCF_TAGS
    from dftflow.vasp.inputs import resolve_inputs

    zno = Structure(Lattice.hexagonal(3.25, 5.21), ["Zn", "Zn", "O", "O"],
                    [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, 0.382], [2 / 3, 1 / 3, 0.882]])
    ceo2 = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.41), ["Ce", "O"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    for structure, lmaxmix in ((zno, 4), (ceo2.get_primitive_structure(), 6), (si, None)):
        scf = resolve_inputs(structure, "ecd-pbe-static", overrides=[SCF_TAGS]).incar
        step = resolve_inputs(structure, "ecd-pbe-static", overrides=[NSCF_TAGS]).incar
        assert step.get("LMAXMIX") == scf.get("LMAXMIX") == lmaxmix, structure.composition
        assert (step["ICHARG"], step["ISTART"], step["NSW"], step["LCHARG"]) == (11, 0, 0, False)
        assert (scf["ICHARG"], scf["LCHARG"]) == (2, True)
        assert {k: v for k, v in step.items() if k not in ("ICHARG", "LCHARG")} == \
            {k: v for k, v in scf.items() if k not in ("ICHARG", "LCHARG")}


def test_vasp_gaps_from_occupations() -> None:
    """Occupied = occupation above ½; a band with occupied and empty states is a metal."""
    from dftflow.nscf import gaps

    eigs = np.array([[[-1.0, 2.0], [-0.5, 1.5], [-2.0, 1.0]]])
    occs = np.array([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    assert gaps(eigs, occs > 0.5, occs <= 0.5) == {"gap_direct": 2.0, "gap_indirect": 1.5, "metal": False}
    occs[0, 2] = [0.0, 0.0]  # band 0 empty at k2 but full elsewhere: it crosses the Fermi level
    assert gaps(eigs, occs > 0.5, occs <= 0.5)["metal"] is True
