"""Experimental band gaps next to the computed ones (``nscf-eval --experimental``).

The table (``experimental_gaps.yaml``, a source for every value) is matched by
reduced formula and space group, so that a polymorph without an entry
(anatase, zincblende GaN) is not compared with another one's gap. The
computed gap compared is the fundamental one, ``gap_indirect`` of the report
(conduction minimum minus valence maximum over the SCF k-points), whatever
the nature of the experimental gap.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Composition, Structure

from dftflow.config.base import load_yaml_model

TABLE = Path(__file__).with_name("experimental_gaps.yaml")
#: Symmetry tolerance of the space-group match (Å), recorded in the report.
SYMPREC = 0.1


class GapEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    formula: str
    spacegroup: int = Field(ge=1, le=230)
    gap: float = Field(ge=0, description="eV")
    kind: Literal["direct", "indirect"]
    T: float = Field(ge=0, description="K")
    source: str


class GapTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gaps: list[GapEntry]


@cache
def gap_table(path: str = str(TABLE)) -> dict[tuple[str, int], GapEntry]:
    """(reduced formula, space group) → entry."""
    table = load_yaml_model(Path(path), GapTable)
    out: dict[tuple[str, int], GapEntry] = {}
    for entry in table.gaps:
        key = (Composition(entry.formula).reduced_formula, entry.spacegroup)
        if key in out:
            raise ValueError(f"{path}: {entry.formula} in space group {entry.spacegroup} is listed twice")
        out[key] = entry
    return out


def spacegroup(structure: Structure) -> int | None:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return int(SpacegroupAnalyzer(structure, symprec=SYMPREC).get_space_group_number())
    except Exception:  # spglib gives up on a broken cell: no match, with the reason below
        return None


def match(structure: Structure) -> tuple[GapEntry | None, str | None]:
    """The table's entry for this crystal, or None and why not."""
    formula = structure.composition.reduced_formula
    number = spacegroup(structure)
    table = gap_table()
    if number is not None and (formula, number) in table:
        return table[(formula, number)], None
    others = sorted(sg for f, sg in table if f == formula)
    if not others:
        return None, f"no experimental gap for {formula} in the table"
    found = "undetermined" if number is None else str(number)
    return None, (f"{formula} in space group {found} (symprec {SYMPREC}): the table has {formula} only in "
                  f"space group {', '.join(map(str, others))}")
