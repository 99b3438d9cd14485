"""The ordered chain of per-structure filters built from a recipe's screening settings."""

from __future__ import annotations

import json
from typing import Any

from dftflow.config.recipe import ScreeningSettings
from dftflow.parallel import TaskTimeout, time_limit
from dftflow.screening.base import Filter, Outcome, params_hash, undetermined
from dftflow.screening.charge import ElectroneutralityFilter
from dftflow.screening.filters import MaxAtomsFilter, MaxElementsFilter, OrderFilter
from dftflow.screening.symmetry import SymmetryFilter
from dftflow.sources.records import unpack


def build_chain(settings: ScreeningSettings) -> list[Filter]:
    """Filters in the order they run: cheap and decisive ones first, spglib last."""
    chain: list[Filter] = []
    if settings.order.enabled:
        chain.append(OrderFilter(min_distance=settings.order.min_distance))
    if settings.max_atoms is not None:
        chain.append(MaxAtomsFilter(max_atoms=settings.max_atoms))
    if settings.max_elements is not None:
        chain.append(MaxElementsFilter(max_elements=settings.max_elements))
    en = settings.electroneutrality
    if en.enabled:
        chain.append(ElectroneutralityFilter(
            oxidation_states_set=en.oxidation_states_set, mixed_valence=en.mixed_valence,
            pauling_test=en.pauling_test, include_alloys=en.include_alloys,
            max_combinations=en.max_combinations))
    sym = settings.symmetry
    chain.append(SymmetryFilter(symprec=sym.symprec, angle_tolerance=sym.angle_tolerance,
                                reject_p1=sym.reject_p1))
    return chain


def chain_params(chain: list[Filter]) -> list[dict[str, Any]]:
    return [{"filter": f.name, **f.params()} for f in chain]


def chain_hash(chain: list[Filter]) -> str:
    return params_hash({"chain": chain_params(chain)})


def run_chain(
    chain: list[Filter], structure_row: tuple[str, str, str], timeout: float | None = None
) -> list[tuple[str, Outcome]]:
    """Run the filters on one catalog row ``(uid, data, flags)`` until one does not pass.

    Each filter gets ``timeout`` seconds; one that overruns is ``undetermined``.
    """
    _, data, flags = structure_row
    structure = unpack(json.loads(data))
    flag_list = json.loads(flags)
    results = []
    for f in chain:
        try:
            with time_limit(timeout):
                outcome = f.check(structure, flag_list)
        except TaskTimeout as exc:
            outcome = undetermined(str(exc))
        results.append((f.name, outcome))
        if outcome.status != "pass":
            break
    return results


class ChainTask:
    """Picklable worker callable: runs a fixed chain on a catalog row."""

    def __init__(self, chain: list[Filter], timeout: float | None = None) -> None:
        self.chain = chain
        self.timeout = timeout

    def __call__(self, row: tuple[str, str, str]) -> list[tuple[str, Outcome]]:
        return run_chain(self.chain, row, self.timeout)
