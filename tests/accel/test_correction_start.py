"""Correction models: a start that is GPAW's atomic guess plus a learnt change of the smooth density and of D."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dftflow.accel.run import accel_eval
from dftflow.dataset.harvest import from_directory, harvest
from dftflow.dataset.store import Dataset
from dftflow.gpaw.jobs import run_static
from dftflow.gpaw.params import to_atoms
from dftflow.gpaw.restart import DensityState, GridConverter
from tests.helpers_gpaw import OVERRIDES, inputset, primitive


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Real GPAW statics of Si and C (diamond), harvested with their atomic guesses."""
    root = tmp_path_factory.mktemp("correction")
    for name in ("Si", "C_diamond"):
        run_static(primitive(name), inputset(), root / "src" / name)
    assert harvest(list(from_directory(root / "src")), root / "ds")["stored"] == 2
    return root / "ds"


def test_harvest_stores_the_change_from_the_atomic_guess(dataset: Path) -> None:
    """smooth_delta = nt − nt_atomic on the calculation's grid: the atomic guess plus it is the converged nt."""
    from ase.units import Bohr

    src = dataset.parent / "src" / "Si"
    final, guess = DensityState.load(src / "density.npz"), DensityState.load(src / "guess.npz")
    structure = primitive("Si")
    conv = GridConverter(to_atoms(structure, inputset()), json.loads((src / "result.json").read_text())["parameters"])
    np.testing.assert_allclose(guess.nt_sR, conv.atomic.nt_sR, atol=1e-12)  # what GPAW starts from by default
    ds = Dataset(dataset)
    delta = ds.grid("src|Si", "smooth_delta")[()]
    assert delta.shape == conv.grid
    np.testing.assert_allclose(guess.nt_sR.sum(0) + delta * Bohr**3, final.nt_sR.sum(0), atol=1e-6)
    assert np.abs(delta).max() > 0.01  # a real correction: bonding moves charge
    ds.close()


def correction_model(dataset: Path, out: Path, steps: int, ids: tuple[str, ...] = ("src|Si", "src|C_diamond"),
                     occupancy: bool = False) -> tuple[Path, dict]:
    """A small ChargE3Net of the change from GPAW's atomic guess (and of D, with ``occupancy``)."""
    from dftflow.ml.train import TrainConfig, train

    cfg = TrainConfig.model_validate({
        "model": {"num_interactions": 2, "mul": 16, "lmax": 2, "num_basis": 10, "radial_neurons": 32},
        "data": {"dataset": str(dataset), "train_ids": list(ids), "val_ids": list(ids[:1]),
                 "target": "smooth_delta", "n_probes": 300, "batch_size": len(ids), "val_probes": 0},
        "optim": {"lr": 0.01, "decay_steps": 50, "max_steps": steps, "val_every": steps, "checkpoint_every": steps},
        "occupancy_weight": 1.0 if occupancy else 0.0, "out": str(out)})
    summary = train(cfg)
    ckpt = torch.load(out / "checkpoint_last.pt", weights_only=False)
    assert ckpt["target"] == "smooth_delta"
    assert ckpt["train_numbers"] == sorted({int(z) for i in ids for z in Dataset(dataset).header(i)["numbers"]})
    return out / "checkpoint_best.pt", summary


def zeroed(checkpoint: Path, out: Path) -> Path:
    """The same model with its readout set to zero: a correction of exactly nothing."""
    ckpt = torch.load(checkpoint, weights_only=False)
    for key in ckpt["model"]:
        if key.startswith("readout."):
            ckpt["model"][key] = torch.zeros_like(ckpt["model"][key])
    torch.save(ckpt, out)
    return out


def steps_of(report: dict) -> dict[str, int]:
    [row] = report["materials"]
    return {arm: row[f"steps_{arm.replace('-', '_')}"] for arm in report["settings"]["arms"]}


def test_training_on_the_correction_learns_it(dataset: Path, tmp_path: Path) -> None:
    """ε on the correction starts at 1 (the atomic guess's own error) and falls well below it."""
    _, summary = correction_model(dataset, tmp_path / "fit", 300)
    assert summary["best_val_eps_mae"] < 0.5, summary


def test_zero_correction_reproduces_the_default_start_exactly(dataset: Path, tmp_path: Path) -> None:
    checkpoint, _ = correction_model(dataset, tmp_path / "fit", 20)
    zero = zeroed(checkpoint, tmp_path / "zero.pt")
    report = accel_eval(tmp_path / "eval", [("Si", primitive("Si"))], model=zero, arms=("default", "ml"),
                        overrides=OVERRIDES, nfixed=3, figures=False)
    assert report["problems"] == []
    steps = steps_of(report)
    [row] = report["materials"]
    assert steps["ml"] == steps["default"], steps
    assert row["energy_diff_ml"] < 1e-9
    predict = json.loads(next((tmp_path / "eval" / "calcs" / "Si").glob("*predict*/result.json")).read_text())
    assert predict["kind"] == "correction" and predict["fallback"] is None
    assert np.abs(np.load(predict["delta"])).max() == 0.0


def test_trained_correction_saves_steps_on_its_material(tmp_path: Path) -> None:
    """Li2O, whose default start needs many more steps than its converged density: a correction model
    (grid and D) trained on it starts closer, so the deployable arm needs fewer steps than the default."""
    run_static(primitive("Li2O"), inputset(), tmp_path / "src" / "Li2O")
    harvest(list(from_directory(tmp_path / "src")), tmp_path / "ds")
    checkpoint, summary = correction_model(tmp_path / "ds", tmp_path / "fit", 600, ids=("src|Li2O",), occupancy=True)
    assert summary["best_val_eps_mae"] < 0.2, summary
    report = accel_eval(tmp_path / "eval", [("Li2O", primitive("Li2O"))], model=checkpoint,
                        arms=("default", "ml", "oracle"), overrides=OVERRIDES, nfixed=3, figures=False)
    steps = steps_of(report)
    print("Li2O steps per arm:", steps)
    assert steps["oracle"] <= steps["ml"] < steps["default"], steps
    [row] = report["materials"]
    assert row["occupancies_ml"] == "predicted change" and row["energy_diff_ml"] < 1e-4


def test_an_unseen_element_falls_back_to_the_default_start_with_the_reason(dataset: Path, tmp_path: Path) -> None:
    checkpoint, _ = correction_model(dataset, tmp_path / "fit", 20)
    nacl = primitive("NaCl")
    report = accel_eval(tmp_path / "eval", [("NaCl", nacl)], model=checkpoint, arms=("default", "ml"),
                        overrides=OVERRIDES, nfixed=3, figures=False)
    [row] = report["materials"]
    assert "Cl" in row["fallback"] and "Na" in row["fallback"] and "not trained on" in row["fallback"]
    steps = steps_of(report)
    assert steps["ml"] == steps["default"]


def test_a_correction_that_moves_implausibly_many_electrons_falls_back_with_the_reason(dataset: Path,
                                                                                        tmp_path: Path) -> None:
    """A model far outside its data (here: its readout blown up 10⁴-fold) must not wreck the start: the
    prediction records the fraction of valence electrons it moves and the ml arm gets the default start."""
    checkpoint, _ = correction_model(dataset, tmp_path / "fit", 20)
    ckpt = torch.load(checkpoint, weights_only=False)
    for key in ckpt["model"]:
        if key.startswith("readout."):
            ckpt["model"][key] = ckpt["model"][key] * 1e4
    torch.save(ckpt, tmp_path / "wild.pt")
    for name, model in (("sane", checkpoint), ("wild", tmp_path / "wild.pt")):
        report = accel_eval(tmp_path / name, [("Si", primitive("Si"))], model=model, arms=("default", "ml"),
                            overrides=OVERRIDES, nfixed=3, figures=False)
        predict = json.loads(next((tmp_path / name / "calcs" / "Si").glob("*predict*/result.json")).read_text())
        [row] = report["materials"]
        delta = np.load(predict["delta"])
        moved = np.abs(delta).sum() * primitive("Si").volume / delta.size / 8  # 8 valence electrons
        assert predict["moved_fraction"] == pytest.approx(moved, rel=1e-6, abs=1e-6)
        if name == "sane":
            assert moved < 0.5 and row.get("fallback") is None
        else:
            assert moved > 0.5 and "valence electrons" in row["fallback"]
            steps = steps_of(report)
            assert steps["ml"] == steps["default"] and row["energy_diff_ml"] < 1e-9


def test_calibration_writes_the_chosen_factor_that_accel_eval_then_uses(dataset: Path, tmp_path: Path) -> None:
    from dftflow.accel.calibrate import calibrate, choose_scale, write_scale

    checkpoint, _ = correction_model(dataset, tmp_path / "fit", 300)
    result = calibrate(checkpoint, tmp_path / "cal", [("C", primitive("C_diamond"))], scales=[0.5, 1.0],
                       overrides=OVERRIDES)
    report = json.loads((tmp_path / "cal" / "accel.json").read_text())
    [row] = report["materials"]
    assert {row["steps_ml@0.5"], row["steps_ml@1"]} <= set(range(1, 200))
    assert result["correction_scale"] == choose_scale(report["materials"], [0.5, 1.0], 1.1)[0]
    assert [t["scale"] for t in result["table"]] == [0.5, 1.0]
    write_scale(checkpoint, result)
    assert torch.load(checkpoint, weights_only=False)["correction_scale"] == result["correction_scale"]
    # a plain ml arm now starts with the calibrated factor
    again = accel_eval(tmp_path / "eval", [("C", primitive("C_diamond"))], model=checkpoint, arms=("default", "ml"),
                       overrides=OVERRIDES, nfixed=3, figures=False)
    assert again["materials"][0]["correction_scale"] == result["correction_scale"]
