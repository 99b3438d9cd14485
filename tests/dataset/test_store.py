"""The sharded HDF5 store: round trip, crash safety, claims between harvesters."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from dftflow.dataset.store import Dataset, Manifest, ShardWriter

REPO = Path(__file__).resolve().parents[2]


def record(seed: int, grid=(12, 10, 8)) -> dict:
    rng = np.random.default_rng(seed)
    total = rng.random(grid) + 0.1
    return {
        "total": total, "diff": rng.normal(0, 0.01, grid), "lattice": np.eye(3) * 4.0,
        "frac_coords": [[0, 0, 0], [0.5, 0.5, 0.5]], "numbers": [11, 17],
        "augmentation": {"total": [rng.random(13), rng.random(7)]},
        "density_matrices": [rng.random((1, 13, 13)), rng.random((1, 13, 13))],
        "nelect": 14.0, "electrons": float(total.sum() / total.size) * 64.0, "functional": "PBE", "engine": "gpaw",
        "formula": "NaCl", "provenance": {"uid": f"m{seed}"}, "settings": {"ecut": 350}, "source": f"/x/{seed}",
    }


def test_round_trip_and_schema(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path, max_materials=2)
    recs = {f"m{i}": record(i) for i in range(3)}
    for mid, rec in recs.items():
        assert w.claim(mid)
        w.write(mid, rec)
    w.close()
    shards = sorted((tmp_path / "shards").glob("*.h5"))
    assert len(shards) == 2 and not list((tmp_path / "shards").glob("*.partial"))
    ds = Dataset(tmp_path)
    assert ds.ids() == ["m0", "m1", "m2"]
    got = ds.read("m1")
    np.testing.assert_allclose(got["total"], recs["m1"]["total"], rtol=1e-7)  # float32 on disk
    assert got["total"].dtype == np.float32 and got["units"] == "e/Angstrom^3"
    np.testing.assert_allclose(got["diff"], recs["m1"]["diff"], rtol=1e-6, atol=1e-9)
    assert [len(a) for a in got["augmentation"]["total"]] == [13, 7]
    np.testing.assert_array_equal(got["augmentation"]["total"][1], recs["m1"]["augmentation"]["total"][1])
    np.testing.assert_array_equal(got["density_matrices"][0], recs["m1"]["density_matrices"][0])
    assert got["electrons"] == recs["m1"]["electrons"]  # float64 attribute, exact
    assert got["provenance"] == {"uid": "m1"} and got["grid"] == [12, 10, 8]
    with h5py.File(shards[0]) as f:
        assert f.attrs["schema_version"] == 1
        dset = f[f"materials/{next(iter(f['materials']))}/total"]
        assert dset.compression == "gzip" and dset.shuffle and dset.chunks[:2] == (12, 10)
    ds.close()


def test_nothing_is_published_before_its_shard_is_closed(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})
        from dataset.test_store import record
        from dftflow.dataset.store import ShardWriter
        w = ShardWriter(__import__('pathlib').Path({str(tmp_path)!r}), max_materials=100)
        for i in range(3):
            w.claim(f'm{{i}}'); w.write(f'm{{i}}', record(i))
        os._exit(9)  # dies before the shard is closed
    """)
    subprocess.run([sys.executable, "-c", code], check=False)
    assert list((tmp_path / "shards").glob("*.partial"))
    assert Dataset(tmp_path).ids() == []
    # a new harvester takes over the dead one's claims and drops its unpublished shard
    w = ShardWriter(tmp_path)
    assert not list((tmp_path / "shards").glob("*.partial"))
    assert all(w.claim(f"m{i}") for i in range(3))
    for i in range(3):
        w.write(f"m{i}", record(i))
    w.close()
    assert Dataset(tmp_path).ids() == ["m0", "m1", "m2"]


def test_live_claims_and_stored_materials_are_not_taken(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from dftflow.dataset.store import Manifest
        m = Manifest(Path({str(tmp_path)!r})); assert m.claim('busy'); print('ok', flush=True); time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        w = ShardWriter(tmp_path)
        assert not w.claim("busy")  # a live harvester holds it
        assert w.claim("free")
        w.write("free", record(0))
        w.close()
        assert not Manifest(tmp_path).claim("free")  # stored: never written twice
    finally:
        holder.kill()
        holder.wait()
    assert Manifest(tmp_path).claim("busy")  # its holder is gone


def test_not_a_dataset(tmp_path: Path) -> None:
    from dftflow.errors import InputError

    with pytest.raises(InputError, match="not a dftflow dataset"):
        Dataset(tmp_path)


def test_deflate_threads_write_the_same_chunks(tmp_path: Path) -> None:
    # 40 z-planes of 64x64 floats: 32 planes a chunk, so two chunks, the last one padded
    recs = {"m0": record(0, grid=(64, 64, 40)), "m1": record(1, grid=(5, 7, 3))}
    chunks, nbytes = {}, {}
    for threads in (1, 3):
        root = tmp_path / f"t{threads}"
        w = ShardWriter(root, threads=threads)
        for mid, rec in recs.items():
            assert w.claim(mid)
            w.write(mid, rec)
        w.close()
        (shard,) = (root / "shards").glob("*.h5")
        with h5py.File(shard) as f:
            for mid in recs:
                for name in ("total", "diff"):
                    dset = f[f"materials/{mid}/{name}"]
                    n = -(-dset.shape[-1] // dset.chunks[-1])
                    assert dset.id.get_num_chunks() == n
                    chunks[threads, mid, name] = [dset.id.read_direct_chunk((0, 0, k * dset.chunks[-1]))
                                                  for k in range(n)]
                    np.testing.assert_array_equal(dset[()], recs[mid][name].astype(np.float32))
        manifest = Manifest(root)
        nbytes[threads] = dict(manifest.db.execute("SELECT material_id, nbytes FROM materials"))
        manifest.close()
    assert len(chunks[1, "m0", "total"]) == 2
    for (_, mid, name), value in chunks.items():
        assert value == chunks[1, mid, name]
    assert nbytes[3] == nbytes[1] and nbytes[1]["m0"] > 2 * 64 * 64 * 40  # total and diff, deflated


def test_a_failed_shard_commit_leaves_the_manifest_usable(tmp_path: Path) -> None:
    # A commit that fails half-way is rolled back: nothing is marked stored and the next
    # transaction starts (before, the connection stayed inside the open BEGIN and every later
    # claim failed with "cannot start a transaction within a transaction").
    manifest = Manifest(tmp_path)
    assert manifest.claim("a") and manifest.claim("b")
    with pytest.raises(KeyError):
        manifest.commit_shard("shard-0.h5", [{"material_id": "a"}])  # a row without its fields
    assert manifest.stored() == {}
    assert manifest.claim("c")


def test_sqlite_transaction_commits_rolls_back_and_checks_its_mode(tmp_path: Path) -> None:
    import sqlite3

    from dftflow.sqlitetx import transaction

    db = sqlite3.connect(tmp_path / "t.sqlite", isolation_level=None)
    db.execute("CREATE TABLE t(x)")
    with transaction(db):
        db.execute("INSERT INTO t VALUES(1)")
    with pytest.raises(RuntimeError), transaction(db, "DEFERRED"):
        db.execute("INSERT INTO t VALUES(2)")
        raise RuntimeError("stop")
    assert [r[0] for r in db.execute("SELECT x FROM t")] == [1] and not db.in_transaction
    with pytest.raises(ValueError, match="not one of"), transaction(db, "IMMEDIATE; DROP TABLE t"):
        pass


def test_deflate_level_is_recorded_and_changes_only_the_bytes(tmp_path: Path) -> None:
    from dftflow.dataset.store import DEFLATE_LEVEL, DEFLATER

    rec = record(0, grid=(32, 32, 40))
    rec["total"] = np.round(rec["total"], 2)  # compressible, so the levels differ
    sizes, grids = {}, {}
    for level in (0, 3):
        w = ShardWriter(tmp_path / str(level), level=level)
        assert w.claim("m")
        w.write("m", rec)
        w.close()
        (shard,) = (tmp_path / str(level) / "shards").glob("*.h5")
        with h5py.File(shard) as f:
            assert f.attrs["deflate"] == f"{DEFLATER} {level}"
            grids[level] = f["materials/m/total"][()]
            sizes[level] = f["materials/m/total"].id.get_storage_size()
    np.testing.assert_array_equal(grids[0], grids[3])
    assert sizes[3] < sizes[0]
    with pytest.raises(ValueError, match="deflate level"):
        ShardWriter(tmp_path / "bad", level=10)
    w = ShardWriter(tmp_path / "default")
    assert w.level == DEFLATE_LEVEL
    w.close()


def test_a_new_manifest_is_published_whole_and_never_replaces_one(tmp_path: Path) -> None:
    from dftflow.dataset.store import _create_manifest

    manifest = Manifest(tmp_path)
    assert manifest.claim("a")
    manifest.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.sqlite"]  # no temporary file left
    _create_manifest(tmp_path / "manifest.sqlite")  # another harvester's late creation: the first one stays
    manifest = Manifest(tmp_path)
    assert manifest.db.execute("SELECT material_id, state FROM materials").fetchall() == [("a", "claimed")]
    assert manifest.db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert manifest.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("1",)
    manifest.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.sqlite"]


def test_material_objects_are_what_h5pys_high_level_calls_make(tmp_path: Path) -> None:
    # The writer creates datasets and attributes through h5py's low-level API (fewer checks per object);
    # readers must see exactly what create_dataset / attrs[...] = would have written.
    rec = record(0)
    rng = np.random.default_rng(1)
    rec["augmentation"]["diff"] = [rng.random(2500), rng.random(7)]  # 20 kB: too large for a compact dataset
    w = ShardWriter(tmp_path / "ds")
    assert w.claim("m")
    w.write("m", rec)
    w.close()
    (shard,) = (tmp_path / "ds" / "shards").glob("*.h5")
    with h5py.File(shard) as f, h5py.File(tmp_path / "ref.h5", "w") as ref:
        g = f["materials/m"]
        r = ref.create_group("m")
        r.create_dataset("structure/lattice", data=np.asarray(rec["lattice"], dtype=np.float64))
        r.create_dataset("structure/numbers", data=np.asarray(rec["numbers"], dtype=np.int16))
        r.create_dataset("augmentation/total/offsets", data=np.array([0, 13, 20]))
        r.create_dataset("total", shape=g["total"].shape, dtype=np.float32, chunks=g["total"].chunks, shuffle=True,
                         compression="gzip", compression_opts=1)
        for key in ("electrons", "functional", "grid", "provenance"):
            r.attrs[key] = g.attrs[key] if key != "grid" else list(rec["total"].shape)
        for name in ("structure/lattice", "structure/numbers", "augmentation/total/offsets", "total"):
            ours, theirs = g[name], r[name]
            assert ours.id.get_type().equal(theirs.id.get_type()) and ours.shape == theirs.shape, name
            assert ours.chunks == theirs.chunks and ours.compression_opts == theirs.compression_opts, name
            assert h5py.h5o.get_info(ours.id).ctime == h5py.h5o.get_info(theirs.id).ctime == 0, name  # no timestamps
            if name != "total":
                np.testing.assert_array_equal(ours[()], theirs[()])
        for key in ("electrons", "functional", "grid", "provenance"):
            ours, theirs = h5py.h5a.open(g.id, key.encode()), h5py.h5a.open(r.id, key.encode())
            assert ours.get_type().equal(theirs.get_type()) and ours.shape == theirs.shape, key
            np.testing.assert_array_equal(g.attrs[key], r.attrs[key])
        assert isinstance(g.attrs["functional"], str) and g.attrs["electrons"] == rec["electrons"]
        # small arrays live in their object headers (compact layout), large ones outside (contiguous)
        layout = {name: g[name].id.get_create_plist().get_layout()
                  for name in ("structure/lattice", "augmentation/total/values", "paw_density_matrices/0",
                               "augmentation/diff/values")}
        assert layout == {"structure/lattice": h5py.h5d.COMPACT, "augmentation/total/values": h5py.h5d.COMPACT,
                          "paw_density_matrices/0": h5py.h5d.COMPACT, "augmentation/diff/values": h5py.h5d.CONTIGUOUS}
        np.testing.assert_array_equal(g["augmentation/diff/values"][()], np.concatenate(rec["augmentation"]["diff"]))
        np.testing.assert_array_equal(g["paw_density_matrices/1"][()], rec["density_matrices"][1])


def test_claim_many_takes_what_claim_would_in_batches(tmp_path: Path) -> None:
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    manifest = Manifest(tmp_path)
    rows = [("stored", "stored", socket.gethostname(), 1), ("live", "claimed", socket.gethostname(), os.getppid()),
            ("dead", "claimed", socket.gethostname(), dead.pid), ("elsewhere", "claimed", "other-host", 1)]
    manifest.db.executemany("INSERT INTO materials(material_id, state, host, pid) VALUES(?,?,?,?)", rows)
    ids = ["stored", "live", "dead", "elsewhere", "free", "mine"]
    assert manifest.claim("mine")
    assert manifest.claim_many(ids, batch=4) == {"dead", "free", "mine"}
    assert dict(manifest.db.execute("SELECT material_id, pid FROM materials WHERE state='claimed'")) == {
        "live": os.getppid(), "elsewhere": 1, "dead": os.getpid(), "free": os.getpid(), "mine": os.getpid()}
    manifest.close()


def test_a_manifest_is_created_in_place_where_hard_links_fail(tmp_path: Path, monkeypatch) -> None:
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    manifest = Manifest(tmp_path)
    assert manifest.claim("a") and manifest.db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    manifest.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.sqlite"]
