"""SCF step counts from VASP's own outputs, OSZICAR and OUTCAR.

Every counter returns the electronic steps per ionic step (one entry for a
static run). VASP counts its ``NELMDL`` non-self-consistent steps among the
electronic steps, as OSZICAR prints them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from dftflow.compression import read_text

_OSZICAR_STEP = re.compile(r"^(DAV|RMM|CG|DIA|SDA|EDD|BLK):\s*\d+")
_OSZICAR_IONIC = re.compile(r"^\s*\d+\s+F=")
_OUTCAR_ITERATION = re.compile(r"^-+\s*Iteration\s+(\d+)\s*\(\s*(\d+)\s*\)")


def oszicar_steps(path: str | Path) -> list[int]:
    """Electronic steps per ionic step from an OSZICAR (plain or compressed).

    A run cut off before its first ``F=`` line still reports the steps it made.
    """
    steps: list[int] = []
    count = 0
    for line in read_text(path).splitlines():
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
    for line in read_text(path).splitlines():
        match = _OUTCAR_ITERATION.match(line)
        if match:
            ionic, electronic = int(match.group(1)), int(match.group(2))
            last[ionic] = max(last.get(ionic, 0), electronic)
    return [last[i] for i in sorted(last)]


_OSZICAR_MAG = re.compile(r"\bmag=\s*(\S+)")


def oszicar_magnetization(path: str | Path) -> float | None:
    """The total magnetisation (μB per cell) on the last ionic line of an OSZICAR.

    ``None`` when no ionic line carries a finite ``mag=`` value (a non-spin-polarised
    run prints none).
    """
    value = None
    for line in read_text(path).splitlines():
        if _OSZICAR_IONIC.match(line):
            match = _OSZICAR_MAG.search(line)
            value = None
            if match:
                try:
                    number = float(match.group(1))
                except ValueError:
                    number = float("nan")
                value = number if math.isfinite(number) else None
    return value
