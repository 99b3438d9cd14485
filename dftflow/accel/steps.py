"""SCF step counts from the engines' own logs: VASP's OSZICAR and OUTCAR, GPAW's text log.

Every counter returns the electronic steps per ionic step (one entry for a
static run). VASP counts its ``NELMDL`` non-self-consistent steps among the
electronic steps, as OSZICAR prints them; GPAW logs its fixed-density steps in a
loop of their own, which :func:`gpaw_log_steps` reports separately.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dftflow.errors import InputError

_OSZICAR_STEP = re.compile(r"^(DAV|RMM|CG|DIA|SDA|EDD|BLK):\s*\d+")
_OSZICAR_IONIC = re.compile(r"^\s*\d+\s+F=")
_OUTCAR_ITERATION = re.compile(r"^-+\s*Iteration\s+(\d+)\s*\(\s*(\d+)\s*\)")


def _text(path: Path) -> str:
    from dftflow.compression import decompress

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    return decompress(path.read_bytes()).decode(errors="replace")


def oszicar_steps(path: str | Path) -> list[int]:
    """Electronic steps per ionic step from an OSZICAR (plain or compressed).

    A run cut off before its first ``F=`` line still reports the steps it made.
    """
    steps: list[int] = []
    count = 0
    for line in _text(Path(path)).splitlines():
        if _OSZICAR_STEP.match(line):
            count += 1
        elif _OSZICAR_IONIC.match(line):
            steps.append(count)
            count = 0
    if count:
        steps.append(count)
    return steps


def outcar_steps(path: str | Path) -> list[int]:
    """Electronic steps per ionic step from an OUTCAR's ``Iteration n( m)`` lines."""
    last: dict[int, int] = {}
    for line in _text(Path(path)).splitlines():
        match = _OUTCAR_ITERATION.match(line)
        if match:
            ionic, electronic = int(match.group(1)), int(match.group(2))
            last[ionic] = max(last.get(ionic, 0), electronic)
    return [last[i] for i in sorted(last)]


@dataclass(frozen=True)
class GpawSteps:
    """Iterations of one GPAW log: fixed-density steps, then SCF iterations per SCF loop."""

    fixed: int
    scf: list[int]

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
    dens = -1

    def close() -> None:
        nonlocal fixed
        if rows:
            if dens >= 0 and all(len(r) > dens and not r[dens].strip(" c") for r in rows):
                fixed += len(rows)
            else:
                scf.append(len(rows))

    for line in _text(Path(path)).splitlines():
        stripped = line.strip()
        if stripped == "SCF iterations":
            close()
            rows, dens = [], -1
        elif stripped.startswith("|iter ") and rows is not None:
            header = [c.strip() for c in stripped.split("|")]
            dens = header.index("dens") if "dens" in header else -1
        elif stripped.startswith("|iter:") and rows is not None:
            rows.append(stripped.split("|"))
    close()
    return GpawSteps(fixed, scf)
