"""ChargE3Net's symmetries on real structures: rotation, translation, permutation, periodic images, supercells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Structure
from scipy.spatial.transform import Rotation

from dftflow.ml.graph import atom_edges, make_batch, probe_edges
from dftflow.ml.model import ChargE3Net, ModelConfig

CUTOFF = 4.0


@pytest.fixture(scope="module")
def model() -> ChargE3Net:
    torch.manual_seed(0)
    m = ChargE3Net(ModelConfig(num_interactions=2, mul=24, lmax=2, num_basis=8, radial_neurons=16,
                               cutoff=CUTOFF))
    return m.double().eval()


@pytest.fixture(scope="module")
def structures(shared: Path) -> dict[str, Structure]:
    root = shared / "fixtures" / "ecd_outcars"
    return {name: Structure.from_file(root / f"{name}_PBE" / "POSCAR")
            for name in ("icsd-1611-O3Pb1Ti1", "icsd-99966-Fe10Si6", "icsd-163383-O1Zn1")}


def system(structure: Structure, probes: np.ndarray) -> dict:
    return {"cell": structure.lattice.matrix, "positions": structure.cart_coords,
            "numbers": [s.specie.Z for s in structure], "probe_positions": probes}


def predict(model: ChargE3Net, *systems: dict) -> np.ndarray:
    with torch.no_grad():
        return model(make_batch(list(systems), CUTOFF, dtype=torch.float64)).numpy()


def random_probes(structure: Structure, n: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3)) @ structure.lattice.matrix


def test_graph_matches_pymatgen_neighbours(structures) -> None:
    for s in structures.values():
        edges = atom_edges(s.cart_coords, s.lattice.matrix, CUTOFF)
        ours = sorted(zip(edges.sender, edges.receiver, map(tuple, edges.shift)))
        center, neighbor, images, _ = s.get_neighbor_list(CUTOFF)
        # pymatgen: neighbour j of centre i sits at frac_j + image; ours: sender j at pos_j + shift
        theirs = sorted(zip(neighbor, center, map(tuple, images.astype(int))))
        assert ours == theirs


def test_small_cell_sees_all_periodic_images() -> None:
    thin = Structure([[1.2, 0, 0], [0, 5.0, 0], [0, 0, 5.0]], ["H"], [[0, 0, 0]])  # cutoff > 3 cell heights
    edges = probe_edges(thin.cart_coords, thin.lattice.matrix, np.array([[0.6, 0.0, 0.0]]), CUTOFF)
    senders = thin.cart_coords[edges.sender] + edges.shift @ thin.lattice.matrix
    dist = np.linalg.norm(np.array([[0.6, 0, 0]]) - senders, axis=1)
    expected = [abs(0.6 - 1.2 * k) for k in range(-4, 5) if abs(0.6 - 1.2 * k) < CUTOFF]
    assert sorted(dist.round(9)) == sorted(np.round(expected, 9))


def test_rotation_invariance(model, structures) -> None:
    for s in structures.values():
        probes = random_probes(s)
        base = predict(model, system(s, probes))
        R = Rotation.random(random_state=1).as_matrix()
        rotated = {"cell": s.lattice.matrix @ R.T, "positions": s.cart_coords @ R.T,
                   "numbers": [x.specie.Z for x in s], "probe_positions": probes @ R.T}
        assert np.abs(predict(model, rotated) - base).max() <= 1e-5 * np.abs(base).max()


def test_reflection_and_translation(model, structures) -> None:
    s = structures["icsd-1611-O3Pb1Ti1"]
    probes = random_probes(s)
    base = predict(model, system(s, probes))
    t = np.array([0.37, -1.1, 2.9])
    moved = {**system(s, probes + t), "positions": s.cart_coords + t}
    np.testing.assert_allclose(predict(model, moved), base, rtol=1e-9, atol=1e-12)
    mirror = np.diag([1.0, 1.0, -1.0])  # densities are scalars: even under inversion/mirror too
    mirrored = {"cell": s.lattice.matrix @ mirror, "positions": s.cart_coords @ mirror,
                "numbers": [x.specie.Z for x in s], "probe_positions": probes @ mirror}
    np.testing.assert_allclose(predict(model, mirrored), base, rtol=1e-9, atol=1e-12)


def test_permutation_periodic_image_and_supercell(model, structures) -> None:
    s = structures["icsd-99966-Fe10Si6"]
    probes = random_probes(s, seed=3)
    base = predict(model, system(s, probes))
    perm = np.random.default_rng(0).permutation(len(s))
    permuted = {"cell": s.lattice.matrix, "positions": s.cart_coords[perm],
                "numbers": [s[i].specie.Z for i in perm], "probe_positions": probes}
    np.testing.assert_allclose(predict(model, permuted), base, rtol=1e-9, atol=1e-12)
    imaged = system(s, probes)
    imaged["positions"] = s.cart_coords + np.array([2, -1, 1]) @ s.lattice.matrix * (np.arange(len(s)) % 2)[:, None]
    np.testing.assert_allclose(predict(model, imaged), base, rtol=1e-9, atol=1e-12)
    sc = s.copy()
    sc.make_supercell([2, 1, 1])
    np.testing.assert_allclose(predict(model, system(sc, probes)), base, rtol=1e-9, atol=1e-12)
    # probes outside the home cell see the same density as their periodic copies inside it
    shifted = probes + np.array([1, 0, -2]) @ s.lattice.matrix
    np.testing.assert_allclose(predict(model, system(s, shifted)), base, rtol=1e-9, atol=1e-12)


def test_batching_two_structures_equals_one_at_a_time(model, structures) -> None:
    a, b = structures["icsd-1611-O3Pb1Ti1"], structures["icsd-163383-O1Zn1"]
    pa, pb = random_probes(a, 30), random_probes(b, 25, seed=5)
    together = predict(model, system(a, pa), system(b, pb))
    np.testing.assert_allclose(together, np.concatenate([predict(model, system(a, pa)),
                                                         predict(model, system(b, pb))]), rtol=1e-10, atol=1e-12)


def test_invariant_and_spin_variants(structures) -> None:
    s = structures["icsd-163383-O1Zn1"]
    torch.manual_seed(0)
    inv = ChargE3Net(ModelConfig(num_interactions=2, mul=16, lmax=0, num_basis=8, radial_neurons=16)).double()
    spin = ChargE3Net(ModelConfig(num_interactions=2, mul=16, lmax=1, num_basis=8, radial_neurons=16,
                                  spin=True)).double()
    probes = random_probes(s, 10)
    assert predict(inv, system(s, probes)).shape == (10,)
    assert predict(spin, system(s, probes)).shape == (10, 2)


def test_sender_tensor_product_is_e3nns() -> None:
    """The per-sender evaluation of every convolution equals e3nn's tensor product, values and gradients."""
    from dftflow.ml.model import SenderTensorProduct  # noqa: F401 - the evaluation under test

    torch.manual_seed(3)
    net = ChargE3Net(ModelConfig(num_interactions=2, mul=24, lmax=2, num_basis=8, radial_neurons=16)).double()
    for conv in [*net.atom_convs, *net.probe_convs]:
        n_nodes, n_edges = 4, 200
        x = torch.randn(n_nodes, conv.irreps_sender.dim, dtype=torch.float64, requires_grad=True)
        sender = torch.sort(torch.randint(0, n_nodes - 1, (n_edges,)))[0]  # node 3 sends nothing
        sh = torch.randn(n_edges, conv.tp.irreps_in2.dim, dtype=torch.float64)
        w = torch.randn(n_edges, conv.tp.weight_numel, dtype=torch.float64, requires_grad=True)
        counts = torch.bincount(sender, minlength=n_nodes).tolist()
        ref = conv.tp(x[sender], sh, w)
        ours = conv.sender_tp.to_e3nn(conv.sender_tp(x, counts, sh, w))
        with torch.no_grad():
            fast = conv.sender_tp.to_e3nn(conv.sender_tp(x, counts, sh, w))
        scale = ref.abs().max()
        assert (ours - ref).abs().max() < 1e-6 * scale and (fast - ref).abs().max() < 1e-6 * scale
        g_ref = torch.autograd.grad((ref * ref.detach()).sum(), (x, w))
        g_ours = torch.autograd.grad((ours * ref.detach()).sum(), (x, w))
        for a, b in zip(g_ours, g_ref):
            assert (a - b).abs().max() < 1e-6 * b.abs().max()
