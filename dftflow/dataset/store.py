"""A sharded, crash-safe HDF5 store of charge densities.

Layout of a dataset directory::

    manifest.sqlite        which material is in which shard; claims; quarantine
    shards/<name>.h5       closed shards (read-only once renamed into place)
    shards/<name>.h5.partial   a shard being written (ignored by readers)

A harvester writes only its own shard. Materials are committed to the
manifest after their shard is closed and renamed into place, so a crash
loses at most the open shard's materials (they are harvested again) and never
touches existing data. Before writing a material, a harvester claims it in the
manifest; claims of dead processes are released, so two harvesters never write
the same material and none is lost. Schema: docs/dataset.md.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5a, h5d, h5p, h5s, h5t

from dftflow.procs import pid_alive
from dftflow.sqlitetx import transaction

try:  # Intel ISA-L: zlib-format streams, 5-8x faster than zlib at a few per cent more bytes
    from isal import isal_zlib

    DEFLATER = "isal"
    _compress = isal_zlib.compress
except ImportError:  # pragma: no cover - platforms without ISA-L wheels
    import zlib

    DEFLATER = "zlib"
    _compress = zlib.compress

try:  # the compiled chunk shuffler (dftflow/_speedups.c): one pass from C or Fortran order
    from dftflow._speedups import shuffle_chunk
except ImportError:  # pragma: no cover - installed without a C compiler
    shuffle_chunk = None

#: Deflate level of the grid chunks (ISA-L's 0-3; zlib's 1-9 without ISA-L), recorded in each shard
#: (``deflate``). On the bench's grids ISA-L 0/1/2/3 give 2.77/2.35/2.21/2.19 bytes per value and take
#: 0.85/1.0/1.0/2.3x the time of 1 (bench/bench_dataset.py --level).
DEFLATE_LEVEL = 2
#: With ``threads`` > 1, grids of at least this many values are deflated on the pool; smaller ones
#: take less time to deflate than to hand over, and are deflated where they are written.
_POOL_VALUES = 1 << 17


def _encode_chunk(data: np.ndarray, z0: int, depth: int, level: int = DEFLATE_LEVEL) -> bytes:
    """The HDF5 chunk of ``data`` (float32) starting at z = ``z0``: byte-shuffled, then deflated (zlib format)."""
    if shuffle_chunk is not None and data.ndim == 3:
        return _compress(shuffle_chunk(data, z0, depth), level)
    block = data[..., z0 : z0 + depth]
    if block.shape[-1] < depth:  # HDF5 stores edge chunks full size
        block = np.concatenate([block, np.zeros((*block.shape[:-1], depth - block.shape[-1]), np.float32)], axis=-1)
    return _compress(np.ascontiguousarray(block).view(np.uint8).reshape(-1, 4).T.tobytes(), level)


_VLEN_STR = h5py.string_dtype()
_TYPES: dict[tuple[str, bool], h5t.TypeID] = {}
#: Arrays up to this size are stored in their dataset's object header (HDF5's compact
#: layout): no separate block to allocate and index, which is most of the cost of the
#: small per-material arrays (structure, occupancies); any HDF5 reader reads them alike.
_COMPACT_BYTES = 16 * 1024


def _h5type(dtype: np.dtype, logical: bool = True) -> h5t.TypeID:
    """The HDF5 type h5py gives ``dtype`` (variable-length UTF-8 for str), made once per dtype."""
    key = ("vlen-str" if dtype.kind == "O" and h5py.check_string_dtype(dtype) else dtype.str, logical)
    if (tid := _TYPES.get(key)) is None:
        tid = _TYPES[key] = h5t.py_create(dtype, logical=logical)
    return tid


def _new_dataset(group: h5py.Group, name: str, shape: tuple[int, ...], dtype: Any,
                 chunks: tuple[int, ...] | None = None, compact: bool = False) -> h5d.DatasetID:
    """What ``group.create_dataset`` makes (contiguous, compact, or chunked with shuffle + gzip),
    without h5py's checks."""
    dcpl = h5p.create(h5p.DATASET_CREATE)
    if chunks is not None:
        dcpl.set_chunk(chunks)
        dcpl.set_shuffle()
        dcpl.set_deflate(1)
    elif compact:
        dcpl.set_layout(h5d.COMPACT)
    dcpl.set_obj_track_times(False)  # h5py's default
    return h5d.create(group.id, name.encode(), _h5type(np.dtype(dtype)), h5s.create_simple(shape), dcpl=dcpl)


def _put(group: h5py.Group, name: str, data: np.ndarray) -> None:
    """``group.create_dataset(name, data=data)`` for a small array (compact when it fits)."""
    data = np.ascontiguousarray(data)
    compact = 0 < data.nbytes <= _COMPACT_BYTES
    _new_dataset(group, name, data.shape, data.dtype, compact=compact).write(h5s.ALL, h5s.ALL, data)


_SCALAR = h5s.create(h5s.SCALAR)


def _attr(obj: h5py.HLObject, name: str, value: Any) -> None:
    """``obj.attrs[name] = value`` for a new name (a str as variable-length UTF-8), without h5py's checks."""
    data = np.array(value, dtype=_VLEN_STR) if isinstance(value, str) else np.asarray(value)
    space = _SCALAR if data.ndim == 0 else h5s.create_simple(data.shape)
    attr = h5a.create(obj.id, name.encode(), _h5type(data.dtype), space)
    try:
        attr.write(data, mtype=_h5type(data.dtype, logical=False))
    finally:
        attr.close()


SCHEMA_VERSION = 1
#: Additions that readers of ``SCHEMA_VERSION`` may ignore (absent attribute: 0). 1: ``augmentation`` attrs;
#: 2: the ``smooth_delta`` grid of GPAW materials.
SCHEMA_MINOR = 2
UNITS = "e/Angstrom^3"  # densities are stored as rho (electrons per cubic Angstrom), float32
#: The grids a material may hold: the CHGCAR's total and spin densities, and (GPAW runs) the
#: converged smooth density minus the atomic guess it started from (docs/dataset.md).
GRIDS = ("total", "diff", "magnetisation", "smooth_delta")

_MANIFEST = """
CREATE TABLE IF NOT EXISTS materials(
    material_id TEXT PRIMARY KEY, state TEXT NOT NULL, shard TEXT, host TEXT, pid INTEGER,
    claimed_at REAL, stored_at REAL, formula TEXT, nsites INTEGER, grid TEXT, functional TEXT,
    engine TEXT, nbytes INTEGER, source TEXT);
CREATE TABLE IF NOT EXISTS quarantine(
    material_id TEXT PRIMARY KEY, source TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _alive(host: str, pid: int | None) -> bool:
    if pid is None or host != socket.gethostname():
        return True  # cannot tell: keep the claim
    return pid_alive(pid)


def _fsync(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_manifest(path: Path) -> None:
    """Write an empty manifest beside ``path`` and link it into place, unless one is there.

    Built unsynced, then synced once and published by a link that never replaces a file: a
    concurrent harvester's manifest wins, and a crash leaves no manifest or a whole one. This
    is a few fsyncs fewer than letting SQLite create the file and switch it to WAL in place.
    """
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=OFF")
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(f"BEGIN;{_MANIFEST}INSERT INTO meta VALUES('schema_version', '{SCHEMA_VERSION}');COMMIT;")
        finally:
            db.close()
        _fsync(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
        except OSError:  # a file system without hard links: SQLite creates the manifest in place
            return
        _fsync(path.parent)  # the new name is on disk before any shard refers to it
    finally:
        for leftover in (tmp, *(tmp.with_name(tmp.name + suffix) for suffix in ("-wal", "-shm"))):
            leftover.unlink(missing_ok=True)


class Manifest:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        path = root / "manifest.sqlite"
        if not path.exists():
            _create_manifest(path)
        self.db = sqlite3.connect(path, timeout=120, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL with synchronous=NORMAL: a killed process loses no committed
        # transaction; only a power cut can undo the last ones (never corrupt), and
        # then the materials are simply harvested again.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_MANIFEST)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self.db.close()

    def claim(self, material_id: str) -> bool:
        """Take a material for writing; False if it is stored or claimed by a live process."""
        return material_id in self.claim_many([material_id])

    def claim_many(self, material_ids: list[str], batch: int = 500) -> set[str]:
        """:meth:`claim` for each id, ``batch`` ids a transaction; returns the ids taken."""
        host, pid = socket.gethostname(), os.getpid()
        taken: set[str] = set()
        for start in range(0, len(material_ids), batch):
            with transaction(self.db):
                for material_id in material_ids[start : start + batch]:
                    row = self.db.execute("SELECT state, host, pid FROM materials WHERE material_id=?",
                                          (material_id,)).fetchone()
                    if row is not None:
                        state, holder = row[0], (row[1], row[2])
                        if state == "stored":
                            continue
                        if holder != (host, pid) and _alive(*holder):  # a dead harvester's claim is taken over
                            continue
                    self.db.execute("INSERT OR REPLACE INTO materials(material_id, state, host, pid, claimed_at) "
                                    "VALUES(?, 'claimed', ?, ?, ?)", (material_id, host, pid, time.time()))
                    taken.add(material_id)
        return taken

    def release(self, material_ids: list[str]) -> None:
        host, pid = socket.gethostname(), os.getpid()
        self.db.executemany("DELETE FROM materials WHERE material_id=? AND state='claimed' AND host=? AND pid=?",
                            [(m, host, pid) for m in material_ids])

    def commit_shard(self, shard: str, rows: list[dict[str, Any]]) -> None:
        with transaction(self.db):  # before: no ROLLBACK, so a failed update left the connection in a transaction
            self.db.executemany(
                "UPDATE materials SET state='stored', shard=?, stored_at=?, formula=?, nsites=?, grid=?, "
                "functional=?, engine=?, nbytes=?, source=? WHERE material_id=?",
                [(shard, time.time(), r["formula"], r["nsites"], json.dumps(r["grid"]), r["functional"], r["engine"],
                  r["nbytes"], r["source"], r["material_id"]) for r in rows])

    def quarantine(self, material_id: str, source: str, reason: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO quarantine VALUES(?,?,?,?)", (material_id, source, reason, time.time()))

    def stored(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT material_id, shard FROM materials WHERE state='stored'"))

    def is_done(self, material_id: str) -> bool:
        row = self.db.execute("SELECT state FROM materials WHERE material_id=?", (material_id,)).fetchone()
        return row is not None and row[0] == "stored"

    def quarantined(self) -> list[tuple[str, str, str]]:
        return list(self.db.execute("SELECT material_id, source, reason FROM quarantine ORDER BY material_id"))


class ShardWriter:
    """Writes materials into this process's own shard; ``flush`` publishes them."""

    def __init__(self, root: Path, *, max_materials: int = 64, compression: str = "gzip", threads: int = 1,
                 level: int = DEFLATE_LEVEL) -> None:
        """``threads`` > 1 deflates the chunks of a grid on that many threads (ISA-L releases the GIL);
        ``level`` is the deflate level of gzip chunks (see :data:`DEFLATE_LEVEL`)."""
        top = 3 if DEFLATER == "isal" else 9
        if compression == "gzip" and not 0 <= level <= top:
            raise ValueError(f"deflate level {level}: {DEFLATER} takes 0 to {top}")
        self.level = level
        self.root = Path(root)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="deflate") if threads > 1 else None
        self._grids: list[tuple[h5d.DatasetID, list]] = []  # this material's grids being deflated
        self._pending: list[tuple[dict[str, Any], list]] = []  # (manifest row, grids) not written yet
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(self.root)
        self.max_materials = max_materials
        self.compression = compression
        self._file: h5py.File | None = None
        self._name = ""
        self._rows: list[dict[str, Any]] = []
        for stale in (self.root / "shards").glob("*.partial"):  # left by a crash: never published
            host_pid = stale.name.split("__")[0]
            if host_pid.startswith(socket.gethostname() + "-"):
                try:
                    pid = int(host_pid.rsplit("-", 1)[1])
                except ValueError:
                    continue
                if not _alive(socket.gethostname(), pid):
                    stale.unlink(missing_ok=True)

    def claim(self, material_id: str) -> bool:
        return self.manifest.claim(material_id)

    def claim_many(self, material_ids: list[str]) -> set[str]:
        return self.manifest.claim_many(material_ids)

    def _open(self) -> h5py.File:
        if self._file is None:
            self._name = f"{socket.gethostname()}-{os.getpid()}__{uuid.uuid4().hex[:12]}.h5"
            self._file = h5py.File(self.root / "shards" / (self._name + ".partial"), "w")
            self._file.attrs["schema_version"] = SCHEMA_VERSION
            self._file.attrs["schema_minor"] = SCHEMA_MINOR
            self._file.attrs["units"] = UNITS
            if self.compression == "gzip":
                self._file.attrs["deflate"] = f"{DEFLATER} {self.level}"
        return self._file

    def _dataset(self, group: h5py.Group, name: str, data: np.ndarray) -> int:
        data = np.asarray(data, dtype=np.float32)
        if not (self.compression == "gzip" and shuffle_chunk is not None and data.ndim == 3):
            data = np.ascontiguousarray(data)  # the compiled shuffler reads any memory order as it is
        # chunks of whole x-y planes, ~512 kB: a full-grid read touches each chunk once
        plane = int(np.prod(data.shape[:-1])) * 4
        depth = max(1, min(data.shape[-1], (512 * 1024) // max(plane, 1)))
        chunks = (*data.shape[:-1], depth)
        if self.compression == "lzf":
            ds = group.create_dataset(name, data=data, chunks=chunks, shuffle=True, compression="lzf")
            return int(ds.id.get_storage_size())
        if self.compression != "gzip":
            ds = group.create_dataset(name, data=data, chunks=chunks)
            return int(ds.id.get_storage_size())
        # The standard shuffle + deflate pipeline, declared in the file so any HDF5
        # reader decodes it; the chunks are shuffled and deflated here and written
        # directly, because ISA-L deflates several times faster than zlib.
        ds = _new_dataset(group, name, data.shape, np.float32, chunks)
        offsets = [((0,) * (data.ndim - 1) + (z0,), z0) for z0 in range(0, data.shape[-1], depth)]
        if self._pool is not None and data.size >= _POOL_VALUES:  # deflated in the background, written by _drain
            self._grids.append((ds, [(at, self._pool.submit(_encode_chunk, data, z0, depth, self.level))
                                     for at, z0 in offsets]))
            return 0
        for at, z0 in offsets:
            ds.write_direct_chunk(at, _encode_chunk(data, z0, depth, self.level))
        return int(ds.get_storage_size())

    def _drain(self) -> None:
        """Write the chunks deflated in the background, in order, and add their bytes to their rows."""
        pending, self._pending = self._pending, []
        for row, grids in pending:
            for ds, chunks in grids:
                for at, future in chunks:
                    ds.write_direct_chunk(at, future.result())
                row["nbytes"] += int(ds.get_storage_size())

    def write(self, material_id: str, record: dict[str, Any]) -> None:
        """Add one material (see :func:`dftflow.dataset.harvest.record_from_density` for the record).

        With ``threads`` > 1 its grids are deflated while the caller goes on (reading the next
        material); their chunks are written at the next ``write`` or ``flush``.
        """
        self._drain()
        self._grids = []
        f = self._open()
        g = f.create_group(f"materials/{material_id}")
        nbytes = self._dataset(g, "total", record["total"])
        if record.get("diff") is not None:
            nbytes += self._dataset(g, "diff", record["diff"])
        if record.get("magnetisation") is not None:
            nbytes += self._dataset(g, "magnetisation", record["magnetisation"])
        if record.get("smooth_delta") is not None:
            nbytes += self._dataset(g, "smooth_delta", record["smooth_delta"])
        s = g.create_group("structure")
        _put(s, "lattice", np.asarray(record["lattice"], dtype=np.float64))
        _put(s, "frac_coords", np.asarray(record["frac_coords"], dtype=np.float64))
        _put(s, "numbers", np.asarray(record["numbers"], dtype=np.int16))
        for block, arrays in (record.get("augmentation") or {}).items():
            flat = np.concatenate(arrays) if arrays else np.zeros(0)
            offsets = np.cumsum([0] + [len(a) for a in arrays])
            a = g.create_group(f"augmentation/{block}")
            _put(a, "values", flat.astype(np.float64))
            _put(a, "offsets", offsets.astype(np.int64))
        if "augmentation" in g:
            for key, value in (record.get("augmentation_meta") or {}).items():
                if value is not None:
                    _attr(g["augmentation"], key, value if isinstance(value, str | int) else json.dumps(value))
        for i, D in enumerate(record.get("density_matrices") or []):
            _put(g.require_group("paw_density_matrices"), str(i), np.asarray(D, dtype=np.float64))
        for key in ("nelect", "electrons", "electrons_diff", "functional", "engine", "engine_version",
                    "settings_hash", "source", "formula"):
            if record.get(key) is not None:
                _attr(g, key, record[key])
        _attr(g, "grid", list(np.asarray(record["total"]).shape))
        _attr(g, "provenance", json.dumps(record.get("provenance", {}), default=str))
        _attr(g, "settings", json.dumps(record.get("settings", {}), default=str))
        _attr(g, "units", UNITS)
        row = {"material_id": material_id, "formula": record.get("formula", ""), "nsites": len(record["numbers"]),
               "grid": list(np.asarray(record["total"]).shape), "functional": record.get("functional", ""),
               "engine": record.get("engine", ""), "nbytes": nbytes, "source": record.get("source", "")}
        self._rows.append(row)
        if self._grids:
            self._pending.append((row, self._grids))
            self._grids = []
        if len(self._rows) >= self.max_materials:
            self.flush()

    def flush(self) -> None:
        """Close the open shard, move it into place and commit its materials to the manifest."""
        if self._file is None:
            return
        self._drain()
        self._file.close()
        self._file = None
        partial = self.root / "shards" / (self._name + ".partial")
        _fsync(partial)  # on disk before the manifest points at it
        os.replace(partial, self.root / "shards" / self._name)
        self.manifest.commit_shard(self._name, self._rows)
        self._rows = []

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.manifest.close()
            if self._pool is not None:
                self._pool.shutdown()


class Dataset:
    """Read a dataset directory (only published shards, via the manifest)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if not (self.root / "manifest.sqlite").exists():
            from dftflow.errors import InputError

            raise InputError(f"{self.root}: not a dftflow dataset (no manifest.sqlite)")
        manifest = Manifest(self.root)
        try:
            self._index = manifest.stored()
        finally:
            manifest.close()
        self._files: dict[str, h5py.File] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._index)

    def ids(self) -> list[str]:
        return sorted(self._index)

    def _group(self, material_id: str) -> h5py.Group:
        try:
            shard = self._index[material_id]
        except KeyError:
            from dftflow.errors import InputError

            raise InputError(f"{self.root}: no material {material_id!r} in this dataset") from None
        if self._pid != os.getpid():  # a forked DataLoader worker: HDF5 handles do not survive fork
            self._files, self._pid = {}, os.getpid()
        if shard not in self._files:
            self._files[shard] = h5py.File(self.root / "shards" / shard, "r")
        return self._files[shard][f"materials/{material_id}"]

    def header(self, material_id: str) -> dict[str, Any]:
        """Attributes and structure of one material, without its grids."""
        g = self._group(material_id)
        out: dict[str, Any] = {k: (v.item() if getattr(v, "size", 0) == 1 and hasattr(v, "item") else v)
                               for k, v in g.attrs.items()}
        out["provenance"] = json.loads(out.get("provenance", "{}"))
        out["settings"] = json.loads(out.get("settings", "{}"))
        out["grid"] = [int(x) for x in g.attrs["grid"]]
        s = g["structure"]
        out["lattice"], out["frac_coords"], out["numbers"] = s["lattice"][()], s["frac_coords"][()], s["numbers"][()]
        out["has"] = [name for name in GRIDS if name in g]
        return out

    def augmentation_meta(self, material_id: str) -> dict[str, Any] | None:
        """How the material's augmentation blocks are laid out (see harvest); None without blocks.

        Keys: ``layout`` (``vasp-rholm``), ``engine``, and when the harvest found them
        ``projector_l`` and ``potcars`` (per element) and ``lmaxmix``.
        """
        g = self._group(material_id)
        if "augmentation" not in g:
            return None
        out: dict[str, Any] = {}
        for key, value in g["augmentation"].attrs.items():
            value = value.item() if hasattr(value, "item") else value
            out[key] = json.loads(value) if key in ("projector_l", "potcars") else value
        return out

    def augmentation(self, material_id: str, block: str = "total") -> list[np.ndarray] | None:
        """One flat array of augmentation occupancies per atom for ``block`` (total, diff, ...); None without."""
        g = self._group(material_id)
        if f"augmentation/{block}" not in g:
            return None
        a = g[f"augmentation/{block}"]
        values, offsets = a["values"][()], a["offsets"][()]
        return [values[i:j] for i, j in zip(offsets[:-1], offsets[1:], strict=True)]

    def density_matrices(self, material_id: str) -> list[np.ndarray] | None:
        """The PAW density matrices (spin, ni, ni) of every atom (GPAW materials); None without."""
        g = self._group(material_id)
        if "paw_density_matrices" not in g:
            return None
        d = g["paw_density_matrices"]
        return [d[str(i)][()] for i in range(len(d))]

    def grid(self, material_id: str, name: str = "total") -> h5py.Dataset:
        """The HDF5 dataset of one grid (read slices of it; ``[()]`` reads it all)."""
        g = self._group(material_id)
        if name not in g:
            from dftflow.errors import InputError

            raise InputError(f"{self.root}: material {material_id} has no {name!r} grid")
        return g[name]

    def read(self, material_id: str) -> dict[str, Any]:
        g = self._group(material_id)
        out = self.header(material_id)
        del out["has"]
        for name in GRIDS:
            if name in g:
                out[name] = g[name][()]
        if "augmentation" in g:
            out["augmentation"] = {block: self.augmentation(material_id, block) for block in g["augmentation"]}
            out["augmentation_meta"] = self.augmentation_meta(material_id)
        if "paw_density_matrices" in g:
            out["density_matrices"] = self.density_matrices(material_id)
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def close(self) -> None:
        if self._pid == os.getpid():
            for f in self._files.values():
                f.close()
        self._files.clear()
