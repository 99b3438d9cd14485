"""The PAW projector channels of VASP POTCARs, and the layout of VASP's augmentation occupancies.

VASP writes, after each grid of a CHGCAR, one block of "augmentation
occupancies" per ion: the one-centre occupancies ρ_ij of its PAW projector
channels expanded in real spherical harmonics (VASP's ``RHOLM``). For
channels i ≤ j (in POTCAR order) with angular momenta l_i, l_j, the block
holds L = |l_i − l_j|, |l_i − l_j| + 2, …, l_i + l_j and, for each L, the
2L + 1 values M = −L … L. The size of a block is therefore fixed by the
channels' l alone (:func:`rholm_blocks`).

The channels are read from the POTCAR header that both the POTCAR and the
OUTCAR carry: the ``Description`` table (``l  E  TYP  RCUT …``) lists every
partial wave. When the header names a pseudised local potential (``ICORE =
l  local potential``), the last row is that channel and not a projector;
otherwise every row is one. An OUTCAR also lists the projectors as it reads
them (``non local Contribution for L=``) and their number (``LMAX``); when
present, both must agree with the table or the file is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dftflow.errors import InputError

__all__ = ["PotcarChannels", "potcar_channels", "read_potcar_channels", "rholm_blocks", "rholm_size",
           "read_lmaxmix", "species_projector_l"]

_TITEL = re.compile(r"^\s*TITEL\s*=\s*(.+?)\s*$", re.MULTILINE)
_ICORE = re.compile(r"^\s*ICORE\s*=\s*(\d+)\s+local potential", re.MULTILINE)
_DESCRIPTION = re.compile(r"^\s*Description\s*\n\s*l\s+E\s+TYP\s+RCUT.*\n((?:\s*\d+\s+\S+\s+\d+\s+\S+.*\n)+)",
                          re.MULTILINE)
_NONLOCAL = re.compile(r"non local Contribution for L=\s*(\d+)")
_LMAX = re.compile(r"number of l-projection\s+operators is LMAX\s*=\s*(\d+)")
_LMAXMIX = re.compile(r"^\s*LMAXMIX\s*=\s*(\S*)", re.MULTILINE)
_ELEMENT = re.compile(r"^([A-Z][a-z]?)")


@dataclass(frozen=True)
class PotcarChannels:
    """One POTCAR's partial waves: ``titel`` (e.g. ``PAW_PBE Si_GW 04May2012``), its element and its l's."""

    titel: str
    element: str
    projector_l: tuple[int, ...]
    local_l: int | None  # the pseudised channel that makes the local potential, if the table lists one


def rholm_blocks(l_j: tuple[int, ...] | list[int]) -> list[tuple[int, int, int]]:
    """(i, j, L) of every irrep in one ion's augmentation block, in VASP's order (i ≤ j, L in steps of 2)."""
    return [(i, j, L) for i, li in enumerate(l_j) for j in range(i, len(l_j))
            for L in range(abs(li - l_j[j]), li + l_j[j] + 1, 2)]


def rholm_size(l_j: tuple[int, ...] | list[int]) -> int:
    """Number of augmentation occupancies VASP writes per ion for projectors of angular momenta ``l_j``."""
    return sum(2 * L + 1 for _, _, L in rholm_blocks(l_j))


def potcar_channels(text: str, where: str = "POTCAR") -> list[PotcarChannels]:
    """The channels of every POTCAR header in ``text`` (a POTCAR or an OUTCAR), in file (species) order."""
    titles = list(_TITEL.finditer(text))
    if not titles:
        raise InputError(f"{where}: no POTCAR header (TITEL) found")
    out = []
    for k, title in enumerate(titles):
        segment = text[title.start(): titles[k + 1].start() if k + 1 < len(titles) else len(text)]
        name = title.group(1)
        table = _DESCRIPTION.search(segment)
        if table is None:
            raise InputError(f"{where}: POTCAR {name!r} has no Description table of its channels")
        rows = [int(line.split()[0]) for line in table.group(1).strip().splitlines()]
        icore = _ICORE.search(segment[: table.start()])
        local = None
        if icore is not None:
            local = rows.pop()
            if local != int(icore.group(1)):
                raise InputError(f"{where}: POTCAR {name!r}: the last Description row has l={local}, its "
                                 f"local potential is ICORE={icore.group(1)}; cannot tell the projectors")
        listed = [int(x) for x in _NONLOCAL.findall(segment)]
        if listed and listed != rows:
            raise InputError(f"{where}: POTCAR {name!r}: projectors l={listed} read by VASP, l={rows} in the "
                             "Description table")
        if (lmax := _LMAX.search(segment)) and int(lmax.group(1)) != len(rows):
            raise InputError(f"{where}: POTCAR {name!r}: LMAX={lmax.group(1)} projectors, {len(rows)} in the "
                             "Description table")
        parts = name.split()
        element = _ELEMENT.match(parts[1] if len(parts) > 1 else parts[0])
        if element is None:
            raise InputError(f"{where}: cannot tell the element of POTCAR {name!r}")
        out.append(PotcarChannels(name, element.group(1), tuple(rows), local))
    return out


def _text(path: str | Path) -> str:
    from dftflow.compression import read_text

    return read_text(path)


def read_potcar_channels(path: str | Path) -> list[PotcarChannels]:
    """:func:`potcar_channels` of a POTCAR or OUTCAR file (plain or compressed)."""
    return potcar_channels(_text(path), str(path))


def read_lmaxmix(path: str | Path) -> int | None:
    """LMAXMIX of an OUTCAR (None when it does not say)."""
    m = _LMAXMIX.search(_text(path))
    if m is None:
        return None
    if not m.group(1).isdigit():
        raise InputError(f"{path}: LMAXMIX is {m.group(1)!r}, not a whole number")
    return int(m.group(1))


def species_projector_l(channels: list[PotcarChannels], species: list[str],
                        where: str = "POTCAR") -> dict[str, list[int]]:
    """Projector l's per element of ``species`` (the structure's species groups, in POTCAR order)."""
    if len(channels) != len(species):
        raise InputError(f"{where}: {len(channels)} POTCAR(s) for {len(species)} species {species}")
    out: dict[str, list[int]] = {}
    for c, symbol in zip(channels, species, strict=True):
        if c.element != symbol:
            raise InputError(f"{where}: POTCAR {c.titel!r} does not belong to species {symbol}")
        if symbol in out and out[symbol] != list(c.projector_l):
            raise InputError(f"{where}: two POTCARs with different projectors for {symbol}")
        out[symbol] = list(c.projector_l)
    return out
