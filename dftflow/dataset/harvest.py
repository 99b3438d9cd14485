"""Harvest charge densities into the HDF5 dataset: from dftflow projects and CHGCAR trees.

Sources:

* a dftflow project: the completed static jobs in ``jobs.sqlite`` (GPAW now,
  VASP later), with their settings, versions and PAW density matrices;
* a directory tree of ``CHGCAR[.gz|.bz2]`` files, each with its OUTCAR (for
  NELECT and the functional) when present — plain VASP runs and ECD-style
  ``<material>/CHGCAR`` trees alike.

Beside VASP's augmentation occupancies the record keeps what is needed to read
them (:func:`augmentation_meta`): the projector channels of every species,
from the POTCAR headers in the OUTCAR (or a POTCAR beside the CHGCAR), and
LMAXMIX. The block sizes in the CHGCAR must match those channels, or the
material is quarantined with the reason.

A file that cannot be read or fails validation is quarantined with its reason
and the harvest goes on. Re-running skips what is stored.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dftflow.compression import read_text
from dftflow.dataset.store import ShardWriter
from dftflow.parallel import run_tasks


@dataclass(slots=True)
class HarvestItem:
    material_id: str
    chgcar: str
    meta: dict[str, Any] = field(default_factory=dict)
    density_npz: str | None = None
    outcar: str | None = None
    potcar: str | None = None


def safe_id(text: str) -> str:
    """A material id usable as an HDF5 group name."""
    return text.replace("/", "|").strip() or "_"


def _open_text(path: Path) -> str:
    return read_text(path)


_NELECT = re.compile(r"NELECT\s*=\s*(\S*)")
_ISPIN = re.compile(r"^\s*ISPIN\s*=\s*(\S*)\s+spin polarized", re.MULTILINE)
_NONCOLLINEAR = re.compile(r"^\s*LNONCOLLINEAR\s*=\s*(\S*)\s+non collinear", re.MULTILINE)
_LHF = re.compile(r"LHFCALC\s*=\s*T")
_LDAU = re.compile(r"LDAU\s*=\s*T|LDA\+U is selected")
_VERSION = re.compile(r"^\s*(vasp\.[0-9.]+\S*)", re.MULTILINE)


def outcar_meta(path: Path) -> dict[str, Any]:
    """NELECT, functional, VASP version and the number of density blocks (ISPIN, LNONCOLLINEAR) of an OUTCAR.

    A NELECT, ISPIN or LNONCOLLINEAR line that is there but unreadable (a damaged
    file) raises :class:`~dftflow.errors.InputError` naming the file and the line.
    """
    from dftflow.errors import InputError

    text = _open_text(path)
    meta: dict[str, Any] = {"engine": "vasp"}
    if m := _NELECT.search(text):
        try:
            nelect = float(m.group(1))
        except ValueError:
            nelect = math.nan
        if not (math.isfinite(nelect) and nelect > 0):
            raise InputError(f"{path}: cannot read the number of electrons from {m.group(0)!r}")
        meta["nelect"] = nelect
    ispin = _ISPIN.search(text)
    noncollinear = _NONCOLLINEAR.search(text)
    if ispin is not None:
        if ispin.group(1) not in ("1", "2"):
            raise InputError(f"{path}: ISPIN must be 1 or 2, found {ispin.group(1)!r}")
        if noncollinear is not None and noncollinear.group(1) not in ("T", "F"):
            raise InputError(f"{path}: LNONCOLLINEAR must be T or F, found {noncollinear.group(1)!r}")
        noncollinear_run = noncollinear is not None and noncollinear.group(1) == "T"
        meta["density_blocks"] = 4 if noncollinear_run else int(ispin.group(1))
    meta["functional"] = "HSE06" if _LHF.search(text) else ("PBE+U" if _LDAU.search(text) else "PBE")
    if m := _VERSION.search(text):
        meta["engine_version"] = m.group(1)
    return meta


def check_against_outcar(density: Any, item: HarvestItem, meta: dict[str, Any]) -> None:
    """Refuse a CHGCAR that holds less than the run of its OUTCAR wrote.

    A CHGCAR cut exactly where a section ends reads as a complete file: before the
    magnetisation block it is a non-spin density, before the augmentation
    occupancies one without them. VASP writes every block its ISPIN/LNONCOLLINEAR
    asks for and, in a CHGCAR, the occupancies of every block.
    """
    from dftflow.errors import DensityError

    expected = meta.get("density_blocks")
    found = len(density.block_keys)
    if expected is not None and found != expected:
        raise DensityError(f"{item.chgcar}: {found} density block(s), but {item.outcar} describes a run that writes "
                           f"{expected} (ISPIN/LNONCOLLINEAR); the file is cut short or belongs to another run")
    if density.augmentation is None and Path(item.chgcar).name.startswith("CHGCAR"):
        raise DensityError(f"{item.chgcar}: no augmentation occupancies, which VASP writes into every CHGCAR of the "
                           f"run of {item.outcar} (the file is cut short?)")


def from_directory(root: Path, *, labels: dict[str, str] | None = None) -> Iterator[HarvestItem]:
    """CHGCAR files below ``root``; the id is the file's directory relative to ``root``.

    A ``density.npz`` beside a CHGCAR (a dftflow GPAW run directory) adds its PAW density matrices.
    ``labels`` (``functional``, ``engine``) are the user's word for every density of the tree:
    they win over what an OUTCAR says, and are the only source of them where no OUTCAR is beside
    a CHGCAR.
    """
    root = Path(root)
    labels = {k: v for k, v in (labels or {}).items() if v}
    for chgcar in sorted(p for p in root.rglob("CHGCAR*") if p.is_file() and
                         re.fullmatch(r"CHGCAR(\.gz|\.bz2)?", p.name)):
        rel = chgcar.parent.relative_to(root).as_posix()
        outcar = next((chgcar.parent / n for n in ("OUTCAR", "OUTCAR.gz", "OUTCAR.bz2")
                       if (chgcar.parent / n).is_file()), None)
        potcar = next((chgcar.parent / n for n in ("POTCAR", "POTCAR.gz", "POTCAR.bz2")
                       if (chgcar.parent / n).is_file()), None)
        yield HarvestItem(safe_id(f"{root.name}/{rel}" if rel != "." else root.name), str(chgcar),
                          {"provenance": {"source": "directory", "path": str(chgcar)}, **labels},
                          outcar=str(outcar) if outcar else None, potcar=str(potcar) if potcar else None,
                          density_npz=str(chgcar.parent / "density.npz") if (chgcar.parent / "density.npz").is_file()
                          else None)


def unlabelled(items: list[HarvestItem]) -> list[HarvestItem]:
    """Items that will be stored without a functional or an engine: no OUTCAR beside them and no label."""
    return [i for i in items if not i.outcar and not (i.meta.get("functional") and i.meta.get("engine"))]


def is_project(path: Path) -> bool:
    """A dftflow project (its jobs in ``jobs.sqlite`` or on a FireWorks LaunchPad), not a CHGCAR tree."""
    from dftflow.execution.fw_project import fireworks_profile

    return (Path(path) / "jobs.sqlite").exists() or fireworks_profile(path) is not None


def _project_jobs(project_root: Path) -> list[dict[str, Any]]:
    """The project's jobs as the embedded queue lists them, from ``jobs.sqlite`` or the LaunchPad."""
    from dftflow.execution import fw_project
    from dftflow.execution.queue import JobQueue

    profile = fw_project.fireworks_profile(project_root)
    if profile is not None:
        return [{"state": r["state"], "flow_id": r["uid"], "uuid": r["job_uuid"], "output": {"output": r["output"]}}
                for r in fw_project.jobs(Path(project_root), profile)]
    path = Path(project_root) / "jobs.sqlite"
    if not path.exists():
        return []
    queue = JobQueue(path)
    try:
        return queue.jobs()
    finally:
        queue.close()


def from_project(project_root: Path) -> Iterator[HarvestItem]:
    """Completed static calculations of a dftflow project (either engine)."""
    for job in _project_jobs(project_root):
        out = ((job["output"] or {}).get("output")) or {}
        if job["state"] != "COMPLETED" or not out.get("chgcar"):
            continue
        if out.get("engine") == "vasp":
            if out.get("calculation") not in ("static", "hse06-static"):
                continue
            meta = {
                "functional": out.get("functional"), "engine": "vasp",
                "engine_version": (out.get("versions") or {}).get("vasp"),
                "settings": {"incar": out.get("incar"), "kpoints": out.get("kpoints"),
                             "potcar_symbols": out.get("potcar_symbols"), "inputset": out.get("inputset"),
                             "rung": out.get("rung"), "versions": out.get("versions")},
                "provenance": {"source": "project", "project": str(project_root), "uid": job["flow_id"],
                               "job": job["uuid"], "dir": out.get("dir")},
            }
            outcar = out.get("outcar")
            yield HarvestItem(safe_id(f"{job['flow_id']}@{out.get('functional')}"), out["chgcar"], meta,
                              outcar=outcar if outcar and Path(outcar).exists() else None)
            continue
        if out.get("calculation") != "static":
            continue
        params = out.get("parameters", {})
        functional = params.get("xc", "PBE") + ("+U" if params.get("setups") else "")
        versions = out.get("versions", {})
        meta = {
            "functional": functional, "engine": "gpaw", "engine_version": versions.get("gpaw"),
            "nelect": out.get("nvalence"), "settings_hash": out.get("parameters_hash"),
            "settings": {"parameters": params, "inputset": out.get("inputset"), "versions": versions},
            "provenance": {"source": "project", "project": str(project_root), "uid": job["flow_id"],
                           "job": job["uuid"], "dir": out.get("dir")},
        }
        yield HarvestItem(safe_id(f"{job['flow_id']}@{functional}"), out["chgcar"], meta,
                          density_npz=out.get("density"))


def _load(item: HarvestItem, threads: int = 1) -> dict[str, Any]:
    """Read and validate one density (runs in a worker); raises with the reason on bad input.

    ``threads`` read each large grid in pieces at once.
    """
    from dftflow.density.chgcar import read_chgcar

    meta = dict(item.meta)
    if item.outcar:
        meta = {**outcar_meta(Path(item.outcar)), **meta}
    # Fortran order as the file has it: the store's chunk shuffler reads either order, so nothing is transposed
    sums: list[float] = []  # each block's sum, from the reader's finiteness check
    density = read_chgcar(item.chgcar, nelect=meta.get("nelect"), c_order=False, threads=threads, sums=sums)
    if item.outcar:
        check_against_outcar(density, item, meta)
    record = record_from_density(density, meta, sums)
    if density.augmentation is not None:
        record["augmentation_meta"] = augmentation_meta(density, item, meta)
    if item.density_npz and Path(item.density_npz).exists():
        with np.load(item.density_npz) as data:
            record["density_matrices"] = [data[f"D_{a}"] for a in range(len(density.structure))]
        guess = Path(item.density_npz).with_name("guess.npz")
        if guess.exists():
            record["smooth_delta"] = smooth_delta(Path(item.density_npz), guess, density.total.shape)
    return record


def smooth_delta(density_npz: Path, guess_npz: Path, grid: tuple[int, ...]) -> np.ndarray:
    """GPAW's converged smooth density minus the atomic guess it started from (e/Å³, spin summed).

    Both are GPAW's own ``nt_sR`` on the calculation's grid (pseudo-core
    included, no compensation charges): the quantity the SCF iterates on, and
    the target of models that correct the engine's default start.
    """
    from ase.units import Bohr

    from dftflow.errors import DensityError

    with np.load(density_npz) as final, np.load(guess_npz) as start:
        nt, nt0 = final["nt_sR"], start["nt_sR"]
    if nt.shape != nt0.shape or tuple(nt.shape[1:]) != tuple(grid):
        raise DensityError(f"{guess_npz}: atomic-guess grid {nt0.shape} does not match the density "
                           f"{nt.shape} / CHGCAR grid {tuple(grid)}")
    return (nt - nt0).sum(axis=0) / Bohr**3


def augmentation_meta(density: Any, item: HarvestItem, meta: dict[str, Any]) -> dict[str, Any]:
    """How to read the augmentation blocks: layout, projector l's and POTCAR per species, LMAXMIX, engine.

    Raises when the channels of a species do not give the block size its ions have in the CHGCAR.
    """
    from dftflow.errors import DensityError
    from dftflow.vasp.potcar import read_lmaxmix, read_potcar_channels, rholm_size, species_projector_l

    out: dict[str, Any] = {"layout": "vasp-rholm", "engine": meta.get("engine") or "vasp"}
    source = item.outcar or item.potcar
    if item.outcar:
        out["lmaxmix"] = read_lmaxmix(item.outcar)
    if source is None:
        return out
    channels = read_potcar_channels(source)
    species = list(dict.fromkeys(site.specie.symbol for site in density.structure))
    out["projector_l"] = species_projector_l(channels, species, source)
    out["potcars"] = {symbol: c.titel for symbol, c in zip(species, channels, strict=True)}
    for key, blocks in density.augmentation.items():
        for a, (site, values) in enumerate(zip(density.structure, blocks, strict=True)):
            expected = rholm_size(out["projector_l"][site.specie.symbol])
            if len(values) != expected:
                raise DensityError(f"{item.chgcar}: ion {a + 1} ({site.specie.symbol}) has {len(values)} "
                                   f"augmentation occupancies in block {key!r}; the projectors "
                                   f"l={out['projector_l'][site.specie.symbol]} of {source} give {expected}")
    return out


def rho32(grid: np.ndarray, volume: float) -> np.ndarray:
    """``grid / volume`` rounded to float32: the same numbers as ``(grid / volume).astype(np.float32)``.

    Divided in float64 a slice at a time, so no full-size float64 temporary is made;
    the result keeps the grid's memory order (C or Fortran), so nothing is transposed.
    """
    out = np.empty_like(grid, dtype=np.float32)  # same memory order as grid
    flat, into = grid.ravel(order="K"), out.ravel(order="K")  # views when grid is contiguous
    step = 1 << 16
    for i in range(0, flat.size, step):
        into[i : i + step] = flat[i : i + step] / volume
    return out


def record_from_density(density: Any, meta: dict[str, Any], sums: list[float] | None = None) -> dict[str, Any]:
    """The store's record: rho in e/Å³ (float32, as stored), float64 electron counts, structure, metadata.

    ``sums``: the blocks' sums from the reader (``read_chgcar(..., sums=[])``), the
    same numbers as summing the grids here, which saves a pass over each.
    """
    volume = density.structure.volume
    structure = density.structure
    if sums is None:
        sums = [float(np.sum(density.total, dtype=np.float64)),
                *([] if density.diff is None else [float(np.sum(density.diff, dtype=np.float64))])]
    record = {
        **meta,
        "total": rho32(density.total, volume),
        "diff": None if density.diff is None else rho32(density.diff, volume),
        "magnetisation": None if density.magnetisation is None else rho32(density.magnetisation, volume),
        "augmentation": density.augmentation,
        "electrons": sums[0] / density.total.size,
        "electrons_diff": None if density.diff is None else sums[1] / density.diff.size,
        "lattice": structure.lattice.matrix,
        "frac_coords": structure.frac_coords,
        "numbers": [site.specie.Z for site in structure],
        "formula": structure.composition.reduced_formula,
        "source": density.source,
    }
    return record


def harvest(items: list[HarvestItem], out: Path, *, workers: int = 1, progress: Any = None,
            shard_size: int = 64, compression: str = "gzip", threads: int = 1,
            level: int | None = None) -> dict[str, Any]:
    """Store every item not stored yet; quarantine the ones that fail, with their reasons.

    ``workers`` processes read and validate the files; ``threads`` read each large grid in
    pieces and deflate its chunks at once (several cores for one large file); ``level`` is the
    deflate level (default :data:`~dftflow.dataset.store.DEFLATE_LEVEL`, recorded in each shard).
    """
    from dftflow.dataset.store import DEFLATE_LEVEL

    writer = ShardWriter(Path(out), max_materials=shard_size, compression=compression, threads=threads,
                         level=DEFLATE_LEVEL if level is None else level)
    todo = [it for it in items if not writer.manifest.is_done(it.material_id)]
    taken = writer.claim_many([it.material_id for it in todo])
    claimed = [it for it in todo if it.material_id in taken]
    if progress is not None:
        progress.start("harvest", len(claimed))
    stored = quarantined = 0
    try:
        for result in run_tasks(functools.partial(_load, threads=threads), claimed, workers=workers, chunk_size=1,
                                preload=("dftflow.dataset.harvest", "dftflow.density.chgcar")):
            item = result.task
            if result.error is not None:
                writer.manifest.quarantine(item.material_id, item.chgcar, result.error)
                writer.manifest.release([item.material_id])
                quarantined += 1
            else:
                writer.write(item.material_id, result.result)
                stored += 1
            if progress is not None:
                progress.advance()
        writer.flush()
    finally:
        writer.close()
    return {"items": len(items), "already_stored": len(items) - len(todo), "taken_by_others": len(todo) - len(claimed),
            "stored": stored, "quarantined": quarantined}


def info(root: Path) -> dict[str, Any]:
    """Counts, elements, grid sizes, functionals and bytes of a dataset."""
    from collections import Counter

    from dftflow.dataset.store import Manifest

    manifest = Manifest(Path(root))
    try:
        rows = manifest.db.execute(
            "SELECT material_id, formula, nsites, grid, functional, engine, nbytes FROM materials "
            "WHERE state='stored'").fetchall()
        quarantined = manifest.quarantined()
    finally:
        manifest.close()
    from pymatgen.core import Composition

    elements: Counter[str] = Counter()
    for _, formula, *_ in rows:
        elements.update(el.symbol for el in Composition(formula).elements)
    points = [int(np.prod(json.loads(r[3]))) for r in rows]
    size = sum(p.stat().st_size for p in (Path(root) / "shards").glob("*.h5"))
    return {
        "materials": len(rows), "quarantined": len(quarantined),
        "functionals": dict(Counter(r[4] for r in rows)), "engines": dict(Counter(r[5] for r in rows)),
        "elements": dict(elements.most_common()), "grid_points_total": int(sum(points)),
        "grid_points_median": int(np.median(points)) if points else 0,
        "bytes_on_disk": size, "bytes_per_grid_point": size / sum(points) if points else None,
        "quarantine": [{"material_id": m, "source": s, "reason": r} for m, s, r in quarantined],
    }
