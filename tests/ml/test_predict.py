"""Full-grid prediction in chunks: same values as one batch, any chunk size, CHGCAR out, rescaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Structure
from pymatgen.io.vasp import Chgcar

from dftflow.ml.graph import make_batch
from dftflow.ml.model import ChargE3Net, ModelConfig
from dftflow.ml.predict import default_grid, predict_grid, rescale, write_prediction_chgcar


@pytest.fixture(scope="module")
def model() -> ChargE3Net:
    torch.manual_seed(1)
    return ChargE3Net(ModelConfig(num_interactions=2, mul=16, lmax=1, num_basis=8, radial_neurons=16)).eval()


def test_chunked_grid_equals_one_batch(model, shared: Path, tmp_path: Path) -> None:
    s = Structure.from_file(shared / "fixtures" / "ecd_outcars" / "icsd-163383-O1Zn1_PBE" / "POSCAR")
    grid = (6, 6, 5)
    a = predict_grid(model, s, grid, chunk=7)["rho"]
    b = predict_grid(model, s, grid, chunk=10_000)["rho"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in grid), indexing="ij"), -1).reshape(-1, 3) / np.array(grid)
    batch = make_batch([{"cell": s.lattice.matrix, "positions": s.cart_coords, "numbers": [x.specie.Z for x in s],
                         "probe_positions": idx @ s.lattice.matrix}], model.config.cutoff)
    with torch.no_grad():
        direct = model(batch).numpy().reshape(grid)
    np.testing.assert_allclose(a, direct, rtol=1e-5, atol=1e-7)
    scaled, factor = rescale(np.abs(a) + 1e-3, s.volume, 18.0)  # an untrained model's sum can have any sign
    assert float(scaled.sum() * s.volume / scaled.size) == pytest.approx(18.0, rel=1e-6)
    path = tmp_path / "CHGCAR"
    write_prediction_chgcar(s, scaled, path)
    chg = Chgcar.from_file(str(path))
    assert chg.data["total"].shape == grid
    np.testing.assert_allclose(chg.data["total"] / s.volume, scaled, rtol=1e-5, atol=1e-8)
    assert default_grid(np.eye(3) * 4.0, 0.1) == (40, 40, 40)


def test_symmetric_prediction_equals_every_point(model, shared: Path) -> None:
    """One point per space-group orbit, copied, gives what evaluating every grid point gives."""
    fixtures = shared / "fixtures" / "ecd_outcars"
    for name, grid, max_fraction in (("icsd-163383-O1Zn1", (12, 12, 12), 0.1),  # F-43m: 24 ops on this grid
                                     ("icsd-1611-O3Pb1Ti1", (10, 10, 12), 0.25),  # P4mm: 8 ops
                                     ("icsd-163383-O1Zn1", (12, 12, 10), 0.6)):  # only the ops this grid allows
        s = Structure.from_file(fixtures / f"{name}_PBE" / "POSCAR")
        sym = predict_grid(model, s, grid, chunk=500)
        every = predict_grid(model, s, grid, symmetry=False)
        assert sym["points_evaluated"] <= max_fraction * np.prod(grid), (name, grid, sym["points_evaluated"])
        assert every["points_evaluated"] == np.prod(grid)
        np.testing.assert_allclose(sym["rho"], every["rho"], rtol=2e-5, atol=1e-6 * np.abs(every["rho"]).max())


def test_grid_orbits_hold_equal_values_of_a_real_vasp_density(shared: Path) -> None:
    """VASP symmetrises its density: on the real Si CHGCAR every orbit holds one value, and a wrong map would not."""
    from dftflow.ml.symmetry import grid_orbits

    chg = Chgcar.from_file(str(shared / "fixtures" / "vasp" / "Si_static_with_chgcar" / "outputs" / "CHGCAR.gz"))
    rho = chg.data["total"].reshape(-1)
    orbits = grid_orbits(chg.structure, rho.shape and chg.data["total"].shape)
    assert orbits.operations == 48 and orbits.reduction > 20
    spread = np.zeros(len(orbits.representatives))
    np.maximum.at(spread, orbits.inverse, np.abs(rho - rho[orbits.representatives][orbits.inverse]))
    assert spread.max() < 1e-4 * np.abs(rho).max()
    # the same check fails for orbits of a shifted grid (the map must be the right one)
    shifted = np.roll(chg.data["total"], 1, axis=0).reshape(-1)
    assert np.abs(shifted - shifted[orbits.representatives][orbits.inverse]).max() > 1e-2 * np.abs(rho).max()


def test_checkpoints_from_before_the_lean_readout_still_load(shared: Path, tmp_path: Path) -> None:
    """A checkpoint whose config predates ``scalar_readout`` holds the full last layer and loads as such."""
    from dftflow.ml.predict import load_model

    torch.manual_seed(2)
    config = ModelConfig(num_interactions=2, mul=16, lmax=1, num_basis=8, radial_neurons=16, scalar_readout=False)
    old = ChargE3Net(config).eval()
    settings = config.to_dict()
    del settings["scalar_readout"]
    torch.save({"model_config": settings, "model": old.state_dict()}, tmp_path / "old.pt")
    with pytest.raises(RuntimeError):  # the lean layer cannot hold these weights: the default would be wrong
        ChargE3Net(ModelConfig(**settings)).load_state_dict(old.state_dict())
    loaded, _ = load_model(tmp_path / "old.pt")
    assert loaded.config.scalar_readout is False
    s = Structure.from_file(shared / "fixtures" / "ecd_outcars" / "icsd-163383-O1Zn1_PBE" / "POSCAR")
    np.testing.assert_array_equal(predict_grid(loaded, s, (4, 4, 4))["rho"], predict_grid(old, s, (4, 4, 4))["rho"])
