"""Filter outcomes on known cases."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from dftflow.screening.charge import ElectroneutralityFilter
from dftflow.screening.filters import MaxAtomsFilter, MaxElementsFilter, OrderFilter, integer_composition
from dftflow.screening.symmetry import SymmetryFilter, crystal_system


def rocksalt(a: float, cation: str, anion: str) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cell_of(species: list[str], a: float = 12.0) -> Structure:
    """Atoms spread on a line in a big cubic cell (composition tests only)."""
    n = len(species)
    return Structure(Lattice.cubic(a), species, [[i / n, 0.3, 0.7] for i in range(n)])


# -- electroneutrality ----------------------------------------------------------------
def test_nacl_is_charge_neutral() -> None:
    assert ElectroneutralityFilter().check(rocksalt(5.64, "Na", "Cl"), []).status == "pass"


def test_nacl2_is_not_charge_neutral() -> None:
    out = ElectroneutralityFilter().check(cell_of(["Na", "Cl", "Cl"]), [])
    assert out.status == "fail"
    assert out.reason == "not charge-neutral"
    assert out.details["composition"] == "Na1Cl2"


def test_fe3o4_follows_the_mixed_valence_policy() -> None:
    magnetite = cell_of(["Fe"] * 3 + ["O"] * 4)
    strict = ElectroneutralityFilter(mixed_valence=False).check(magnetite, [])
    mixed = ElectroneutralityFilter(mixed_valence=True).check(magnetite, [])
    # one oxidation state per element: 3x = 8 has no integer solution
    assert strict.status == "fail"
    # Fe2+ + 2 Fe3+ + 4 O2- = 0
    assert mixed.status == "pass"


def test_oxidation_labels_are_stripped() -> None:
    labelled = Structure(Lattice.cubic(5.64), ["Na+", "Cl-"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert integer_composition(labelled).formula == "Na1 Cl1"
    assert ElectroneutralityFilter().check(labelled, []).status == "pass"


def test_cached_outcomes_are_smacts_for_each_composition_and_setting() -> None:
    """Outcomes are cached per integer composition and setting: never shared across either."""
    import warnings

    from smact.screening import smact_validity

    from dftflow.screening.charge import _decide

    _decide.cache_clear()
    cells = [cell_of(["Fe"] * 3 + ["O"] * 4), cell_of(["O"] * 4 + ["Fe"] * 3), cell_of(["Fe"] * 6 + ["O"] * 8),
             cell_of(["Na", "Cl", "Cl"]), cell_of(["Mg", "Al", "Al", "O", "O", "O", "O"]),
             cell_of(["Cs", "Sn", "I", "I", "I"]), cell_of(["Ti", "O", "O", "O"])]
    for mixed in (True, False, True):
        f = ElectroneutralityFilter(mixed_valence=mixed)
        for s in cells:
            first, again = f.check(s, []), f.check(s, [])
            assert first == again and first.details is not again.details
            comp = integer_composition(s)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = smact_validity(comp, use_pauling_test=True, include_alloys=True,
                                          oxidation_states_set=None, mixed_valence=mixed)
            assert (first.status == "pass") == expected, (comp, mixed)
            assert first.details["composition"] == comp.formula.replace(" ", "")
            first.details["composition"] = "changed"  # a caller's edit never reaches the cache
            assert f.check(s, []).details["composition"] == comp.formula.replace(" ", "")
    assert _decide.cache_info().hits > 0


@pytest.mark.parametrize("states_set", ["icsd24", "smact14"])
def test_ten_element_high_entropy_composition_returns_within_a_second(states_set: str) -> None:
    hea = cell_of(["V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Mo", "W"] + ["O"] * 13, a=20)
    f = ElectroneutralityFilter(oxidation_states_set=states_set)
    t0 = time.perf_counter()
    out = f.check(hea, [])
    assert time.perf_counter() - t0 < 1.0
    assert out.status == "undetermined"
    assert out.details["combinations"] > f.max_combinations


def test_worst_case_under_the_cap_is_fast() -> None:
    # A composition SMACT rejects only after trying all of its oxidation-state combinations, and with
    # nearly as many as the cap allows: the slowest case the filter still decides must stay short.
    f = ElectroneutralityFilter(oxidation_states_set="smact14")
    comp = ["Ge"] * 4 + ["V"] * 4 + ["Tc"] * 4 + ["Cl"] * 3 + ["Se"] * 5 + ["Os"] * 4
    t0 = time.perf_counter()
    out = f.check(cell_of(comp, a=15), [])
    elapsed = time.perf_counter() - t0
    assert out.status == "fail" and out.reason == "not charge-neutral"  # decided, after full enumeration
    assert 0.8 * f.max_combinations < out.details["combinations"] <= f.max_combinations
    assert elapsed < 5.0, elapsed  # ~0.4 s on one core; a lost cap or a slower SMACT path takes far longer


def test_electroneutrality_records_smact_settings() -> None:
    params = ElectroneutralityFilter().params()
    assert params["oxidation_states_set"] == "icsd24"
    assert params["smact"]  # the installed version
    assert "icsd24_filter" in params


def test_all_metal_compositions_pass_as_alloys() -> None:
    assert ElectroneutralityFilter().check(cell_of(["Fe", "Ni"]), []).status == "pass"
    assert ElectroneutralityFilter(include_alloys=False).check(cell_of(["Fe", "Ni"]), []).status == "fail"


# -- symmetry -----------------------------------------------------------------------------
def test_rattled_structure_is_not_p1_at_symprec_0_1() -> None:
    s = rocksalt(5.64, "Na", "Cl")
    rng = np.random.default_rng(0)
    s = Structure(s.lattice, s.species, s.cart_coords + rng.normal(0, 0.01, (len(s), 3)),
                  coords_are_cartesian=True)
    loose = SymmetryFilter(symprec=0.1).check(s, [])
    tight = SymmetryFilter(symprec=1e-5).check(s, [])
    assert loose.status == "pass" and loose.details["spacegroup"] == 225
    assert loose.details["n_primitive"] == 2
    assert loose.details["crystal_system"] == "cubic"
    assert tight.status == "fail" and tight.details["spacegroup"] == 1


def test_p1_allowed_when_configured() -> None:
    s = cell_of(["Na", "Cl", "Cl", "K"])
    s.perturb(0.3, min_distance=0.2)
    s = Structure(Lattice([[10, 0.3, 0.1], [0.2, 11, 0.4], [0.5, 0.1, 12]]), s.species, s.frac_coords)
    assert SymmetryFilter(symprec=0.01).check(s, []).status == "fail"
    assert SymmetryFilter(symprec=0.01, reject_p1=False).check(s, []).status == "pass"


def test_spglib_failure_is_undetermined_not_p1() -> None:
    # A collapsed cell makes spglib return nothing; that is not evidence of P1.
    s = Structure(Lattice(np.diag([4.0, 4.0, 1e-9])), ["Na", "Cl"], [[0, 0, 0], [0.3, 0.2, 0.1]])
    out = SymmetryFilter().check(s, [])
    assert out.status == "undetermined"


@pytest.mark.parametrize("number,system", [(1, "triclinic"), (2, "triclinic"), (3, "monoclinic"),
                                           (16, "orthorhombic"), (75, "tetragonal"), (143, "trigonal"),
                                           (168, "hexagonal"), (195, "cubic"), (230, "cubic")])
def test_crystal_system_boundaries(number: int, system: str) -> None:
    assert crystal_system(number) == system


# -- order, size, composition --------------------------------------------------------
def test_partial_occupancy_fails_order() -> None:
    s = Structure(Lattice.cubic(4), [{"Fe": 0.5, "Ni": 0.5}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    out = OrderFilter().check(s, [])
    assert out.status == "fail" and out.reason == "partial occupancy"


def test_implicit_hydrogen_and_missing_atoms_fail_order() -> None:
    s = rocksalt(5.64, "Na", "Cl")
    assert OrderFilter().check(s, ["implicit_hydrogens"]).reason == "implicit hydrogens"
    assert "H" in OrderFilter().check(s, ["missing_atoms:H"]).reason
    assert OrderFilter().check(s, []).status == "pass"


def test_overlapping_atoms_fail_order() -> None:
    s = Structure(Lattice.cubic(5), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    out = OrderFilter(min_distance=0.5).check(s, [])
    assert out.status == "fail"
    assert out.details["min_distance"] == pytest.approx(0.25, abs=1e-3)


def test_size_and_element_caps() -> None:
    s = rocksalt(5.64, "Na", "Cl")  # 8 sites, 2 elements
    assert MaxAtomsFilter(max_atoms=8).check(s, []).status == "pass"
    assert MaxAtomsFilter(max_atoms=7).check(s, []).status == "fail"
    assert MaxElementsFilter(max_elements=2).check(s, []).status == "pass"
    assert MaxElementsFilter(max_elements=1).check(s, []).status == "fail"
