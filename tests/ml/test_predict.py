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
    scaled, factor = rescale(a, s.volume, 18.0)
    assert float(scaled.sum() * s.volume / scaled.size) == pytest.approx(18.0, rel=1e-6)
    path = tmp_path / "CHGCAR"
    write_prediction_chgcar(s, scaled, path)
    chg = Chgcar.from_file(str(path))
    assert chg.data["total"].shape == grid
    np.testing.assert_allclose(chg.data["total"] / s.volume, scaled, rtol=1e-5, atol=1e-8)
    assert default_grid(np.eye(3) * 4.0, 0.1) == (40, 40, 40)
