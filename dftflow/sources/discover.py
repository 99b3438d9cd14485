"""Turn a source (file, directory, archive, generated batch) into import tasks.

Discovery runs in the main process and is cheap: it lists files and archive
members (reading member bytes, since archives cannot be shared between
processes) and splits generated batches into per-structure arrays. Parsing
happens in :func:`run_import_task`, in worker processes, with a time bound.
"""

from __future__ import annotations

import fnmatch
import lzma
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dftflow.compression import decompress
from dftflow.errors import InputError
from dftflow.sources.records import Imported, check_geometry

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# What reading a damaged archive raises (a corrupt deflate/xz stream raises zlib/lzma
# errors, an encrypted or unsupported zip member RuntimeError/NotImplementedError).
_DAMAGE = (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError,
           ValueError, RuntimeError, NotImplementedError)


@dataclass(slots=True)
class ImportTask:
    """One unit of parsing work: a CIF file, an archived CIF's text, or one generated structure."""

    kind: Literal["cif_file", "cif_text", "arrays"]
    uid: str
    provenance: dict[str, Any]
    path: str | None = None
    text: bytes | None = None
    arrays: dict[str, Any] | None = field(default=None)


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _matches(name: str, pattern: str) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    for suffix in (".gz", ".bz2"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return fnmatch.fnmatch(base, pattern.lower())


def discover(kind: str, path: Path, label: str, pattern: str = "*.cif",
             generate: dict[str, Any] | None = None) -> Iterator[ImportTask]:
    """Yield import tasks for one source of ``kind`` (``cif``, ``diffcsp``, ``mattergen``, ``prototypes``).

    ``generate`` holds the keyword arguments of :func:`dftflow.sources.prototypes.generate`.
    """
    if kind == "prototypes":
        yield from _discover_prototypes(label, generate or {})
        return
    if not path.exists():
        raise InputError(f"{path}: source not found")
    if kind == "cif":
        yield from _discover_cif(path, label, pattern)
    elif kind == "diffcsp":
        yield from _discover_generated(path, label)
    elif kind == "mattergen":
        if path.is_file() and path.suffix.lower() in (".extxyz", ".xyz"):
            yield from _discover_extxyz(path, label)
        else:
            yield from _discover_cif(path, label, pattern)
    else:
        raise InputError(f"{path}: unknown source type {kind!r}")


def _discover_cif(path: Path, label: str, pattern: str) -> Iterator[ImportTask]:
    if path.is_file() and _is_archive(path):
        yield from _discover_archive(path, label, pattern)
        return
    if path.is_file():
        yield ImportTask("cif_file", f"{label}:{path.name}", {"source": label, "file": str(path)}, path=str(path))
        return
    # A directory: recursive, sorted so uids and progress are reproducible. COD mirrors
    # (cif/1/00/00/1000000.cif) are simply nested directories.
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if _is_archive(file):
            yield from _discover_archive(file, label, pattern, prefix=rel)
        elif _matches(rel, pattern):
            prov = {"source": label, "file": str(file)}
            if label == "cod" and file.stem.isdigit():
                prov["cod_id"] = file.stem
            yield ImportTask("cif_file", f"{label}:{rel}", prov, path=str(file))


def _discover_archive(path: Path, label: str, pattern: str, prefix: str | None = None) -> Iterator[ImportTask]:
    name = prefix or path.name
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and _matches(info.filename, pattern):
                        try:
                            data = zf.read(info)
                        except _DAMAGE as exc:
                            # Zip members are independent: one damaged member fails alone.
                            yield ImportTask("cif_text", f"{label}:{name}/{info.filename}",
                                             {"source": label, "file": str(path), "member": info.filename,
                                              "error": f"damaged archive member: {type(exc).__name__}: {exc}"})
                            continue
                        yield _archived(label, name, info.filename, path, data)
        else:
            with tarfile.open(path) as tf:
                for member in tf:
                    if member.isfile() and _matches(member.name, pattern):
                        handle = tf.extractfile(member)
                        if handle is not None:
                            yield _archived(label, name, member.name, path, handle.read())
    except _DAMAGE as exc:
        # A damaged archive: what was read is kept; the damage is one failed entry.
        yield ImportTask("cif_text", f"{label}:{name}!", {"source": label, "file": str(path),
                         "error": f"damaged archive: {type(exc).__name__}: {exc}"}, text=None)


def _archived(label: str, name: str, member: str, path: Path, data: bytes) -> ImportTask:
    prov = {"source": label, "file": str(path), "member": member}
    return ImportTask("cif_text", f"{label}:{name}/{member}", prov, text=data)


def _discover_generated(path: Path, label: str) -> Iterator[ImportTask]:
    from dftflow.sources.generated import load_pt, split_generated

    files = [path] if path.is_file() else sorted(path.rglob("*.pt"))
    for file in files:
        rel = file.name if path.is_file() else file.relative_to(path).as_posix()
        try:
            items = split_generated(load_pt(file), file)
        except Exception as exc:  # one unusable file is one failed entry; the other files go on
            reason = str(exc) if isinstance(exc, InputError) else \
                f"{file}: unusable generated data ({type(exc).__name__}: {exc})"
            yield ImportTask("cif_text", f"{label}:{rel}!", {"source": label, "file": str(file), "error": reason})
            continue
        for arrays in items:
            sample, index = arrays.pop("sample"), arrays.pop("index")
            prov = {"source": label, "file": str(file), "generator": label, "sample": sample, "index": index}
            yield ImportTask("arrays", f"{label}:{rel}:{sample}:{index}", prov, arrays=arrays)


def _discover_extxyz(path: Path, label: str) -> Iterator[ImportTask]:
    from dftflow.sources.generated import read_extxyz

    for arrays in read_extxyz(path):
        index = arrays.pop("index")
        prov = {"source": label, "file": str(path), "generator": label, "index": index}
        yield ImportTask("arrays", f"{label}:{path.name}:{index}", prov, arrays=arrays)


def _discover_prototypes(label: str, settings: dict[str, Any]) -> Iterator[ImportTask]:
    from dftflow.sources.prototypes import GENERATOR, VERSION, generate

    for c in generate(**settings):
        prov = {"source": label, "generator": GENERATOR, "generator_version": VERSION,
                "prototype": c.prototype, "elements": list(c.elements), "seed": settings.get("seed", 0),
                "rank": c.rank, "oxidation_states": None if c.oxidation_states is None else list(c.oxidation_states)}
        arrays = {"lattice": c.lattice.tolist(), "numbers": c.numbers, "frac_coords": c.frac_coords.tolist()}
        yield ImportTask("arrays", c.uid(label), prov, arrays=arrays)


def _read_text(path: str | None, data: bytes | None) -> str:
    if data is None:
        assert path is not None
        raw = Path(path).read_bytes()
    else:
        raw = data
    return decompress(raw).decode("utf-8", errors="replace")


def run_import_task(task: ImportTask) -> list[Imported]:
    """Parse one task (in a worker). Every problem becomes a failed :class:`Imported`."""
    if task.kind == "arrays":
        return [_from_arrays(task)]
    if task.text is None and task.path is None:
        return [Imported(task.uid, task.provenance, error=task.provenance.get("error", "nothing to read"))]
    from dftflow.sources.cif import parse_cif_text

    try:
        text = _read_text(task.path, task.text)
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
        return [Imported(task.uid, task.provenance, error=f"cannot read file: {exc}")]
    return parse_cif_text(text, task.uid, task.provenance)


def _from_arrays(task: ImportTask) -> Imported:
    import numpy as np
    from pymatgen.core import Element

    from dftflow.sources.records import pack

    arrays = task.arrays or {}
    numbers = [int(z) for z in arrays.get("numbers", [])]
    bad = sorted({z for z in numbers if not 1 <= z <= 118})
    if bad:
        return Imported(task.uid, task.provenance, error=f"unknown atomic number(s): {bad}")
    lattice = np.asarray(arrays["lattice"], dtype=float)
    frac = np.asarray(arrays["frac_coords"], dtype=float)
    if (problem := check_geometry(lattice, frac)) is not None:
        return Imported(task.uid, task.provenance, error=problem)
    from pymatgen.core import Lattice, Structure

    structure = Structure(Lattice(lattice), [Element.from_Z(z) for z in numbers], frac % 1.0)
    return Imported(task.uid, task.provenance, packed=pack(structure))
