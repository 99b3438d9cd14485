"""The torch loader (probes and full-grid slabs) and the ChargE3Net export."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dftflow.cli.app import app
from dftflow.dataset.loader import ProbeDataset, collate_probes, iter_grid
from dftflow.dataset.split import make_split, read_entries
from dftflow.dataset.store import ShardWriter

LATTICES = {
    "tri": np.array([[4.1, 0.0, 0.0], [0.9, 3.7, 0.0], [-0.6, 0.8, 5.3]]),
    "hex": np.array([[3.2, 0.0, 0.0], [-1.6, 2.771281, 0.0], [0.0, 0.0, 5.2]]),
    "cub": np.eye(3) * 3.0,
}
GRIDS = {"tri": (10, 12, 14), "hex": (9, 9, 16), "cub": (6, 6, 6)}


def coded(shape) -> np.ndarray:
    """A grid whose value says where it is: 1 + i + 100 j + 10000 k (exact in float32)."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (1 + i + 100 * j + 10000 * k).astype(np.float64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    w = ShardWriter(root, max_materials=2)
    for name, lattice in LATTICES.items():
        shape = GRIDS[name]
        total = coded(shape)
        rec = {"total": total, "lattice": lattice, "frac_coords": [[0, 0, 0], [0.25, 0.5, 0.75]],
               "numbers": [14, 8], "functional": "PBE", "formula": "SiO", "provenance": {"uid": name}}
        if name == "hex":
            rec["diff"] = -total
        assert w.claim(name)
        w.write(name, rec)
    w.close()
    return root


def decode(values: np.ndarray, shape) -> np.ndarray:
    v = values.astype(np.int64) - 1
    return np.stack([v % 100, (v // 100) % 100, v // 10000], axis=-1) / np.asarray(shape)


def test_probes_sit_where_their_values_say(dataset: Path) -> None:
    ds = ProbeDataset(dataset, n_probes=50, seed=3, spin=True)
    assert len(ds) == 3
    for idx in range(3):
        item = ds[idx]
        name, shape = item["material_id"], GRIDS[item["material_id"]]
        lattice = LATTICES[name]
        assert item["probe_positions"].shape == (50, 3) and item["density"].dtype == torch.float32
        frac = decode(item["density"].numpy(), shape)
        np.testing.assert_allclose(item["probe_positions"].numpy(), frac @ lattice, atol=1e-5)
        np.testing.assert_allclose(item["positions"].numpy(), [[0, 0, 0], np.array([0.25, 0.5, 0.75]) @ lattice],
                                   atol=1e-6)
        assert len(set(item["probe_index"].tolist())) == 50  # no point twice
        expect_spin = -item["density"] if name == "hex" else torch.zeros(50)
        assert torch.equal(item["spin_density"], expect_spin)


def test_draws_are_reproducible_per_epoch_and_worker_independent(dataset: Path) -> None:
    ds = ProbeDataset(dataset, n_probes=20, seed=1)
    first = [ds[i]["probe_index"] for i in range(3)]
    assert all(torch.equal(a, ds[i]["probe_index"]) for i, a in enumerate(first))
    ds.set_epoch(1)
    assert not torch.equal(first[0], ds[0]["probe_index"])
    ds.set_epoch(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_probes)
    batches = list(loader)
    assert torch.equal(batches[0]["probe_index"][:20], first[0]) and torch.equal(batches[1]["probe_index"], first[2])
    b = batches[0]
    assert b["probe_positions"].shape == (40, 3) and b["probe_batch"].tolist() == [0] * 20 + [1] * 20
    assert b["atom_batch"].tolist() == [0, 0, 1, 1] and b["cell"].shape == (2, 3, 3)


def test_full_grid_in_bounded_slabs(dataset: Path) -> None:
    shape = GRIDS["tri"]
    slabs = list(iter_grid(dataset, "tri", max_points=10 * 12 * 3))
    assert all(s.values.size <= 10 * 12 * 3 for s in slabs) and len(slabs) == 5
    np.testing.assert_array_equal(np.concatenate([s.values for s in slabs], axis=-1), coded(shape))
    for s in slabs:
        np.testing.assert_allclose(s.positions, decode(s.flat_values, shape) @ LATTICES["tri"], atol=1e-9)
    one_plane = list(iter_grid(dataset, "tri", max_points=1))  # at least one plane per slab
    assert len(one_plane) == shape[2]
    everything = ProbeDataset(dataset, ["cub"], n_probes=None)[0]
    assert len(everything["density"]) == 216


def test_unknown_ids_are_named(dataset: Path) -> None:
    from dftflow.errors import InputError

    with pytest.raises(InputError, match="'nope'"):
        ProbeDataset(dataset, ["cub", "nope"])


def test_charge3net_export(dataset: Path, tmp_path: Path) -> None:
    split = make_split(read_entries(dataset), seed=0, test=1, val=0)
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({**split, "dataset": str(dataset)}))
    out = tmp_path / "c3n"
    args = ["dataset", "export", str(dataset), "--out", str(out), "--split", str(split_file), "--task", "pbe-id",
            "--spin", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["written"] == 3
    names = (out / "filelist.txt").read_text().split()
    ids = dict(csv.reader((out / "ids.csv").open()))
    assert sorted(ids[n] for n in names) == ["cub", "hex", "tri"]
    for name in names:
        mid = ids[name]
        rho = np.load(out / f"{name}.npy")
        assert rho.shape == (*GRIDS[mid], 2) and rho.dtype == np.float32
        np.testing.assert_array_equal(rho[..., 0], coded(GRIDS[mid]))
        with open(out / f"{name}_atoms.pkl", "rb") as fh:
            atoms = pickle.load(fh)
        np.testing.assert_allclose(atoms.cell[:], LATTICES[mid])
        assert list(atoms.numbers) == [14, 8] and all(atoms.pbc)
    rows = list(csv.DictReader((out / "probe_counts.csv").open()))
    assert {r["id"]: int(r["Count"]) for r in rows} == {n: int(np.prod(GRIDS[ids[n]])) for n in names}
    c3n_split = json.loads((out / "split.json").read_text())
    assert [ids[names[i]] for i in c3n_split["test"]] == split["sets"]["pbe_test"]
    assert sorted(c3n_split["train"] + c3n_split["test"] + c3n_split["validation"]) == [0, 1, 2]
    again = CliRunner().invoke(app, args)  # resumable: nothing rewritten
    assert json.loads(again.output)["written"] == 0
