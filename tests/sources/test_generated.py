"""Generated candidates: DiffCSP/CDVAE ``.pt`` files and MatterGen zips/extxyz.

The ``.pt`` files are written here in DiffCSP's schema (``scripts/evaluate.py``:
a dict of tensors with a leading samples dimension, an ``argparse.Namespace`` of
settings and a torch-geometric batch object) and must come back as exactly the
structures that were written. They are pickles, so the test also checks that
reading one never runs or imports foreign code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from dftflow.catalog import Catalog
from dftflow.config.recipe import Recipe
from dftflow.screening.stages import run_import
from dftflow.sources.discover import discover, run_import_task
from dftflow.sources.generated import Opaque, load_pt
from dftflow.sources.records import Imported, unpack


class FakeBatch:
    """Stands for the torch_geometric ``Batch`` DiffCSP stores as ``input_data_batch``."""

    def __init__(self, n: int) -> None:
        self.num_graphs = n
        self.edge_index = torch.zeros(2, 3, dtype=torch.long)


class SystemCall:
    """Unpickling this with a plain unpickler runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# Three structures per sample: atomic numbers, (a, b, c), (alpha, beta, gamma), fractional coords.
STRUCTURES = [
    ([11, 17], (3.98, 3.98, 3.98), (60.0, 60.0, 60.0), [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]),
    ([22, 8, 8], (4.59, 4.59, 2.96), (90.0, 90.0, 90.0), [[0.0, 0.0, 0.0], [0.305, 0.305, 0.0], [0.695, 0.695, 0.0]]),
    ([3, 3, 8, 26], (4.1, 5.3, 6.2), (81.0, 97.5, 104.0),
     [[0.11, 0.22, 0.33], [0.61, 0.72, 1.05], [0.9, 0.05, 0.5], [0.25, 0.75, -0.1]]),
]


def sample(shift: float) -> list[tuple]:
    """The structures with coordinates moved by ``shift`` (a second sample differs from the first)."""
    return [(z, ln, a, [[c + shift for c in row] for row in f]) for z, ln, a, f in STRUCTURES]


def pack_batch(structures: list[tuple]) -> dict[str, np.ndarray]:
    return {
        "frac_coords": np.array([row for s in structures for row in s[3]], dtype=np.float32),
        "num_atoms": np.array([len(s[0]) for s in structures]),
        "atom_types": np.array([z for s in structures for z in s[0]]),
        "lengths": np.array([s[1] for s in structures], dtype=np.float32),
        "angles": np.array([s[2] for s in structures], dtype=np.float32),
    }


def write_diffcsp(path: Path, samples: list[list[tuple]], *, samples_dim: bool = True, **extra) -> Path:
    batches = [pack_batch(s) for s in samples]
    data = {}
    for key in batches[0]:
        stacked = np.stack([b[key] for b in batches]) if samples_dim else batches[0][key]
        data[key] = torch.from_numpy(stacked)
    data.update(
        eval_setting=argparse.Namespace(num_evals=len(samples), step_lr=1e-5, label="test"),
        input_data_batch=FakeBatch(len(samples[0])),
        time=12.5,
        **extra,
    )
    torch.save(data, path)
    return path


def import_all(kind: str, path: Path, label: str) -> list[Imported]:
    entries: list[Imported] = []
    for task in discover(kind, path, label):
        entries.extend(run_import_task(task))
    return entries


def assert_structure(entry: Imported, numbers: list[int], lengths, angles, frac, lattice=None) -> None:
    assert entry.ok, entry.error
    s = unpack(entry.packed)
    assert [site.specie.Z for site in s] == numbers
    np.testing.assert_allclose(s.lattice.abc, lengths, rtol=1e-5)
    np.testing.assert_allclose(s.lattice.angles, angles, atol=1e-4)
    if lattice is not None:
        np.testing.assert_allclose(s.lattice.matrix, lattice, atol=1e-6)
    d = s.frac_coords - np.asarray(frac, dtype=np.float32)
    np.testing.assert_allclose(d - np.round(d), 0, atol=1e-6)
    assert np.all((s.frac_coords >= 0) & (s.frac_coords < 1))


def test_diffcsp_with_samples_dimension(tmp_path: Path) -> None:
    samples = [sample(0.0), sample(0.125)]
    path = write_diffcsp(tmp_path / "eval_gen.pt", samples)
    entries = import_all("diffcsp", path, "diffcsp")
    assert [e.uid for e in entries] == [f"diffcsp:eval_gen.pt:{s}:{i}" for s in range(2) for i in range(3)]
    for e in entries:
        s_idx, i = e.provenance["sample"], e.provenance["index"]
        z, lengths, angles, frac = samples[s_idx][i]
        assert_structure(e, z, lengths, angles, frac)
        assert e.provenance["generator"] == "diffcsp" and e.provenance["file"] == str(path)
    # The two samples of one structure differ by the shift that was written.
    a, b = unpack(entries[2].packed), unpack(entries[5].packed)
    d = b.frac_coords - a.frac_coords
    np.testing.assert_allclose(d - np.round(d), 0.125 - np.round(0.125), atol=1e-6)


def test_diffcsp_without_samples_dimension(tmp_path: Path) -> None:
    path = write_diffcsp(tmp_path / "eval_diff.pt", [sample(0.0)], samples_dim=False)
    entries = import_all("diffcsp", path, "cdvae")
    assert [e.uid for e in entries] == [f"cdvae:eval_diff.pt:0:{i}" for i in range(3)]
    for e, (z, lengths, angles, frac) in zip(entries, STRUCTURES):
        assert_structure(e, z, lengths, angles, frac)


def test_diffcsp_with_lattice_matrices(tmp_path: Path) -> None:
    from pymatgen.core import Lattice

    mats = np.array([Lattice.from_parameters(*ln, *a).matrix for _, ln, a, _ in STRUCTURES])
    # Rotate the cells: the matrices, not parameters rebuilt from them, must be used.
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    mats = mats @ rot.T
    data = pack_batch(STRUCTURES)
    del data["lengths"], data["angles"]
    torch.save({**{k: torch.from_numpy(v) for k, v in data.items()},
                "lattices": torch.from_numpy(mats)}, tmp_path / "eval_opt.pt")
    entries = import_all("diffcsp", tmp_path / "eval_opt.pt", "diffcsp")
    assert len(entries) == 3
    for e, (z, lengths, angles, frac), m in zip(entries, STRUCTURES, mats):
        assert_structure(e, z, lengths, angles, frac, lattice=m)


def test_diffcsp_atom_type_scores(tmp_path: Path) -> None:
    data = pack_batch(STRUCTURES)
    z = data["atom_types"]
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 0.5, size=(len(z), 100)).astype(np.float32)
    scores[np.arange(len(z)), z - 1] = 1.0  # argmax + 1 is the atomic number
    data["atom_types"] = scores
    torch.save({k: torch.from_numpy(v) for k, v in data.items()}, tmp_path / "scores.pt")
    entries = import_all("diffcsp", tmp_path / "scores.pt", "diffcsp")
    assert len(entries) == 3
    for e, (numbers, lengths, angles, frac) in zip(entries, STRUCTURES):
        assert_structure(e, numbers, lengths, angles, frac)


def test_restricted_unpickler_runs_no_foreign_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write_diffcsp(tmp_path / "eval_gen.pt", [sample(0.0)], payload=SystemCall(marker))

    data = load_pt(path)
    assert not marker.exists(), "loading the .pt ran os.system"
    payload = data["payload"]
    assert isinstance(payload, Opaque) and payload.qualname == f"{os.system.__module__}.system"
    assert payload.args == (f"touch {marker}",)
    # The settings namespace and the input batch are inert placeholders too.
    assert isinstance(data["eval_setting"], Opaque) and not isinstance(data["eval_setting"], argparse.Namespace)
    assert data["eval_setting"].qualname == "argparse.Namespace"
    assert isinstance(data["input_data_batch"], Opaque)
    assert data["input_data_batch"].qualname.endswith(".FakeBatch")
    assert isinstance(data["frac_coords"], torch.Tensor) and data["time"] == 12.5

    entries = import_all("diffcsp", path, "diffcsp")
    assert not marker.exists()
    assert len(entries) == 3 and all(e.ok for e in entries)
    for e, (z, lengths, angles, frac) in zip(entries, STRUCTURES):
        assert_structure(e, z, lengths, angles, frac)

    # Control: the payload is live; an ordinary load does run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_restricted_unpickler_imports_no_foreign_module(tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "imported"
    modname = "dftflow_test_side_effect_mod"
    (tmp_path / f"{modname}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).touch()\n"
        "class Settings:\n"
        "    def __init__(self):\n"
        "        self.value = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(modname)
    try:
        path = write_diffcsp(tmp_path / "eval_gen.pt", [sample(0.0)], settings=module.Settings())
    finally:
        del sys.modules[modname]
    assert marker.exists()  # importing the module has its side effect ...
    marker.unlink()

    data = load_pt(path)
    assert not marker.exists(), "loading the .pt imported the module"  # ... which loading must not trigger
    assert modname not in sys.modules
    assert isinstance(data["settings"], Opaque) and data["settings"].qualname == f"{modname}.Settings"
    assert data["settings"].state == {"value": 3}
    assert [e.ok for e in import_all("diffcsp", path, "diffcsp")] == [True, True, True]
    assert not marker.exists()


def test_diffcsp_through_run_import(tmp_path: Path) -> None:
    path = write_diffcsp(tmp_path / "eval_gen.pt", [sample(0.0), sample(0.25)])
    recipe = Recipe(name="gen", sources=[{"type": "diffcsp", "path": str(path)}])
    catalog = Catalog(tmp_path / "c.sqlite")
    summary = run_import(catalog, recipe)
    assert summary["imported"] == 6 and summary["failed"] == 0
    rows = {r["uid"]: r for r in catalog.structures()}
    assert set(rows) == {f"diffcsp:eval_gen.pt:{s}:{i}" for s in range(2) for i in range(3)}
    assert {r["source"] for r in rows.values()} == {"diffcsp"}
    assert rows["diffcsp:eval_gen.pt:1:2"]["reduced_formula"] == "Li2FeO"
    assert rows["diffcsp:eval_gen.pt:0:1"]["formula"] == "Ti1 O2"
    assert json.loads(rows["diffcsp:eval_gen.pt:1:0"]["provenance"])["sample"] == 1


# -- MatterGen -----------------------------------------------------------------
def mattergen_structures():
    from pymatgen.core import Lattice, Structure

    return [Structure(Lattice.from_parameters(*ln, *a), z, f) for z, ln, a, f in STRUCTURES]


def test_mattergen_zip_of_cifs(tmp_path: Path) -> None:
    from pymatgen.io.cif import CifWriter

    structures = mattergen_structures()
    zpath = tmp_path / "generated_crystals_cif.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i, s in enumerate(structures):
            zf.writestr(f"gen_{i}.cif", str(CifWriter(s)))
    recipe = Recipe(name="mg", sources=[{"type": "mattergen", "path": str(zpath)}])
    catalog = Catalog(tmp_path / "c.sqlite")
    summary = run_import(catalog, recipe)
    assert summary["imported"] == 3 and summary["failed"] == 0
    rows = list(catalog.structures())
    assert [r["uid"] for r in rows] == [f"mattergen:{zpath.name}/gen_{i}.cif" for i in range(3)]
    for row, s, (z, lengths, angles, frac) in zip(rows, structures, STRUCTURES):
        assert row["source"] == "mattergen"
        assert json.loads(row["provenance"])["source"] == "mattergen"
        got = unpack(json.loads(row["data"]))
        assert got.composition == s.composition and row["nsites"] == len(z)
        np.testing.assert_allclose(got.lattice.abc, lengths, rtol=1e-5)
        np.testing.assert_allclose(got.lattice.angles, angles, atol=1e-4)
        # Same sites (CifWriter may reorder them): match each written site.
        for zi, f in zip(z, frac):
            d = got.frac_coords - np.asarray(f)
            d -= np.round(d)
            hit = [k for k in range(len(got)) if np.abs(d[k]).max() < 1e-5]
            assert len(hit) == 1 and got[hit[0]].specie.Z == zi


def test_mattergen_extxyz(tmp_path: Path) -> None:
    import ase.io

    structures = mattergen_structures()
    frames = [s.to_ase_atoms() for s in structures]
    path = tmp_path / "generated_crystals.extxyz"
    ase.io.write(path, frames, format="extxyz")
    recipe = Recipe(name="mg", sources=[{"type": "mattergen", "path": str(path), "label": "mattergen-v1"}])
    catalog = Catalog(tmp_path / "c.sqlite")
    summary = run_import(catalog, recipe)
    assert summary["imported"] == 3 and summary["failed"] == 0
    rows = list(catalog.structures())
    assert [r["uid"] for r in rows] == [f"mattergen-v1:{path.name}:{i}" for i in range(3)]
    for row, s, (z, lengths, angles, frac) in zip(rows, structures, STRUCTURES):
        assert row["source"] == "mattergen-v1"
        prov = json.loads(row["provenance"])
        assert prov["generator"] == "mattergen-v1"
        got = unpack(json.loads(row["data"]))
        assert [site.specie.Z for site in got] == z
        np.testing.assert_allclose(got.lattice.matrix, s.lattice.matrix, atol=1e-6)
        np.testing.assert_allclose(got.lattice.abc, lengths, rtol=1e-6)
        np.testing.assert_allclose(got.lattice.angles, angles, atol=1e-5)
        d = got.frac_coords - np.asarray(frac)
        np.testing.assert_allclose(d - np.round(d), 0, atol=1e-6)
