"""The charge density of one calculation, as VASP stores it, independent of the file format."""

from __future__ import annotations

import math
from dataclasses import InitVar, dataclass

import numpy as np
from pymatgen.core import Structure

from dftflow.errors import DensityError

#: Names of the data blocks, in file order, by the number of blocks in a file.
BLOCK_KEYS: dict[int, tuple[str, ...]] = {
    1: ("total",),
    2: ("total", "diff"),
    4: ("total", "m_x", "m_y", "m_z"),
}


@dataclass(eq=False)
class Density:
    """A charge density on a periodic grid, with VASP's PAW one-centre occupancies.

    All grids hold ρ·V (the density in e/Å³ times the cell volume in Å³), the
    convention of VASP's CHGCAR, so that ``grid.mean()`` is a number of electrons
    (or of Bohr magnetons for a magnetisation block).

    Parameters
    ----------
    structure
        The cell and the atoms; site *i* owns ``augmentation[key][i]`` and ``moments[i]``.
    total
        float64, shape ``(nx, ny, nz)``, indexed ``[ix, iy, iz]``: the charge density
        (spin up + spin down), ρ·V.
    diff
        Collinear magnetisation density (spin up − spin down), ρ·V, same shape, or None.
    magnetisation
        Non-collinear magnetisation, shape ``(3, nx, ny, nz)`` for (m_x, m_y, m_z), ρ·V,
        or None. At most one of ``diff`` and ``magnetisation`` is set.
    augmentation
        VASP's "augmentation occupancies" (the PAW one-centre occupancies ρ_ij):
        ``{"total": [one 1-D array per site], "diff": [...]}`` (keys ``"m_x"``,
        ``"m_y"``, ``"m_z"`` for a non-collinear density), one entry per data block,
        or None. Arrays are complex where the file holds imaginary parts.
    source
        The path the density was read from ("" when built in memory).
    moments
        The per-site magnetic moments VASP writes before each magnetisation block
        (its ``MAGMOM``): shape ``(nsites,)`` for a collinear, ``(nsites, 3)`` for a
        non-collinear density; None when the file has none or the density has no spin.
    """

    structure: Structure
    total: np.ndarray
    diff: np.ndarray | None = None
    magnetisation: np.ndarray | None = None
    augmentation: dict[str, list[np.ndarray]] | None = None
    source: str = ""
    moments: np.ndarray | None = None
    #: The grids are float64 arrays whose finiteness the caller has checked (a reader that
    #: summed them already): their own check, a pass over every value, is skipped.
    checked: InitVar[bool] = False

    def __post_init__(self, checked: bool = False) -> None:
        where = self.source or "Density"
        self.total = _grid(self.total, "total", where, checked)
        if self.total.ndim != 3 or 0 in self.total.shape:
            raise DensityError(f"{where}: total must be a non-empty 3-D grid, got shape {self.total.shape}")
        if self.diff is not None and self.magnetisation is not None:
            raise DensityError(f"{where}: set either diff (collinear) or magnetisation (non-collinear), not both")
        if self.diff is not None:
            self.diff = _grid(self.diff, "diff", where, checked)
            if self.diff.shape != self.total.shape:
                raise DensityError(f"{where}: diff has shape {self.diff.shape}, total {self.total.shape}")
        if self.magnetisation is not None:
            self.magnetisation = _grid(self.magnetisation, "magnetisation", where, checked)
            if self.magnetisation.shape != (3, *self.total.shape):
                raise DensityError(
                    f"{where}: magnetisation must have shape {(3, *self.total.shape)}, got {self.magnetisation.shape}"
                )
        nsites = len(self.structure)
        if self.augmentation is not None:
            self.augmentation = _checked_augmentation(self.augmentation, self.block_keys, nsites, where)
        if self.moments is not None:
            self.moments = _checked_moments(self.moments, self.diff, self.magnetisation, nsites, where)

    @property
    def grid(self) -> tuple[int, int, int]:
        """The grid dimensions ``(nx, ny, nz)``."""
        nx, ny, nz = self.total.shape
        return nx, ny, nz

    @property
    def block_keys(self) -> tuple[str, ...]:
        """Names of the data blocks in file order (keys of :attr:`augmentation`)."""
        if self.diff is not None:
            return BLOCK_KEYS[2]
        if self.magnetisation is not None:
            return BLOCK_KEYS[4]
        return BLOCK_KEYS[1]

    def blocks(self) -> list[np.ndarray]:
        """The data grids in file order: total, then diff or m_x, m_y, m_z."""
        if self.diff is not None:
            return [self.total, self.diff]
        if self.magnetisation is not None:
            return [self.total, *self.magnetisation]
        return [self.total]

    def electrons(self) -> float:
        """Number of electrons in the cell: the mean of ρ·V over the grid."""
        return float(self.total.sum() / self.total.size)

    def rho(self) -> np.ndarray:
        """The charge density in e/Å³ (``total`` divided by the cell volume)."""
        return self.total / self.structure.volume


def checked_sum(values: np.ndarray) -> float | None:
    """``np.sum(values)``, or None when a value is not finite.

    A finite sum proves every value finite (a NaN or infinity makes the sum
    non-finite) and is cheaper than a mask; only a sum that overflows is checked
    value by value. One pass gives a grid's check and its electron count.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.sum(values))
    return total if math.isfinite(total) or bool(np.isfinite(values).all()) else None


def all_finite(values: np.ndarray) -> bool:
    """Whether every value is finite (see :func:`checked_sum`)."""
    return checked_sum(values) is not None


def _grid(values: np.ndarray, name: str, where: str, checked: bool = False) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if not (checked and array is values) and not all_finite(array):
        raise DensityError(f"{where}: {name} holds non-finite values")
    return array


def _checked_augmentation(
    augmentation: dict[str, list[np.ndarray]], keys: tuple[str, ...], nsites: int, where: str
) -> dict[str, list[np.ndarray]]:
    if set(augmentation) != set(keys):
        raise DensityError(
            f"{where}: augmentation has blocks {sorted(augmentation)}, the density's data blocks are {list(keys)}"
        )
    checked = {}
    for key in keys:
        per_site = list(augmentation[key])
        if len(per_site) != nsites:
            raise DensityError(f"{where}: augmentation[{key!r}] has {len(per_site)} entries for {nsites} sites")
        arrays = []
        for i, values in enumerate(per_site):
            array = np.asarray(values)
            if not np.iscomplexobj(array):
                array = array.astype(np.float64, copy=False)
            if array.ndim != 1 or not np.isfinite(array).all():
                raise DensityError(f"{where}: augmentation[{key!r}][{i}] must be a finite 1-D array")
            arrays.append(array)
        checked[key] = arrays
    return checked


def _checked_moments(
    moments: np.ndarray, diff: np.ndarray | None, magnetisation: np.ndarray | None, nsites: int, where: str
) -> np.ndarray:
    array = np.asarray(moments, dtype=np.float64)
    if diff is not None:
        shape: tuple[int, ...] = (nsites,)
    elif magnetisation is not None:
        shape = (nsites, 3)
    else:
        raise DensityError(f"{where}: moments given for a density without a magnetisation block")
    if array.shape != shape or not np.isfinite(array).all():
        raise DensityError(f"{where}: moments must be finite with shape {shape}, got {array.shape}")
    return array
