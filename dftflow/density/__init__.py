"""Charge densities: the :class:`Density` record and VASP's CHGCAR format.

>>> from dftflow.density import read_chgcar, write_chgcar
>>> density = read_chgcar("CHGCAR.gz", nelect=8)      # doctest: +SKIP
>>> density.grid, density.electrons()                 # doctest: +SKIP
((40, 40, 40), 7.9999997)
"""

from __future__ import annotations

from dftflow.density.chgcar import read_chgcar, write_chgcar
from dftflow.density.model import Density

__all__ = ["Density", "read_chgcar", "write_chgcar"]
