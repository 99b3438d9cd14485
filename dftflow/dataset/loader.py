"""Stream a dataset to a trainer: random probe points per structure, or whole grids in slabs.

:class:`ProbeDataset` is a ``torch.utils.data.Dataset``: item *i* is one
material with ``n_probes`` grid points drawn uniformly from its grid (positions
in Cartesian Å, density in e/Å³). The draw depends only on ``(seed, epoch,
i)``, so a run is reproducible with any number of ``DataLoader`` workers;
call :meth:`ProbeDataset.set_epoch` between epochs for fresh points.

:func:`iter_grid` walks one material's full grid in slabs of whole x–y planes
(the shards' chunk layout, so every chunk is decompressed once) and never
holds more than one slab: evaluation and inference on big cells stay within a
fixed memory budget.

Memory: a probe item reads the material's grid once (one float32 copy) and
keeps only the sampled points.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dftflow.dataset.store import Dataset
from dftflow.errors import InputError


def grid_fractional(shape: Sequence[int], flat: np.ndarray) -> np.ndarray:
    """Fractional coordinates of grid points given by flat (C-order) indices; point (i,j,k) is at (i/nx, j/ny, k/nz)."""
    idx = np.stack(np.unravel_index(flat, tuple(shape)), axis=-1)
    return idx / np.asarray(shape, dtype=np.float64)


class ProbeDataset(torch.utils.data.Dataset):
    """Materials of a dataset directory, each with ``n_probes`` random grid points.

    ``ids`` picks materials (e.g. one set of a split); by default all. With
    ``n_probes=None`` every grid point is returned (small cells only — use
    :func:`iter_grid` for big ones). ``target`` names the grid served as
    ``density``: ``total`` (the CHGCAR density) or ``smooth_delta`` (GPAW's
    smooth density minus its atomic guess). ``spin=True`` adds the magnetisation
    density (zeros for non-spin-polarised materials). ``occupancies``: add the
    PAW occupancy targets, ``"gpaw"`` (or True) the spin-summed density matrices
    (``density_matrices``), ``"vasp"`` the total augmentation occupancies of the
    CHGCAR (``augmentation_occupancies``, one flat block per atom).
    """

    def __init__(self, root: Path | str, ids: Sequence[str] | None = None, *, n_probes: int | None = 200,
                 seed: int = 0, spin: bool = False, dtype: torch.dtype = torch.float32,
                 occupancies: bool | str = False, target: str = "total") -> None:
        self.root = Path(root)
        self.store = Dataset(self.root)
        known = set(self.store.ids())
        self.ids = list(ids) if ids is not None else self.store.ids()
        missing = [i for i in self.ids if i not in known]
        if missing:
            raise InputError(f"{self.root}: {len(missing)} requested material(s) are not in the dataset, "
                             f"e.g. {missing[0]!r}")
        self.n_probes, self.seed, self.spin, self.dtype = n_probes, seed, spin, dtype
        self.occupancies = occupancies
        self.target = target
        if target != "total":
            lacking = [i for i in self.ids if target not in self.store.header(i)["has"]]
            if lacking:
                raise InputError(f"{self.root}: {len(lacking)} material(s) have no {target!r} grid, e.g. "
                                 f"{lacking[0]!r} (smooth_delta comes from GPAW runs that saved guess.npz)")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        mid = self.ids[index]
        head = self.store.header(mid)
        lattice = np.asarray(head["lattice"], dtype=np.float64)
        shape = tuple(head["grid"])
        npoints = int(np.prod(shape))
        total = self.store.grid(mid, self.target)[()].reshape(-1)
        if self.n_probes is None or self.n_probes >= npoints:
            flat = np.arange(npoints)
        else:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            flat = np.sort(rng.choice(npoints, size=self.n_probes, replace=False))
        item: dict[str, Any] = {
            "material_id": mid,
            "numbers": torch.as_tensor(np.asarray(head["numbers"], dtype=np.int64)),
            "positions": torch.as_tensor(np.asarray(head["frac_coords"]) @ lattice, dtype=self.dtype),
            "cell": torch.as_tensor(lattice, dtype=self.dtype),
            "grid_shape": torch.as_tensor(shape),
            "probe_index": torch.as_tensor(flat),
            "probe_positions": torch.as_tensor(grid_fractional(shape, flat) @ lattice, dtype=self.dtype),
            "density": torch.as_tensor(total[flat], dtype=self.dtype),
            "density_scale": torch.as_tensor(float(np.abs(total).mean()), dtype=self.dtype),  # of the whole grid
        }
        if self.spin:
            diff = (self.store.grid(mid, "diff")[()].reshape(-1)[flat] if "diff" in head["has"]
                    else np.zeros(len(flat), dtype=np.float32))
            item["spin_density"] = torch.as_tensor(diff, dtype=self.dtype)
        if self.occupancies == "vasp":
            item["augmentation_occupancies"] = self.augmentation_occupancies(mid)
        elif self.occupancies:
            item["density_matrices"] = self.density_matrices(mid)
        return item

    def augmentation_occupancies(self, material_id: str) -> list[np.ndarray]:
        """VASP's augmentation occupancies of the total density, one flat block per atom (VASP materials)."""
        blocks = self.store.augmentation(material_id, "total")
        if blocks is None:
            raise InputError(f"{self.root}: material {material_id} has no augmentation occupancies "
                             "(VASP occupancy targets come from CHGCARs that hold them)")
        return blocks

    def density_matrices(self, material_id: str) -> list[np.ndarray]:
        """The spin-summed PAW density matrices of every atom (GPAW materials)."""
        matrices = self.store.density_matrices(material_id)
        if matrices is None:
            raise InputError(f"{self.root}: material {material_id} has no PAW density matrices "
                             "(occupancy targets come from GPAW runs)")
        return [np.asarray(D).sum(axis=0) for D in matrices]


def collate_probes(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate materials into one batch; ``atom_batch``/``probe_batch`` give each row's material."""
    out: dict[str, Any] = {"material_id": [it["material_id"] for it in items]}
    for key in ("numbers", "positions", "probe_positions", "density", "spin_density", "probe_index"):
        if key in items[0]:
            out[key] = torch.cat([it[key] for it in items])
    out["cell"] = torch.stack([it["cell"] for it in items])
    out["grid_shape"] = torch.stack([it["grid_shape"] for it in items])
    out["atom_batch"] = torch.cat([torch.full((len(it["numbers"]),), i) for i, it in enumerate(items)])
    out["probe_batch"] = torch.cat([torch.full((len(it["density"]),), i) for i, it in enumerate(items)])
    return out


@dataclass(slots=True)
class GridSlab:
    """Planes ``z0:z1`` of a grid: values (nx, ny, z1-z0) and the Cartesian positions of those points."""

    z0: int
    z1: int
    values: np.ndarray
    positions: np.ndarray  # (nx*ny*(z1-z0), 3), Å, in the C order of ``values``

    @property
    def flat_values(self) -> np.ndarray:
        return self.values.reshape(-1)


def slab_positions(lattice: np.ndarray, shape: Sequence[int], z0: int, z1: int) -> np.ndarray:
    """Cartesian positions (Å) of grid planes z0:z1, C order over (x, y, z)."""
    nx, ny, nz = shape
    f = np.stack(np.meshgrid(np.arange(nx) / nx, np.arange(ny) / ny, np.arange(z0, z1) / nz, indexing="ij"),
                 axis=-1).reshape(-1, 3)
    return f @ np.asarray(lattice, dtype=np.float64)


def iter_grid(store: Dataset | Path | str, material_id: str, *, name: str = "total",
              max_points: int = 1 << 20, positions: bool = True) -> Iterator[GridSlab]:
    """Slabs of whole x–y planes of one grid, each at most ``max_points`` points (but at least one plane)."""
    own = not isinstance(store, Dataset)
    ds = Dataset(store) if own else store
    try:
        head = ds.header(material_id)
        grid = ds.grid(material_id, name)
        nx, ny, nz = grid.shape[-3:]
        chunk_depth = (grid.chunks or (nx, ny, nz))[-1]
        depth = max(1, max_points // (nx * ny))
        if depth >= chunk_depth:  # whole chunks per slab: each chunk is decompressed once
            depth -= depth % chunk_depth
        for z0 in range(0, nz, depth):
            z1 = min(nz, z0 + depth)
            values = grid[..., z0:z1]
            pos = slab_positions(head["lattice"], (nx, ny, nz), z0, z1) if positions else np.empty((0, 3))
            yield GridSlab(z0, z1, values, pos)
    finally:
        if own:
            ds.close()
