"""SCF iteration counts from GPAW's text log.

GPAW logs the fixed-density steps of a restart in a loop of their own, which
:func:`gpaw_log_steps` reports apart from the SCF iterations, together with the
energy of the first SCF iteration (the energy of the start density once the
wave functions have relaxed to it: a continuous measure of how good a start
was, where step counts move in whole steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dftflow.compression import read_text


@dataclass(frozen=True)
class GpawSteps:
    """Iterations of one GPAW log: fixed-density steps, then SCF iterations per SCF loop."""

    fixed: int
    scf: list[int]
    first_scf_energy: float | None = None  # eV, the energy column of the first SCF iteration

    @property
    def total(self) -> int:
        return self.fixed + sum(self.scf)


def gpaw_log_steps(path: str | Path) -> GpawSteps:
    """Iterations in a GPAW text log (``gpaw.txt``).

    Each ``SCF iterations`` table is one loop; a loop whose density column
    holds no number throughout (at most GPAW's "converged" mark) ran at fixed
    density (the ``nfixed`` steps of a restart) and is counted as fixed.
    """
    fixed, scf = 0, []
    rows: list[list[str]] | None = None
    dens = energy = -1
    first: float | None = None

    def close() -> None:
        nonlocal fixed, first
        if rows:
            if dens >= 0 and all(len(r) > dens and not r[dens].strip(" c") for r in rows):
                fixed += len(rows)
            else:
                if not scf and 0 <= energy < len(rows[0]):
                    try:
                        first = float(rows[0][energy].strip(" c"))
                    except ValueError:
                        first = None
                scf.append(len(rows))

    for line in read_text(path).splitlines():
        stripped = line.strip()
        if stripped == "SCF iterations":
            close()
            rows, dens, energy = [], -1, -1
        elif stripped.startswith("|iter ") and rows is not None:
            header = [c.strip() for c in stripped.split("|")]
            dens = header.index("dens") if "dens" in header else -1
            energy = header.index("energy") if "energy" in header else -1
        elif stripped.startswith("|iter:") and rows is not None:
            rows.append(stripped.split("|"))
    close()
    return GpawSteps(fixed, scf, first)
