"""The occupancy head: equivariant predictions, and training on real GPAW density matrices."""

from __future__ import annotations

from pathlib import Path

import gpaw  # noqa: F401 - installed by scripts/setup.sh: a broken build must fail here, not skip
import numpy as np
import pytest
import torch
from pymatgen.core import Element, Lattice, Structure
from scipy.spatial.transform import Rotation

from dftflow.ml.model import ChargE3Net, ModelConfig
from dftflow.ml.occupancy import gpaw_projector_l
from dftflow.ml.predict import predict_occupancies

DEMO = Path(__file__).resolve().parents[2] / "workflows" / "structures" / "demo"


def zno() -> Structure:
    return Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"],
                                     [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])


def test_predicted_density_matrices_rotate_with_the_crystal() -> None:
    torch.manual_seed(0)
    layouts = {"30": list(gpaw_projector_l(["Zn"])["Zn"]), "8": list(gpaw_projector_l(["O"])["O"])}
    model = ChargE3Net(ModelConfig(num_interactions=2, mul=24, lmax=2, num_basis=8, radial_neurons=16,
                                   occupancy=layouts)).double()
    model.eval()
    structure = zno()
    R = Rotation.from_euler("zyx", [0.3, 1.2, -0.5]).as_matrix()
    rotated = Structure(Lattice(structure.lattice.matrix @ R.T), structure.species, structure.frac_coords)
    before = predict_occupancies(model, structure, dtype=torch.float64)
    after = predict_occupancies(model, rotated, dtype=torch.float64)
    head = model.occupancy_head
    for site, D0, D1 in zip(structure, before, after, strict=True):
        layout = head.layouts[site.specie.Z]
        assert np.allclose(D0, D0.T) and np.abs(D0).max() > 1e-3
        np.testing.assert_allclose(layout.rotate(D0, R), D1, atol=1e-6)  # e3nn keeps float32 constants
    # translation and a periodic image change nothing
    moved = Structure(structure.lattice, structure.species, structure.frac_coords + [0.13, -0.4, 1.0])
    for D0, D1 in zip(before, predict_occupancies(model, moved, dtype=torch.float64), strict=True):
        np.testing.assert_allclose(D0, D1, atol=1e-6)


def test_the_atomic_reference_is_gpaws_start_and_an_untrained_head_predicts_it() -> None:
    """The head's reference equals the spin-summed D of GPAW's superposition-of-atoms start (spin-polarised
    NiO with U, Zn and O): a head that has learnt nothing gives exactly the ``atomic`` occupancies."""
    from dftflow.gpaw.params import gpaw_parameters, to_atoms
    from dftflow.gpaw.restart import initial_state
    from dftflow.inputsets import load_inputset, with_overrides
    from dftflow.ml.occupancy import OccupancyLayout, gpaw_atomic_density_matrix, gpaw_atomic_reference

    nio = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.17), ["Ni", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    for structure in (nio.get_primitive_structure(), zno()):
        iset = with_overrides(load_inputset("gpaw_pbe_static"), {"ecut": 250, "kpoint_density": 4})
        atoms = to_atoms(structure, iset)
        start = initial_state(atoms, gpaw_parameters(atoms, iset)).D_asii
        for atom, D in zip(atoms, start, strict=True):
            np.testing.assert_allclose(gpaw_atomic_density_matrix(atom.symbol), D.sum(axis=0), atol=1e-12)
    layouts = {str(Element(x).Z): list(l_j) for x, l_j in gpaw_projector_l(["Ni", "Zn", "O"]).items()}
    reference = gpaw_atomic_reference(layouts)
    for z, values in reference.items():  # a free atom is spherical: only the L = 0 irreps are non-zero
        layout = OccupancyLayout(tuple(layouts[z]))
        scalar = np.concatenate([[L == 0] * (2 * L + 1) for _, _, L in layout.blocks])
        assert np.abs(np.asarray(values)[~scalar]).max() < 1e-12 and np.abs(values).max() > 0.1
    torch.manual_seed(0)
    model = ChargE3Net(ModelConfig(num_interactions=2, mul=24, lmax=2, num_basis=8, radial_neurons=16,
                                   occupancy=layouts, occupancy_reference=reference)).double()
    structure = nio.get_primitive_structure()
    for site, D in zip(structure, predict_occupancies(model, structure, dtype=torch.float64), strict=True):
        np.testing.assert_allclose(D, gpaw_atomic_density_matrix(site.specie.symbol), atol=1e-12)


@pytest.fixture(scope="module")
def gpaw_si(tmp_path_factory) -> Path:
    """A real GPAW Si density with its density matrices, harvested into a dataset."""
    from dftflow.dataset.harvest import from_directory, harvest
    from dftflow.gpaw.jobs import run_static
    from dftflow.inputsets import load_inputset, with_overrides

    root = tmp_path_factory.mktemp("occ")
    structure = Structure.from_file(DEMO / "Si.cif").get_primitive_structure()
    iset = with_overrides(load_inputset("gpaw_pbe_static"), {"ecut": 250, "kpoint_density": 8})
    run_static(structure, iset, root / "src" / "Si")
    assert harvest(list(from_directory(root / "src")), root / "ds")["stored"] == 1
    return root / "ds"


def _config(dataset: Path, out: Path, **extra):
    from dftflow.ml.config import TrainConfig

    return TrainConfig.model_validate({
        "model": {"num_interactions": 2, "mul": 16, "lmax": 2, "num_basis": 8, "radial_neurons": 16},
        "data": {"dataset": str(dataset), "train_ids": ["src|Si"], "val_ids": ["src|Si"], "n_probes": 64,
                 "batch_size": 1, "val_probes": 500},
        "optim": {"lr": 0.01, "decay_steps": 50, "max_steps": 250, "val_every": 250, "checkpoint_every": 250},
        "out": str(out), **extra})


def test_joint_training_learns_the_density_matrices_better_than_the_atomic_guess(gpaw_si: Path,
                                                                                  tmp_path: Path) -> None:
    from dftflow.dataset.loader import ProbeDataset
    from dftflow.gpaw.params import gpaw_parameters, to_atoms
    from dftflow.gpaw.restart import initial_state
    from dftflow.inputsets import load_inputset, with_overrides
    from dftflow.ml.predict import load_model
    from dftflow.ml.train import train

    summary = train(_config(gpaw_si, tmp_path / "joint", occupancy_weight=1.0))
    model, ckpt = load_model(tmp_path / "joint" / "checkpoint_last.pt")
    assert ckpt["model_config"]["occupancy"] == {"14": [0, 1, 0, 1, 2]}
    assert ckpt["model_config"]["occupancy_reference"]["14"][0] != 0  # learnt as the change from the free atom
    truth = ProbeDataset(gpaw_si, ["src|Si"]).density_matrices("src|Si")
    structure = Structure.from_file(DEMO / "Si.cif").get_primitive_structure()
    predicted = predict_occupancies(model, structure)
    iset = with_overrides(load_inputset("gpaw_pbe_static"), {"ecut": 250, "kpoint_density": 8})
    atoms = to_atoms(structure, iset)
    atomic = [D.sum(axis=0) for D in initial_state(atoms, gpaw_parameters(atoms, iset)).D_asii]
    err = np.mean([np.abs(p - t).mean() for p, t in zip(predicted, truth, strict=True)])
    err_atomic = np.mean([np.abs(a - t).mean() for a, t in zip(atomic, truth, strict=True)])
    assert err < err_atomic / 2, (err, err_atomic)
    assert summary["occupancy_mae"]["Si"] == pytest.approx(err, rel=0.05)
    # dftflow predict writes them beside the CHGCAR for a GPAW restart
    from typer.testing import CliRunner

    from dftflow.cli.app import app

    structure.to(filename=str(tmp_path / "POSCAR"))
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "POSCAR"), "--model",
                                      str(tmp_path / "joint" / "checkpoint_last.pt"), "--grid", "12,12,12",
                                      "-o", str(tmp_path / "pred"), "--json"])
    assert result.exit_code == 0, result.output
    import json

    row, = json.loads(result.output)
    assert "predicted GPAW density matrices" in row["occupancies"]
    with np.load(Path(row["chgcar"]).parent / "density_matrices.npz") as saved:
        assert list(saved["symbols"]) == ["Si", "Si"]
        for a, D in enumerate(predicted):
            np.testing.assert_allclose(saved[f"D_{a}"], D, atol=1e-12)


def test_freeze_density_trains_only_the_head(gpaw_si: Path, tmp_path: Path) -> None:
    from dftflow.ml.checkpoint import load_checkpoint
    from dftflow.ml.train import train

    train(_config(gpaw_si, tmp_path / "density", **{"optim": {"max_steps": 3, "val_every": 3,
                                                              "checkpoint_every": 3}}))
    base = load_checkpoint(tmp_path / "density" / "checkpoint_last.pt")["model"]
    train(_config(gpaw_si, tmp_path / "head", occupancy_weight=1.0, freeze_density=True,
                  init_from=str(tmp_path / "density" / "checkpoint_last.pt"),
                  **{"optim": {"max_steps": 5, "val_every": 5, "checkpoint_every": 5}}))
    tuned = load_checkpoint(tmp_path / "head" / "checkpoint_last.pt")["model"]
    assert any(k.startswith("occupancy_head.") for k in tuned)
    for key, value in base.items():
        assert torch.equal(value, tuned[key]), key  # the density model is untouched
