"""Deduplication buckets and matching; the diverse-subset selector."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from dftflow.screening.dedup import DedupItem, bucket_key, deduplicate
from dftflow.screening.select import Candidate, element_distribution, select_subset, tv_distance
from dftflow.screening.symmetry import SymmetryFilter
from dftflow.sources.records import pack


def item(uid: str, s: Structure, priority: int = 2) -> DedupItem:
    sym = SymmetryFilter().check(s, []).details
    return DedupItem(uid, pack(s), s.composition.reduced_formula, sym["spacegroup"], sym["n_primitive"], priority)


def rocksalt(a: float, c: str = "Na", x: str = "Cl") -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [c, x], [[0, 0, 0], [0.5, 0.5, 0.5]])


def groups_of(items: list[DedupItem], workers: int = 1) -> list[list[str]]:
    out = []
    for _, groups, err in deduplicate(items, workers=workers):
        assert err is None
        out.extend(groups)
    return sorted(out)


def test_same_crystal_in_other_settings_is_a_duplicate() -> None:
    conv = rocksalt(5.64)
    prim = conv.get_primitive_structure()
    rattled = conv.copy()
    rattled.perturb(0.01)
    supercell = prim * (2, 1, 1)
    items = [item("b-conv", conv), item("c-prim", prim), item("d-rattled", rattled), item("e-super", supercell)]
    # all four share one bucket key: formula, space group and primitive size
    assert len({bucket_key(i) for i in items}) == 1
    assert groups_of(items) == [["b-conv", "c-prim", "d-rattled", "e-super"]]


def test_different_crystals_stay_apart() -> None:
    items = [item("nacl", rocksalt(5.64)), item("kcl", rocksalt(6.29, "K")),
             item("nacl-strained", rocksalt(5.64 * 1.5))]
    # NaCl at 1.5x the lattice constant still matches (StructureMatcher scales volume) ...
    groups = groups_of(items)
    assert ["kcl"] in groups
    assert ["nacl", "nacl-strained"] in groups


def test_representative_is_the_preferred_source() -> None:
    items = [item("a-generated", rocksalt(5.64), priority=2), item("z-icsd", rocksalt(5.65), priority=0)]
    assert groups_of(items) == [["z-icsd", "a-generated"]]


def test_parallel_dedup_matches_serial() -> None:
    rng = np.random.default_rng(1)
    items = []
    for i, (c, x, a) in enumerate([("Na", "Cl", 5.64), ("K", "Cl", 6.29), ("Mg", "O", 4.21)] * 4):
        s = rocksalt(a * (1 + rng.uniform(-0.01, 0.01)), c, x)
        s.perturb(0.01)
        items.append(item(f"{c}{x}-{i:02d}", s))
    assert groups_of(items, workers=2) == groups_of(items, workers=1)
    assert len(groups_of(items)) == 3


# -- selection ------------------------------------------------------------------------
def make_pool(n: int = 400, seed: int = 0) -> list[Candidate]:
    rng = np.random.default_rng(seed)
    common = ["O", "O", "O", "S", "F", "Cl", "N"]
    metals = ["Li", "Na", "K", "Mg", "Ca", "Ti", "V", "Fe", "Co", "Ni", "Cu", "Zn", "Al", "Ga", "Sn"]
    systems = ["cubic", "hexagonal", "tetragonal", "orthorhombic", "monoclinic", "triclinic", "trigonal"]
    pool = []
    for i in range(n):
        k = int(rng.integers(1, 5))
        els = {str(rng.choice(common))} | {str(x) for x in rng.choice(metals, size=k - 1, replace=False)} if k > 1 \
            else {str(rng.choice(metals))}
        pool.append(Candidate(f"s{i:04d}", frozenset(els), int(rng.integers(1, 40)),
                              str(rng.choice(systems, p=[0.3, 0.2, 0.2, 0.15, 0.1, 0.03, 0.02]))))
    pool.append(Candidate("rare", frozenset({"Xe", "F"}), 6, "tetragonal"))
    return pool


def test_selection_respects_caps_and_covers_everything() -> None:
    pool = make_pool()
    sel = select_subset(pool, size=40, max_atoms=19, max_elements=3, seed=0)
    chosen = {c.uid: c for c in pool if c.uid in set(sel.uids)}
    assert len(sel.uids) == 40 == len(set(sel.uids))
    assert all(c.nsites <= 19 and len(c.elements) <= 3 for c in chosen.values())
    eligible = [c for c in pool if c.nsites <= 19 and len(c.elements) <= 3]
    assert {e for c in chosen.values() for e in c.elements} == {e for c in eligible for e in c.elements}
    assert {c.crystal_system for c in chosen.values()} == {c.crystal_system for c in eligible}
    assert "rare" in chosen  # the only Xe compound must be taken to cover Xe
    assert sel.uncovered_elements == [] and sel.uncovered_systems == []


def test_selection_is_closer_to_the_pool_than_random() -> None:
    pool = make_pool(800, seed=3)
    sel = select_subset(pool, size=100, seed=0)
    vocab = sorted({e for c in pool for e in c.elements})
    target = element_distribution(pool, vocab)
    chosen = [c for c in pool if c.uid in set(sel.uids)]
    assert sel.tv_distance == pytest.approx(tv_distance(element_distribution(chosen, vocab), target))
    assert sel.tv_distance < sel.tv_distance_random
    assert sel.tv_distance < 0.1


def test_selection_is_reproducible_and_seeded() -> None:
    pool = make_pool(3000, seed=5)
    a = select_subset(pool, size=50, seed=1, batch=256)
    b = select_subset(list(reversed(pool)), size=50, seed=1, batch=256)
    assert a.uids == b.uids  # independent of the order the pool comes in


def test_selection_from_a_stream_is_the_selection_from_the_list() -> None:
    """select_subset reads its pool once (a catalog cursor); the result is that of the whole list."""
    pool = make_pool(1500, seed=11)
    a = select_subset(pool, size=60, seed=2, batch=256)
    b = select_subset(iter(pool), size=60, seed=2, batch=256)
    assert (a.uids, a.eligible, a.tv_distance, a.tv_distance_random, a.pool) == \
        (b.uids, b.eligible, b.tv_distance, b.tv_distance_random, b.pool)
    vocab = sorted({e for c in pool for e in c.elements})
    chosen = {u: c for c in pool for u in [c.uid]}
    target = element_distribution(pool, vocab)  # exactly the distribution counted on the fly
    assert b.tv_distance == tv_distance(element_distribution([chosen[u] for u in b.uids], vocab), target)
    assert b.pool == len(pool)


def test_selection_smaller_pool_than_size() -> None:
    pool = make_pool(10)
    sel = select_subset(pool, size=1000, max_atoms=None, max_elements=None)
    assert sorted(sel.uids) == sorted(c.uid for c in pool)


def test_distorted_copy_in_another_bucket_is_merged_in_the_second_pass() -> None:
    from dftflow.screening.dedup import merge_across_buckets

    parent = rocksalt(5.64)
    # Cl pushed 0.2 Å along [111]: rhombohedral R3m, same primitive cell size, another bucket
    distorted = parent.get_primitive_structure()
    distorted.translate_sites([1], np.array([1.0, 1.0, 1.0]) * 0.2 / np.sqrt(3), frac_coords=False)
    items = [item("a-distorted", distorted), item("b-parent", parent)]
    assert items[0].spacegroup == 160 and bucket_key(items[0]) != bucket_key(items[1])
    assert groups_of(items) == [["a-distorted"], ["b-parent"]]  # the buckets never compare them
    # the second pass does, and keeps the higher-symmetry structure as the representative
    assert merge_across_buckets(items) == [["b-parent", "a-distorted"]]
    assert merge_across_buckets([items[1], item("kcl", rocksalt(6.29, "K"))]) == []
