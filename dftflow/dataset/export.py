"""Export a dataset in the layout the ChargE3Net code reads (its ``DensityPickleDir``).

One directory with, per material, ``<name>.npy`` (the density in e/Å³ on the
grid, float32; with ``spin`` a trailing axis of two: total and magnetisation)
and ``<name>_atoms.pkl`` (a pickled ``ase.Atoms``, periodic), plus

* ``filelist.txt``      one ``<name>`` per line: the order the indices refer to;
* ``probe_counts.csv``  ``id,Count,shape_x,shape_y,shape_z`` (grid points per material);
* ``split.json``        ``{"train": [...], "validation": [...], "test": [...]}`` indices into filelist;
  for the tuning task also ``split_pretrain.json`` with the PBE phase;
* ``ids.csv``           ``name,material_id``: file names are sanitised dataset ids.

Files already exported are kept, so an interrupted export resumes.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from dftflow.dataset.store import Dataset
from dftflow.errors import InputError

_PHASE_NAMES = {"train": "train", "val": "validation", "test": "test"}


def file_stem(material_id: str, taken: set[str]) -> str:
    """A file-system-safe, unique name for a material id."""
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", material_id).strip("._") or "material"
    unique, n = stem, 1
    while unique in taken:
        n += 1
        unique = f"{stem}_{n}"
    taken.add(unique)
    return unique


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


def export_charge3net(root: Path | str, out: Path | str, *, split: dict[str, Any] | None = None,
                      task: str | None = None, spin: bool = False, progress: Any = None) -> dict[str, Any]:
    """Write the ChargE3Net layout for all materials, or for the materials of one task of ``split``."""
    from ase import Atoms

    from dftflow.dataset.split import task_sets

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = Dataset(root)
    try:
        if split is not None:
            if task is None:
                raise InputError("exporting with a split needs --task (one of: " + ", ".join(split["tasks"]) + ")")
            phases = task_sets(split, task)
            ids = sorted({m for members in phases.values() for m in members})
        else:
            phases, ids = {}, ds.ids()
        taken: set[str] = set()
        stems = {mid: file_stem(mid, taken) for mid in ids}
        if progress is not None:
            progress.start("export", len(ids))
        written = 0
        counts = []
        for mid in ids:
            head = ds.header(mid)
            stem = stems[mid]
            counts.append((stem, int(np.prod(head["grid"])), *head["grid"]))
            npy, pkl = out / f"{stem}.npy", out / f"{stem}_atoms.pkl"
            if not (npy.exists() and pkl.exists()):
                rho = ds.grid(mid)[()].astype(np.float32)
                if spin:
                    diff = ds.grid(mid, "diff")[()] if "diff" in head["has"] else np.zeros_like(rho)
                    rho = np.stack([rho, diff.astype(np.float32)], axis=-1)
                lattice = np.asarray(head["lattice"])
                atoms = Atoms(numbers=np.asarray(head["numbers"], dtype=int),
                              scaled_positions=np.asarray(head["frac_coords"]), cell=lattice, pbc=True)
                _atomic_write(npy, lambda fh, rho=rho: np.save(fh, rho))
                _atomic_write(pkl, lambda fh, atoms=atoms: pickle.dump(atoms, fh))
                written += 1
            if progress is not None:
                progress.advance()
    finally:
        ds.close()
    (out / "filelist.txt").write_text("".join(f"{stems[m]}\n" for m in ids))
    with open(out / "probe_counts.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "Count", "shape_x", "shape_y", "shape_z"])
        w.writerows(counts)
    with open(out / "ids.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "material_id"])
        w.writerows((stems[m], m) for m in ids)
    index = {m: i for i, m in enumerate(ids)}
    files = ["filelist.txt", "probe_counts.csv", "ids.csv"]
    if phases:
        main = {_PHASE_NAMES[p]: sorted(index[m] for m in phases[p]) for p in ("train", "val", "test") if p in phases}
        (out / "split.json").write_text(json.dumps(main))
        files.append("split.json")
        if "pretrain" in phases:
            pre = {"train": sorted(index[m] for m in phases["pretrain"]),
                   "validation": sorted(index[m] for m in phases.get("pretrain_val", []))}
            (out / "split_pretrain.json").write_text(json.dumps(pre))
            files.append("split_pretrain.json")
    return {"materials": len(ids), "written": written, "kept": len(ids) - written, "out": str(out),
            "task": task, "spin": spin, "files": files}
