#!/usr/bin/env python
"""Write CIFs of real crystals (experimental room-temperature lattice constants) for bench_pretrained.py;
:func:`primitive_cells` reads such a pool back for the benchmarks.

Each entry is a well-known crystal with its experimental cell: lattice constants
and internal parameters as tabulated in R. W. G. Wyckoff, *Crystal Structures*
(2nd ed., 1963-1971) and the CRC Handbook of Chemistry and Physics ("Lattice
constants of selected crystals"); values rounded to 0.01 Å. The files are
written once into ``bench/real_crystals/`` (committed) by::

    python bench/real_crystals.py
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

H, Q, T = 0.5, 0.25, 1 / 3
# name: (space group, species, fractional sites, a, c or None)
CRYSTALS: dict[str, tuple] = {
    # rocksalt
    "LiCl": (225, ["Li", "Cl"], [(0, 0, 0), (H, H, H)], 5.13, None),
    "NaF": (225, ["Na", "F"], [(0, 0, 0), (H, H, H)], 4.63, None),
    "KCl": (225, ["K", "Cl"], [(0, 0, 0), (H, H, H)], 6.29, None),
    "KBr": (225, ["K", "Br"], [(0, 0, 0), (H, H, H)], 6.60, None),
    "AgCl": (225, ["Ag", "Cl"], [(0, 0, 0), (H, H, H)], 5.55, None),
    "CaO": (225, ["Ca", "O"], [(0, 0, 0), (H, H, H)], 4.81, None),
    "SrO": (225, ["Sr", "O"], [(0, 0, 0), (H, H, H)], 5.16, None),
    "BaO": (225, ["Ba", "O"], [(0, 0, 0), (H, H, H)], 5.52, None),
    "PbS": (225, ["Pb", "S"], [(0, 0, 0), (H, H, H)], 5.94, None),
    "PbTe": (225, ["Pb", "Te"], [(0, 0, 0), (H, H, H)], 6.46, None),
    "SnTe": (225, ["Sn", "Te"], [(0, 0, 0), (H, H, H)], 6.32, None),
    "TiC": (225, ["Ti", "C"], [(0, 0, 0), (H, H, H)], 4.33, None),
    "TiN": (225, ["Ti", "N"], [(0, 0, 0), (H, H, H)], 4.24, None),
    "ZrN": (225, ["Zr", "N"], [(0, 0, 0), (H, H, H)], 4.58, None),
    "ScN": (225, ["Sc", "N"], [(0, 0, 0), (H, H, H)], 4.50, None),
    "CaS": (225, ["Ca", "S"], [(0, 0, 0), (H, H, H)], 5.69, None),
    # CsCl type
    "CsCl": (221, ["Cs", "Cl"], [(0, 0, 0), (H, H, H)], 4.12, None),
    "CsBr": (221, ["Cs", "Br"], [(0, 0, 0), (H, H, H)], 4.29, None),
    "NiAl": (221, ["Ni", "Al"], [(0, 0, 0), (H, H, H)], 2.89, None),
    "CuZn": (221, ["Cu", "Zn"], [(0, 0, 0), (H, H, H)], 2.95, None),
    # zincblende and diamond
    "AlP": (216, ["Al", "P"], [(0, 0, 0), (Q, Q, Q)], 5.46, None),
    "AlAs": (216, ["Al", "As"], [(0, 0, 0), (Q, Q, Q)], 5.66, None),
    "InP": (216, ["In", "P"], [(0, 0, 0), (Q, Q, Q)], 5.87, None),
    "InAs": (216, ["In", "As"], [(0, 0, 0), (Q, Q, Q)], 6.06, None),
    "GaP": (216, ["Ga", "P"], [(0, 0, 0), (Q, Q, Q)], 5.45, None),
    "ZnS": (216, ["Zn", "S"], [(0, 0, 0), (Q, Q, Q)], 5.41, None),
    "ZnSe": (216, ["Zn", "Se"], [(0, 0, 0), (Q, Q, Q)], 5.67, None),
    "CdTe": (216, ["Cd", "Te"], [(0, 0, 0), (Q, Q, Q)], 6.48, None),
    "CuBr": (216, ["Cu", "Br"], [(0, 0, 0), (Q, Q, Q)], 5.69, None),
    "BP": (216, ["B", "P"], [(0, 0, 0), (Q, Q, Q)], 4.54, None),
    "Ge": (227, ["Ge"], [(0, 0, 0)], 5.66, None),
    # wurtzite (u = 0.375-0.382)
    "GaN": (186, ["Ga", "N"], [(T, 2 * T, 0), (T, 2 * T, 0.377)], 3.19, 5.19),
    "AlN": (186, ["Al", "N"], [(T, 2 * T, 0), (T, 2 * T, 0.382)], 3.11, 4.98),
    "CdS": (186, ["Cd", "S"], [(T, 2 * T, 0), (T, 2 * T, 0.377)], 4.14, 6.72),
    "BeO": (186, ["Be", "O"], [(T, 2 * T, 0), (T, 2 * T, 0.378)], 2.70, 4.38),
    # fluorite and antifluorite
    "SrF2": (225, ["Sr", "F"], [(0, 0, 0), (Q, Q, Q)], 5.80, None),
    "BaF2": (225, ["Ba", "F"], [(0, 0, 0), (Q, Q, Q)], 6.20, None),
    "ZrO2": (225, ["Zr", "O"], [(0, 0, 0), (Q, Q, Q)], 5.07, None),
    "Li2S": (225, ["S", "Li"], [(0, 0, 0), (Q, Q, Q)], 5.71, None),
    "Na2O": (225, ["O", "Na"], [(0, 0, 0), (Q, Q, Q)], 5.55, None),
    # rutile (x of the anion)
    "SnO2": (136, ["Sn", "O"], [(0, 0, 0), (0.307, 0.307, 0)], 4.74, 3.19),
    "MgF2": (136, ["Mg", "F"], [(0, 0, 0), (0.303, 0.303, 0)], 4.62, 3.05),
    "GeO2": (136, ["Ge", "O"], [(0, 0, 0), (0.307, 0.307, 0)], 4.40, 2.86),
    "ZnF2": (136, ["Zn", "F"], [(0, 0, 0), (0.303, 0.303, 0)], 4.70, 3.13),
    # cubic perovskites
    "SrTiO3": (221, ["Sr", "Ti", "O"], [(H, H, H), (0, 0, 0), (H, 0, 0)], 3.91, None),
    "KTaO3": (221, ["K", "Ta", "O"], [(H, H, H), (0, 0, 0), (H, 0, 0)], 3.99, None),
    "KMgF3": (221, ["K", "Mg", "F"], [(H, H, H), (0, 0, 0), (H, 0, 0)], 3.99, None),
    "BaZrO3": (221, ["Ba", "Zr", "O"], [(H, H, H), (0, 0, 0), (H, 0, 0)], 4.19, None),
    # elements
    "Ni": (225, ["Ni"], [(0, 0, 0)], 3.52, None),
    "Pd": (225, ["Pd"], [(0, 0, 0)], 3.89, None),
    "Pt": (225, ["Pt"], [(0, 0, 0)], 3.92, None),
    "Ag": (225, ["Ag"], [(0, 0, 0)], 4.09, None),
    "Au": (225, ["Au"], [(0, 0, 0)], 4.08, None),
    "Pb": (225, ["Pb"], [(0, 0, 0)], 4.95, None),
    "V": (229, ["V"], [(0, 0, 0)], 3.03, None),
    "Cr": (229, ["Cr"], [(0, 0, 0)], 2.88, None),
    "Mo": (229, ["Mo"], [(0, 0, 0)], 3.15, None),
    "W": (229, ["W"], [(0, 0, 0)], 3.16, None),
    "Nb": (229, ["Nb"], [(0, 0, 0)], 3.30, None),
    "Na": (229, ["Na"], [(0, 0, 0)], 4.29, None),
    "Mg": (194, ["Mg"], [(T, 2 * T, Q)], 3.21, 5.21),
    "Zn": (194, ["Zn"], [(T, 2 * T, Q)], 2.66, 4.95),
    "Ti": (194, ["Ti"], [(T, 2 * T, Q)], 2.95, 4.68),
    "Be": (194, ["Be"], [(T, 2 * T, Q)], 2.29, 3.58),
    # cuprite, L1_2, Heusler and half-Heusler, layered
    "Cu2O": (224, ["Cu", "O"], [(Q, Q, Q), (0, 0, 0)], 4.27, None),
    "Ag2O": (224, ["Ag", "O"], [(Q, Q, Q), (0, 0, 0)], 4.72, None),
    "Ni3Al": (221, ["Al", "Ni"], [(0, 0, 0), (0, H, H)], 3.57, None),
    "Cu3Au": (221, ["Au", "Cu"], [(0, 0, 0), (0, H, H)], 3.75, None),
    "Cu2MnAl": (225, ["Cu", "Mn", "Al"], [(Q, Q, Q), (0, 0, 0), (H, H, H)], 5.95, None),
    "TiNiSn": (216, ["Ni", "Ti", "Sn"], [(Q, Q, Q), (0, 0, 0), (H, H, H)], 5.93, None),
    "ZrNiSn": (216, ["Ni", "Zr", "Sn"], [(Q, Q, Q), (0, 0, 0), (H, H, H)], 6.11, None),
    "MgB2": (191, ["Mg", "B"], [(0, 0, 0), (T, 2 * T, H)], 3.09, 3.52),
    "TiB2": (191, ["Ti", "B"], [(0, 0, 0), (T, 2 * T, H)], 3.03, 3.23),
    "CdI2": (164, ["Cd", "I"], [(0, 0, 0), (T, 2 * T, 0.25)], 4.24, 6.84),
    "TiS2": (164, ["Ti", "S"], [(0, 0, 0), (T, 2 * T, 0.25)], 3.41, 5.70),
    "MoS2": (194, ["Mo", "S"], [(T, 2 * T, Q), (T, 2 * T, 0.621)], 3.16, 12.29),
    "NiAs": (194, ["Ni", "As"], [(0, 0, 0), (T, 2 * T, Q)], 3.62, 5.03),
    "CuAu": (123, ["Cu", "Au"], [(0, 0, 0), (H, H, H)], 3.96, 3.67),
}


def primitive_cells(paths: list[Path]) -> Iterator[tuple[Path, Any]]:
    """(file, primitive ordered-or-not structure) for every CIF/POSCAR* under ``paths``, sorted by path;
    a file pymatgen cannot read is reported on stderr and skipped."""
    from pymatgen.core import Structure

    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()
                   and (f.suffix.lower() == ".cif" or f.name.startswith("POSCAR")))
    for f in files:
        try:
            yield f, Structure.from_file(f).get_primitive_structure()
        except Exception as exc:  # a file pymatgen cannot build is reported, not fatal
            print(f"skip {f}: {type(exc).__name__}: {exc}", file=sys.stderr)


def main() -> None:
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    out = Path(__file__).with_name("real_crystals")
    out.mkdir(exist_ok=True)
    for name, (sg, species, sites, a, c) in CRYSTALS.items():
        lattice = Lattice.cubic(a) if c is None else (
            Lattice.tetragonal(a, c) if sg in (123, 136) else Lattice.hexagonal(a, c))
        s = Structure.from_spacegroup(sg, lattice, species, sites)
        CifWriter(s, symprec=0.01).write_file(out / f"{name}.cif")
    print(f"{len(CRYSTALS)} CIFs in {out}")


if __name__ == "__main__":
    main()
