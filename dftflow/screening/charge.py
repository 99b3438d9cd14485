"""Electroneutrality with SMACT on the integer element composition.

Policy (see docs/screening.md): oxidation-state labels in the source are
ignored; the composition is the integer count of atoms per element in the
cell. ``mixed_valence: false`` (the ECD/SMACT default) asks for one oxidation
state per element, so magnetite Fe3O4 (Fe²⁺Fe³⁺₂O₄) fails; ``true`` lets the
atoms of SMACT's mixed-valence elements split between states, and it passes.

SMACT enumerates every combination of oxidation states, which explodes for
many-element compositions (a 10-cation oxide in the smact14 set takes about a
minute). The number of combinations is computed first; above
``max_combinations`` the outcome is ``undetermined`` rather than a long wait or a
silent "invalid".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from math import prod
from typing import Any

from pymatgen.core import Composition, Structure

from dftflow.screening.base import Outcome, failed, passed, undetermined
from dftflow.screening.filters import integer_composition


@lru_cache(maxsize=4096)
def _oxidation_states(symbols: tuple[str, ...], states_set: str) -> tuple[tuple[int, ...] | None, ...]:
    """Oxidation states SMACT will try for each element (None where it knows none)."""
    import smact
    from smact import screening as sc

    elements = [smact.Element(s) for s in symbols]
    if states_set == "icsd24":
        table = sc._get_icsd24_oxidation_dict(**_icsd24_config())
        return tuple(tuple(table[s]) if table.get(s) else None for s in symbols)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lists = sc._get_oxidation_states(elements, states_set)
    return tuple(tuple(x) if x else None for x in lists)


def _icsd24_config() -> dict[str, Any]:
    return dict(_icsd24_defaults())


@lru_cache(maxsize=1)
def _icsd24_defaults() -> tuple[tuple[str, Any], ...]:
    from smact.screening import ICSD24FilterConfig

    cfg = ICSD24FilterConfig()
    return (("include_zero", cfg.include_zero), ("consensus", cfg.consensus), ("commonality", cfg.commonality))


@dataclass(kw_only=True)
class ElectroneutralityFilter:
    oxidation_states_set: str = "icsd24"
    mixed_valence: bool = False
    pauling_test: bool = True
    include_alloys: bool = True
    max_combinations: int = 200_000
    name: str = "electroneutrality"

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {
            "oxidation_states_set": self.oxidation_states_set,
            "mixed_valence": self.mixed_valence,
            "pauling_test": self.pauling_test,
            "include_alloys": self.include_alloys,
            "max_combinations": self.max_combinations,
            "smact": version("smact"),
        }
        if self.oxidation_states_set == "icsd24":
            p["icsd24_filter"] = _icsd24_config()
        return p

    def check(self, structure: Structure, flags: list[str]) -> Outcome:
        comp = integer_composition(structure)
        counts = tuple((el.symbol, int(n)) for el, n in comp.items())
        found = _decide(counts, self.oxidation_states_set, self.mixed_valence, self.pauling_test,
                        self.include_alloys, self.max_combinations)
        return Outcome(found.status, found.reason, dict(found.details))


@lru_cache(maxsize=65536)
def _decide(counts: tuple[tuple[str, int], ...], states_set: str, mixed_valence: bool, pauling_test: bool,
            include_alloys: bool, max_combinations: int) -> Outcome:
    """The outcome for one integer composition (``counts``, in the structure's element order).

    It depends on nothing else, so each worker computes it once per composition:
    duplicates and re-generated copies of a candidate share it, and SMACT's
    ``smact_validity`` rebuilds its element data on every call.
    """
    from smact import metals
    from smact.screening import MIXED_VALENCE_ELEMENTS, smact_validity

    comp = Composition(dict(counts))
    symbols = tuple(s for s, _ in counts)
    formula = comp.formula.replace(" ", "")
    if len(symbols) == 1 or (include_alloys and all(s in metals for s in symbols)):
        return passed(composition=formula, rule="unary or all-metal")
    states = _oxidation_states(symbols, states_set)
    unknown = [s for s, ox in zip(symbols, states) if ox is None]
    if unknown:
        return failed(f"no oxidation states for {', '.join(unknown)} in {states_set}", composition=formula)
    combos = prod(len(ox) for ox in states)  # type: ignore[arg-type]
    if mixed_valence:
        divisor = comp.get_integer_formula_and_factor()[1]
        for s, ox in zip(symbols, states):
            if s in MIXED_VALENCE_ELEMENTS:
                n = int(round(comp[s] / divisor))
                combos = combos // len(ox) * len(ox) ** n  # type: ignore[arg-type]
    if combos > max_combinations:
        return undetermined(f"{combos:,} oxidation-state combinations exceed the cap of "
                            f"{max_combinations:,}", composition=formula, combinations=combos)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = smact_validity(
            comp,
            use_pauling_test=pauling_test,
            include_alloys=include_alloys,
            oxidation_states_set=None if states_set == "icsd24" else states_set,
            mixed_valence=mixed_valence,
        )
    if ok:
        return passed(composition=formula, combinations=combos)
    return failed("not charge-neutral", composition=formula, combinations=combos)
