"""Read and write VASP's CHGCAR format (also CHG, AECCAR0/1/2, PARCHG).

Layout of a file, as VASP writes it::

    comment
    scale
    lattice (3 lines)
    species          (absent in VASP 4 files)
    counts
    [Selective dynamics]
    Direct | Cartesian
    one coordinate line per site
    <blank line>
    nx ny nz
    nx*ny*nz values of ρ·V, x fastest, 5 per line (10 in CHG)
    augmentation occupancies   1  n1      (CHGCAR only: one block per site)
    n1 values, 5 per line
    ...
    moments of all sites, 5 per line      (before each magnetisation block)
    nx ny nz
    magnetisation block, then its augmentation occupancies; one block for a
    collinear (ISPIN=2), three (x, y, z) for a non-collinear calculation

The reader checks what tolerant parsers let through: a block with fewer or more
values than the grid, a file cut short (also inside the augmentation section), a
number Fortran wrote without its exponent letter (``0.123-100``, read correctly
as 0.123E-100), garbled and non-finite values. Every problem is a
:class:`~dftflow.errors.DensityError` naming the file, the line and the reason.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from dftflow.density._fortran import format_fortran
from dftflow.density._reader import Reader, read_bytes
from dftflow.density.model import BLOCK_KEYS, Density
from dftflow.errors import DensityError

__all__ = ["read_chgcar", "write_chgcar"]


def read_chgcar(
    path: str | os.PathLike,
    *,
    nelect: float | None = None,
    nelect_tol: float = 1e-2,
    species: Sequence[str] | None = None,
    c_order: bool = True,
    threads: int = 1,
    sums: list[float] | None = None,
) -> Density:
    """Read a CHGCAR-format file (plain, gzip, bzip2 or xz, recognised by content).

    Parameters
    ----------
    path
        The file.
    nelect
        Expected number of valence electrons (VASP's NELECT); when given, a density
        that integrates to a number further than ``nelect_tol`` from it is refused.
    nelect_tol
        Tolerance of that check, in electrons.
    species
        Element of each species group, for a VASP 4 file whose header has no species
        line and whose comment line does not name them.
    c_order
        False keeps each grid in the file's memory order (Fortran: x fastest), which
        saves a transposing copy for callers that do not care (the harvest); the
        values and their indexing ``grid[x, y, z]`` are the same either way.
    threads
        Read each large grid on this many threads (needs dftflow's compiled reader).
    sums
        A list that receives the sum of each data block in file order (``np.sum`` of its
        values as the file lists them), from the pass that checked them: ``sums[0]`` over
        the grid size is the number of electrons without another pass (the harvest's use).

    Returns
    -------
    Density
        Grids as in the file (ρ·V), sites in file order.

    Raises
    ------
    DensityError
        The file is missing, cut short, garbled, inconsistent, or its electron count
        is not ``nelect``.
    """
    reader = Reader(read_bytes(path), str(path), c_order=c_order, threads=threads)
    structure = reader.header(species)
    blocks, augmentation, moments = reader.body(len(structure))
    keys = BLOCK_KEYS[len(blocks)]
    density = Density(
        structure=structure,
        total=blocks[0],
        diff=blocks[1] if len(blocks) == 2 else None,
        magnetisation=np.stack(blocks[1:]) if len(blocks) == 4 else None,
        augmentation=dict(zip(keys, augmentation)) if augmentation else None,
        source=str(path),
        moments=moments,
        checked=True,  # every block was summed and its values found finite
    )
    electrons = reader.sums[0] / blocks[0].size
    if nelect is not None and abs(electrons - nelect) > nelect_tol:
        raise DensityError(
            f"{path}: the density integrates to {electrons:.6f} electrons, "
            f"expected NELECT = {nelect:g} (tolerance {nelect_tol:g})"
        )
    if sums is not None:
        sums[:] = reader.sums
    return density


def write_chgcar(density: Density, path: str | os.PathLike) -> None:
    """Write ``density`` as a CHGCAR that VASP reads with ICHARG = 1.

    Sites are grouped by species in order of first appearance (the order a
    POTCAR must follow); the augmentation occupancies and moments move with
    their sites, so a structure not sorted by species is written consistently.
    The grids do not depend on the site order. Values are written in VASP's
    formats: grids as `` 0.12345678901E+01`` (11 digits, x fastest, 5 a line),
    occupancies as ``E15.7``, moments as ``E20.12``; magnitudes below 1E-100
    become 0. Before each magnetisation block come the site moments: those of
    ``density.moments``, else the structure's ``magmom`` site property, else zeros.
    A ``.gz``, ``.bz2`` or ``.xz`` suffix compresses the file. The file is
    replaced atomically.

    Raises
    ------
    DensityError
        A site is disordered, or a value cannot be written in the format.
    """
    path = Path(path)
    structure = density.structure
    if not structure.is_ordered:
        raise DensityError(f"{path}: cannot write a structure with partially occupied sites")
    order = _species_order(structure)
    parts = [_header(structure, order)]
    moments = _moments_to_write(density)
    try:
        for index, (key, grid) in enumerate(zip(density.block_keys, density.blocks())):
            if index > 0:
                site_moments = moments[order] if moments.ndim == 1 else moments[order, index - 1]
                parts.append(format_fortran(site_moments, width=20, digits=12, per_line=5))
            nx, ny, nz = grid.shape
            parts.append(f"{nx:5d}{ny:5d}{nz:5d}\n".encode())
            parts.append(format_fortran(grid.ravel(order="F"), width=17, digits=11, per_line=5, lead=" "))
            if density.augmentation is not None:
                parts.extend(_augmentation_text(density.augmentation[key], order))
    except ValueError as exc:
        raise DensityError(f"{path}: {exc}") from exc
    _write_bytes(path, b"".join(parts))


# --------------------------------------------------------------------------- helpers of write_chgcar


def _species_order(structure: Structure) -> np.ndarray:
    """Site indices grouped by species in order of first appearance (stable within a species)."""
    symbols = [site.specie.symbol for site in structure]
    first = {s: i for i, s in reversed(list(enumerate(symbols)))}
    return np.array(sorted(range(len(symbols)), key=lambda i: (first[symbols[i]], i)), dtype=np.int64)


def _header(structure: Structure, order: np.ndarray) -> bytes:
    symbols = [structure[int(i)].specie.symbol for i in order]
    groups = list(dict.fromkeys(symbols))
    lines = [structure.formula, "   1.00000000000000"]
    lines += ["".join(f"{x:22.16f}" for x in row) for row in structure.lattice.matrix]
    lines.append("".join(f"{s:>5}" for s in groups))
    lines.append("".join(f"{symbols.count(s):6d}" for s in groups))
    lines.append("Direct")
    lines += ["".join(f"{x:20.16f}" for x in structure[int(i)].frac_coords) for i in order]
    lines.append("")
    return ("\n".join(lines) + "\n").encode()


def _moments_to_write(density: Density) -> np.ndarray:
    """Per-site moments: (nsites,) for a collinear, (nsites, 3) for a non-collinear density."""
    if density.moments is not None:
        return density.moments
    magmom = density.structure.site_properties.get("magmom")
    vectors = np.zeros((len(density.structure), 3))
    if magmom is not None:
        for i, m in enumerate(magmom):  # a scalar is a moment along z (VASP's SAXIS)
            vectors[i] = np.asarray(m, dtype=float) if np.ndim(m) else (0.0, 0.0, float(m))
    return vectors[:, 2] if density.diff is not None else vectors


def _augmentation_text(per_site: list[np.ndarray], order: np.ndarray) -> list[bytes]:
    parts = []
    for ion, index in enumerate(order, start=1):
        values = per_site[int(index)]
        parts.append(f"augmentation occupancies{ion:4d}{values.size:4d}\n".encode())
        parts.append(format_fortran(values.real, width=15, digits=7, per_line=5))
        if np.iscomplexobj(values):
            parts.append(f"augmentation occupancies (imaginary part){ion:4d}{values.size:4d}\n".encode())
            parts.append(format_fortran(values.imag, width=15, digits=7, per_line=5))
    return parts


def _write_bytes(path: Path, data: bytes) -> None:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        data = gzip.compress(data, compresslevel=6)
    elif suffix == ".bz2":
        data = bz2.compress(data)
    elif suffix == ".xz":
        data = lzma.compress(data)
    # A new name beside the target, created like any file (so the umask applies), then renamed.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DensityError(f"{path}: cannot write the file ({exc.strerror or exc})") from exc
