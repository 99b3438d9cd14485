"""accel-eval on GPAW: real SCF restarts from a model trained on a real GPAW density."""

from __future__ import annotations

import json
from pathlib import Path

import gpaw  # noqa: F401 - installed by scripts/setup.sh: a broken build must fail here, not skip
import numpy as np
import pytest
from pymatgen.core import Structure

from dftflow.gpaw.jobs import run_static
from dftflow.gpaw.log import gpaw_log_steps
from dftflow.gpaw.params import to_atoms
from dftflow.gpaw.restart import DensityState, GridConverter
from tests.helpers_gpaw import OVERRIDES, inputset, primitive


@pytest.mark.parametrize("name", ["Si", "NiO"])
def test_total_density_and_gpaw_density_convert_exactly(name: str, tmp_path: Path) -> None:
    """CHGCAR total = nt/Bohr³ + compensation(D), both ways, spin-polarised too."""
    from dftflow.density.chgcar import read_chgcar

    structure = primitive(name)
    result = run_static(structure, inputset(), tmp_path)
    truth = DensityState.load(tmp_path / "density.npz")
    conv = GridConverter(to_atoms(structure, inputset()), result["parameters"])
    chgcar = read_chgcar(tmp_path / "CHGCAR")
    total = conv.total(truth)
    assert conv.grid == chgcar.total.shape
    np.testing.assert_allclose(total.sum(0), chgcar.total / structure.volume, atol=1e-6 * np.abs(total).max())
    magnetization = total[0] - total[1] if conv.nspins == 2 else None
    back = conv.state(total.sum(0), truth.D_asii, magnetization=magnetization)
    np.testing.assert_allclose(back.nt_sR, truth.nt_sR, atol=1e-10)
    # the same total with other density matrices is another GPAW density with the same total
    other = conv.state(total.sum(0), conv.atomic.D_asii, magnetization=magnetization)
    assert np.abs(other.nt_sR - truth.nt_sR).max() > 1e-4
    np.testing.assert_allclose(conv.total(other).sum(0), total.sum(0), atol=1e-10)
    assert conv.nvalence == result["nvalence"]


def train_on(name: str, root: Path) -> tuple[Path, Path]:
    """A small ChargE3Net with an occupancy head trained on the real GPAW density of one demo crystal
    (these very settings); returns the checkpoint and the crystal's POSCAR."""
    from dftflow.dataset.harvest import from_directory, harvest
    from dftflow.ml.train import TrainConfig, train

    structure = primitive(name)
    structure.to(filename=str(root / f"{name}.vasp"), fmt="poscar")
    run_static(structure, inputset(), root / "src" / name)
    assert harvest(list(from_directory(root / "src")), root / "ds")["stored"] == 1
    cfg = TrainConfig.model_validate({
        "model": {"num_interactions": 2, "mul": 24, "lmax": 2, "num_basis": 10, "radial_neurons": 32},
        "data": {"dataset": str(root / "ds"), "train_ids": [f"src|{name}"], "val_ids": [f"src|{name}"],
                 "n_probes": 300, "batch_size": 1, "val_probes": 3000},
        "optim": {"lr": 0.02, "decay_steps": 40, "max_steps": 500, "val_every": 100, "checkpoint_every": 500},
        "delta_saed": True, "saed_probes": 6000, "occupancy_weight": 1.0, "out": str(root / "fit")})
    summary = train(cfg)
    assert summary["best_val_eps_mae"] < 0.03, summary
    for element, mae in summary["occupancy_mae"].items():
        assert mae < 0.01, (element, summary["occupancy_mae"])
    return root / "fit" / "checkpoint_best.pt", root / f"{name}.vasp"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    return train_on("Si", tmp_path_factory.mktemp("accel"))


def test_predicted_occupancies_start_better_than_atomic_ones(tmp_path: Path) -> None:
    """LiF, whose Li density matrix is far from the free atom's: the deployable arm (predicted grid and
    predicted D) starts far closer to the converged energy than the same grid with GPAW's atomic D, and
    needs no more steps (the step counts differ by one step or none, depending on the trained model)."""
    from dftflow.accel.run import accel_eval

    checkpoint, poscar = train_on("LiF", tmp_path)
    report = accel_eval(tmp_path / "eval", [("LiF", Structure.from_file(poscar))], model=checkpoint,
                        arms=("default", "ml", "ml-atomic-occ", "ml-true-occ"), overrides=OVERRIDES, nfixed=3,
                        occupancies="predicted", figures=False)
    assert report["problems"] == []
    [row] = report["materials"]
    steps = {arm: row[f"steps_{arm.replace('-', '_')}"] for arm in ("default", "ml", "ml_atomic_occ", "ml_true_occ")}
    print("LiF steps per arm:", steps)
    errors = {arm: row[f"start_error_{arm}"] for arm in ("ml", "ml_atomic_occ", "ml_true_occ")}
    print("LiF start energy error per arm (eV/atom):", errors)
    assert row["occupancies_ml"] == "predicted" and row["occupancy_note"] is None
    assert errors["ml"] < 0.3 * errors["ml_atomic_occ"], errors
    assert errors["ml"] < 2 * errors["ml_true_occ"] + 0.01, errors  # the predicted D is nearly the true one
    assert steps["ml"] <= steps["ml_atomic_occ"], steps


def test_arms_on_a_trained_material_order_as_expected(trained, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dftflow.cli.app import app

    checkpoint, poscar = trained
    out = tmp_path / "eval"
    args = ["accel-eval", str(poscar), "--model", str(checkpoint), "--out", str(out),
            "--arms", "default,ml,ml-atomic-occ,ml-true-occ,oracle", "--set", "ecut=300",
            "--set", "kpoint_density=12", "--nfixed", "3", "--occupancies", "predicted", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["problems"] == []
    [row] = report["materials"]
    steps = {arm: row[f"steps_{arm.replace('-', '_')}"] for arm in report["settings"]["arms"]}
    print("steps per arm:", steps)
    # the floor, then the published protocol, then the default guess
    assert steps["oracle"] < steps["ml-true-occ"] <= steps["default"], steps
    assert row["ratio_oracle"] == pytest.approx(steps["oracle"] / steps["default"])
    assert row["optimal_ratio"] == pytest.approx(1 / steps["default"])
    assert row["metal"] is False and row["magnetic"] is False and row["gap"] > 0.3
    assert row["inference_s"] > 0 and row["inference_per_scf_iteration"] > 0
    for arm in steps:  # every arm converged to the same energy
        if arm != "default":
            assert row[f"energy_diff_{arm.replace('-', '_')}"] < 1e-4
    # the counts equal those of GPAW's own log, fixed-density steps the same in every arm
    sources = {}
    for arm_dir in (out / "calcs" / "Si").iterdir():
        arm_result = json.loads((arm_dir / "result.json").read_text())
        if "arm" not in arm_result:
            assert arm_result["density_matrices"] and arm_result["occupancy_s"] < arm_result["seconds"]
            continue
        sources[arm_result["arm"]] = arm_result["occupancies"]
        logged = gpaw_log_steps(arm_dir / "gpaw.txt")
        assert logged.fixed == arm_result["n_fixed"] == 3
        assert logged.scf == [arm_result["n_scf"]]
    # the model has an occupancy head: the deployable arm starts from its predicted density matrices
    assert sources == {"default": "atomic", "ml": "predicted", "ml-atomic-occ": "atomic",
                       "ml-true-occ": "converged", "oracle": "converged"}
    assert (out / "accel.csv").read_text().count("\n") == 2
    assert {Path(p).name for p in report["figures"]} == {"steps_per_material.png", "ratio_distribution.png"}
    assert report["settings"]["versions"]["gpaw"].startswith("26.")

    # resumable: a rerun finds every arm done and runs nothing
    again = json.loads(CliRunner().invoke(app, args).stdout)
    assert again["materials"] == report["materials"]
    # other settings in the same directory are refused, not mixed
    other = list(args)
    other[other.index("--nfixed") + 1] = "2"
    changed = CliRunner().invoke(app, other)
    assert changed.exit_code != 0 and "nfixed" in str(changed.exception)


def test_predicted_density_matches_the_calculation_grid(trained, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from dftflow.accel.gpaw import PredictStartMaker, run_predict

    checkpoint, poscar = trained
    structure = Structure.from_file(poscar)
    monkeypatch.chdir(tmp_path)  # run_predict writes into the job's working directory
    out = run_predict(PredictStartMaker(model=str(checkpoint), overrides=OVERRIDES), structure)
    rho = np.load(out["rho"])
    conv = GridConverter(to_atoms(structure, inputset()), to_params(structure))
    assert rho.shape == conv.grid == tuple(out["grid"])
    assert rho.sum() * structure.volume / rho.size == pytest.approx(8.0, rel=1e-6)
    assert abs(out["scale"] - 1) < 0.05  # the model's own electron count was already close


def to_params(structure: Structure) -> dict:
    from dftflow.gpaw.params import gpaw_parameters

    return gpaw_parameters(to_atoms(structure, inputset()), inputset())
