"""The occupancy head on VASP targets: harvest metadata, training, CHGCARs with predicted blocks, equivariance."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from scipy.spatial.transform import Rotation

from dftflow.ml.model import ChargE3Net, ModelConfig
from dftflow.ml.predict import predict_occupancies

SI = "fixtures/vasp/Si_static_with_chgcar/outputs"


def test_harvest_keeps_what_reads_the_blocks(si_vasp_dataset: Path) -> None:
    from dftflow.dataset.store import Dataset

    ds = Dataset(si_vasp_dataset)
    meta = ds.augmentation_meta("src|Si")
    record = ds.read("src|Si")
    ds.close()
    assert meta == {"layout": "vasp-rholm", "engine": "vasp", "lmaxmix": 2, "projector_l": {"Si": [0, 0, 1, 1, 2, 2]},
                    "potcars": {"Si": "PAW_PBE Si_GW 04May2012"}}
    assert [len(v) for v in record["augmentation"]["total"]] == [138, 138]
    (shard,) = (si_vasp_dataset / "shards").glob("*.h5")
    with h5py.File(shard) as f:
        assert (f.attrs["schema_version"], f.attrs["schema_minor"]) == (1, 2)


@pytest.fixture(scope="module")
def vasp_head_checkpoint(si_vasp_dataset: Path, tmp_path_factory) -> tuple[Path, dict]:
    """A small ChargE3Net trained jointly on the Si VASP density and its augmentation occupancies."""
    from dftflow.ml.config import TrainConfig
    from dftflow.ml.train import train

    out = tmp_path_factory.mktemp("vasp-head") / "fit"
    summary = train(TrainConfig.model_validate({
        "model": {"num_interactions": 1, "mul": 16, "lmax": 2, "num_basis": 8, "radial_neurons": 16,
                  "occupancy_layout": "vasp"},
        "data": {"dataset": str(si_vasp_dataset), "train_ids": ["src|Si"], "val_ids": ["src|Si"], "n_probes": 32,
                 "batch_size": 1, "val_probes": 200},
        "optim": {"lr": 0.01, "decay_steps": 50, "max_steps": 120, "val_every": 120, "checkpoint_every": 120},
        "occupancy_weight": 1.0, "out": str(out)}))
    return out / "checkpoint_last.pt", summary


def test_training_learns_the_augmentation_occupancies(vasp_head_checkpoint, si_vasp_dataset: Path,
                                                      shared: Path) -> None:
    from dftflow.dataset.loader import ProbeDataset
    from dftflow.density.chgcar import read_chgcar
    from dftflow.ml.predict import load_model

    path, summary = vasp_head_checkpoint
    model, ckpt = load_model(path)
    assert ckpt["model_config"]["occupancy"] == {"14": [0, 0, 1, 1, 2, 2]}
    assert ckpt["model_config"]["occupancy_layout"] == "vasp"
    truth = ProbeDataset(si_vasp_dataset, ["src|Si"]).augmentation_occupancies("src|Si")
    structure = read_chgcar(shared / SI / "CHGCAR.gz").structure
    predicted = predict_occupancies(model, structure)
    err = np.mean([np.abs(p - t).mean() for p, t in zip(predicted, truth, strict=True)])
    scale = np.mean([np.abs(t).mean() for t in truth])  # the error of predicting zeros
    print(f"Si VASP augmentation occupancies: MAE {err:.3g}, mean |value| {scale:.3g}")
    assert err < scale / 5, (err, scale)
    assert summary["occupancy_mae"]["Si"] == pytest.approx(err, rel=1e-3)


def test_predict_writes_the_blocks_vasp_reads(vasp_head_checkpoint, shared: Path, tmp_path: Path) -> None:
    """``dftflow predict``: the CHGCAR's blocks have the reference's count and sizes and are the predictions."""
    from pymatgen.io.vasp import Chgcar
    from typer.testing import CliRunner

    from dftflow.cli.app import app
    from dftflow.density.chgcar import read_chgcar
    from dftflow.ml.predict import load_model

    path, _ = vasp_head_checkpoint
    reference = Chgcar.from_file(str(shared / SI / "CHGCAR.gz"))
    reference.structure.to(filename=str(tmp_path / "POSCAR"))
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "POSCAR"), "--model", str(path), "--out",
                                      str(tmp_path / "out"), "--grid", "20,20,20", "--json"],
                                env={**os.environ, "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["occupancies"] == "predicted"
    written = Chgcar.from_file(row["chgcar"])
    assert sorted(written.data_aug["total"]) == sorted(reference.data_aug["total"]) == [1, 2]
    expected = predict_occupancies(load_model(path)[0], read_chgcar(row["chgcar"]).structure)
    for ion in (1, 2):
        block = written.data_aug["total"][ion]
        assert len(block) == len(reference.data_aug["total"][ion]) == 138
        np.testing.assert_allclose(block, expected[ion - 1], rtol=1e-6, atol=1e-12)  # E15.7 in the file
    assert np.abs(expected[0]).max() > 1e-2


def test_predicted_blocks_rotate_with_the_crystal() -> None:
    from dftflow.ml.vasp_occupancy import VaspOccupancyLayout

    torch.manual_seed(0)
    layouts = {"30": [2, 2, 0, 0, 1, 1], "8": [0, 0, 1, 1]}  # Zn and O POTCARs of the ECD runs
    model = ChargE3Net(ModelConfig(num_interactions=2, mul=24, lmax=2, num_basis=8, radial_neurons=16,
                                   occupancy=layouts, occupancy_layout="vasp")).double()
    model.eval()
    zno = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"],
                                    [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])
    R = Rotation.from_euler("zyx", [0.3, 1.2, -0.5]).as_matrix()
    rotated = Structure(Lattice(zno.lattice.matrix @ R.T), zno.species, zno.frac_coords)
    before = predict_occupancies(model, zno, dtype=torch.float64)
    after = predict_occupancies(model, rotated, dtype=torch.float64)
    for site, v0, v1 in zip(zno, before, after, strict=True):
        layout = model.occupancy_head.layouts[site.specie.Z]
        assert isinstance(layout, VaspOccupancyLayout) and v0.shape == (layout.size,)
        assert np.abs(v1 - v0).max() > 1e-3  # the rotation changes the blocks
        np.testing.assert_allclose(layout.rotate(v0, R), v1, atol=1e-5)


def test_accel_ml_arm_starts_from_the_predicted_blocks(vasp_head_checkpoint, shared: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """accel-eval's VASP predict step: CHGCAR.ml carries the head's blocks, CHGCAR.ml-true-occ the converged ones."""
    import gzip

    from dftflow.accel.vasp import VaspPredictMaker, run_vasp_predict
    from dftflow.density.chgcar import read_chgcar
    from dftflow.ml.predict import load_model

    path, _ = vasp_head_checkpoint
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "vasprun.xml").write_bytes(gzip.decompress((shared / SI / "vasprun.xml.gz").read_bytes()))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    converged = read_chgcar(shared / SI / "CHGCAR.gz")
    out = run_vasp_predict(VaspPredictMaker(model=str(path)), converged.structure, uid="Si",
                           reference={"chgcar": str(shared / SI / "CHGCAR.gz"), "dir": str(ref)})
    assert out["occupancies"] == "predicted"
    ml, true_occ = (read_chgcar(out["chgcar"][k]) for k in ("ml", "ml-true-occ"))
    expected = predict_occupancies(load_model(path)[0], converged.structure)
    for a in range(2):
        np.testing.assert_allclose(ml.augmentation["total"][a], expected[a], rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(true_occ.augmentation["total"][a], converged.augmentation["total"][a])
    np.testing.assert_array_equal(ml.total, true_occ.total)  # the same predicted grid in both
