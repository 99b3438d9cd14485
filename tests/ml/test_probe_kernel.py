"""The probe kernel (full-grid inference) gives the grid of the model's own probe layers, edge for edge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Structure

from dftflow.ml.graph import PeriodicImages, make_batch
from dftflow.ml.model import ChargE3Net, ModelConfig
from dftflow.ml.predict import load_model, predict_grid
from dftflow.ml.probe_kernel import ProbeKernel

#: the largest relative difference (to the grid's largest value) allowed between the two paths
TOLERANCE = 1e-5


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def poscar(shared: Path, name: str) -> Structure:
    return Structure.from_file(shared / "fixtures" / "ecd_outcars" / f"{name}_PBE" / "POSCAR")


def random_probes(shared: Path, name: str, n: int, seed: int, cutoff: float,
                  dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A batch of one ECD cell with ``n`` probes at random points of it."""
    s = poscar(shared, name)
    probes = np.random.default_rng(seed).random((n, 3)) @ s.lattice.matrix
    return make_batch([{"cell": s.lattice.matrix, "positions": s.cart_coords, "numbers": [x.specie.Z for x in s],
                        "probe_positions": probes}], cutoff, dtype=dtype)


def test_bundled_model_on_every_point_matches_the_definition(shared: Path) -> None:
    """The shipped (trained) model, every point of a real cell's grid: kernel against ``probe_density``."""
    from dftflow.models import default_model

    model, _ = load_model(default_model())
    s = poscar(shared, "icsd-99966-Fe10Si6")  # 16 atoms: many senders, several images each
    grid = (10, 10, 8)
    fast = predict_grid(model, s, grid, symmetry=False)
    slow = predict_grid(model, s, grid, symmetry=False, kernel=False)
    assert fast["points_evaluated"] == slow["points_evaluated"] == np.prod(grid)
    assert np.abs(slow["rho"]).max() > 0
    assert max_rel_diff(fast["rho"], slow["rho"]) <= TOLERANCE


@pytest.mark.parametrize(("lmax", "spin", "dtype"), [(2, False, torch.float32), (3, True, torch.float64)])
def test_kernel_equals_probe_density_and_notices_a_dropped_edge(shared: Path, lmax: int, spin: bool,
                                                                dtype: torch.dtype) -> None:
    """Every block of the tensor product (l ≤ 3, both parities), spin's two channels, float64 too; and the
    comparison is sharp enough to see one atom → probe edge missing out of thousands."""
    torch.manual_seed(3)
    model = ChargE3Net(ModelConfig(num_interactions=3, mul=24, lmax=lmax, num_basis=10, radial_neurons=24,
                                   spin=spin)).to(dtype).eval()
    batch = random_probes(shared, "icsd-1611-O3Pb1Ti1", 300, 0, model.config.cutoff, dtype)
    assert len(batch["probe_edge_sender"]) > 3000
    with torch.no_grad():
        atoms = model.atom_features(batch)
        slow = model.probe_density(batch, atoms).numpy()
    kernel = ProbeKernel(model, atoms)
    assert (kernel.side.tables is not None) == (dtype == torch.float32)  # float32: tabulated radial networks
    for route in (0.0, float("inf")):  # the edge route, then the pair route
        kernel.pair_ratio = route
        fast = kernel(batch).numpy()
        assert fast.shape == slow.shape == ((300, 2) if spin else (300,))
        assert max_rel_diff(fast, slow) <= (TOLERANCE if dtype == torch.float32 else 1e-12)

    dropped = dict(batch)
    keep = torch.ones(len(batch["probe_edge_sender"]), dtype=torch.bool)
    keep[1234] = False
    for key in ("probe_edge_sender", "probe_edge_receiver", "probe_edge_shift"):
        dropped[key] = batch[key][keep]
    for route in (0.0, float("inf")):
        kernel.pair_ratio = route
        assert max_rel_diff(kernel(dropped).numpy(), slow) > 10 * TOLERANCE


def test_kernel_with_large_model_settings(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What large models take (the paper's size): the radial networks themselves, e3nn's linear modules, the
    edge route only — the same function."""
    from dftflow.ml import probe_kernel

    monkeypatch.setattr(probe_kernel._Model, "max_table_columns", 0)
    monkeypatch.setattr(probe_kernel._Layer, "max_dense", 0)
    monkeypatch.setattr(probe_kernel.ProbeKernel, "max_pair_matrix", 0)
    torch.manual_seed(6)
    model = ChargE3Net(ModelConfig(num_interactions=2, mul=24, lmax=3, num_basis=10, radial_neurons=24)).eval()
    batch = random_probes(shared, "icsd-183198-Cd1N1", 200, 2, model.config.cutoff)
    with torch.no_grad():
        atoms = model.atom_features(batch)
        slow = model.probe_density(batch, atoms).numpy()
    kernel = ProbeKernel(model, atoms)
    assert kernel.side.tables is None and kernel.q is None and kernel.edges_per_chunk is None
    assert not any(layer.dense for layer in kernel.side.layers)
    assert max_rel_diff(kernel(batch).numpy(), slow) <= TOLERANCE


def test_kernel_follows_changed_weights_and_tabulates_closely(shared: Path) -> None:
    """The model's side of the kernel is built once per model and rebuilt when a weight changes (training in
    the same process); the radial table matches the networks far below the tolerance."""
    torch.manual_seed(4)
    model = ChargE3Net(ModelConfig(num_interactions=2, mul=16, lmax=2, num_basis=8, radial_neurons=16)).eval()
    batch = random_probes(shared, "icsd-163383-O1Zn1", 200, 1, model.config.cutoff)
    with torch.no_grad():
        atoms = model.atom_features(batch)
    first = ProbeKernel(model, atoms)
    assert ProbeKernel(model, atoms).side is first.side
    side = first.side
    r = torch.linspace(0.0, model.config.cutoff, 3001)
    tabulated = side.weights(model, r, pairs=True)
    side.tables, tables = None, side.tables
    try:
        with torch.no_grad():
            exact = side.weights(model, r, pairs=True)  # the networks themselves (float32)
    finally:
        side.tables = tables
    for t_layer, e_layer in zip(tabulated, exact):
        for g in e_layer:
            scale = float(e_layer[g].abs().max())
            assert scale > 0
            assert float((t_layer[g] - e_layer[g]).abs().max()) <= 1e-6 * scale
    with torch.no_grad():
        model.probe_convs[0].radial[0].weight.mul_(1.5)
        atoms = model.atom_features(batch)
        slow = model.probe_density(batch, atoms).numpy()
    second = ProbeKernel(model, atoms)
    assert second.side is not first.side
    assert max_rel_diff(second(batch).numpy(), slow) <= TOLERANCE


def test_predict_grid_with_a_dropped_edge_is_caught(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole-grid check (as the benchmark makes it) fails when one chunk's graph loses an edge."""
    torch.manual_seed(5)
    model = ChargE3Net(ModelConfig(num_interactions=2, mul=16, lmax=2, num_basis=8, radial_neurons=16)).eval()
    s = poscar(shared, "icsd-183198-Cd1N1")
    grid = (8, 8, 8)
    good = predict_grid(model, s, grid, symmetry=False)["rho"]
    assert max_rel_diff(good, predict_grid(model, s, grid, symmetry=False, kernel=False)["rho"]) <= TOLERANCE
    edges_to = PeriodicImages.edges_to

    def drop_one(self, probes):
        edges = edges_to(self, probes)
        edges.sender, edges.receiver, edges.shift = edges.sender[1:], edges.receiver[1:], edges.shift[1:]
        return edges

    monkeypatch.setattr(PeriodicImages, "edges_to", drop_one)
    assert max_rel_diff(predict_grid(model, s, grid, symmetry=False)["rho"], good) > 10 * TOLERANCE
