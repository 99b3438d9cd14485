"""Screening and dedup stream over the catalog: memory bounded by the page size, results as unchunked.

The catalogs here hold several MB of structure data (216-site cells); with a
page of 20 rows the traced Python memory of a whole stage must stay a small
fraction of that, where holding every row (what the stages did before, and
what a page of all rows still does) takes more than all of it.
"""

from __future__ import annotations

import functools
import json
import shutil
import tracemalloc
from pathlib import Path

from pymatgen.core import Lattice, Structure

from dftflow.catalog import Catalog
from dftflow.config.recipe import ScreeningSettings
from dftflow.screening import stages as st
from dftflow.screening.dedup import DedupItem, deduplicate, merge_across_buckets
from dftflow.screening.dedup_store import PRIORITY
from dftflow.sources.records import Imported, pack

PAGE = 20


_FCC = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]


def rocksalt(a: float, c: str = "Na", x: str = "Cl") -> Structure:
    """The conventional cell, written out (``from_spacegroup`` rebuilds Fm-3m each call: about a second)."""
    shifted = [[(u + 0.5) % 1, v, w] for u, v, w in _FCC]
    return Structure(Lattice.cubic(a), [c] * 4 + [x] * 4, _FCC + shifted)


def heavy(i: int) -> Structure:
    """A 216-site rocksalt supercell whose composition (and so reduced formula) differs for every ``i``."""
    pairs = [("Na", "Cl"), ("K", "Br"), ("Rb", "I")]
    c, x = pairs[i // 214]
    k = 1 + i % 214
    k += k >= 108  # skip the 1:1 cell (the real NaCl/KBr below)
    s = _supercell()
    return Structure(s.lattice, [c] * k + [x] * (len(s) - k), s.frac_coords)


@functools.cache
def _supercell() -> Structure:
    return rocksalt(5.6) * (3, 3, 3)


def real_structures() -> dict[str, Structure]:
    """Small cells with duplicates in other settings, and a distorted copy in a lower space group."""
    out = {}
    for c, x, a in [("Na", "Cl", 5.64), ("K", "Br", 6.6), ("Mg", "O", 4.21), ("Li", "F", 4.03)]:
        conv = rocksalt(a, c, x)
        out[f"real:{c}{x}-conv"] = conv
        out[f"real:{c}{x}-prim"] = conv.get_primitive_structure()
        rattled = conv.copy()
        rattled.perturb(0.01)
        out[f"real:{c}{x}-rattled"] = rattled
    # Cl pushed 0.2 Å along [111]: rhombohedral R3m, another bucket, still a NaCl match
    distorted = rocksalt(5.64).get_primitive_structure()
    distorted.translate_sites([1], [0.2 / 3**0.5] * 3, frac_coords=False)
    out["real:NaCl-distorted"] = distorted
    return out


def make_catalog(path: Path, n_heavy: int) -> Catalog:
    catalog = Catalog(path)
    entries = [Imported(f"heavy:{i:04d}", {"source": "gen"}, packed=pack(heavy(i))) for i in range(n_heavy)]
    entries += [Imported(uid, {"source": "icsd" if "prim" in uid else "gen"}, packed=pack(s))
                for uid, s in real_structures().items()]
    catalog.add_imported("task", entries)
    return catalog


def data_bytes(catalog: Catalog) -> int:
    return catalog.db.execute("SELECT SUM(LENGTH(data)) FROM structures").fetchone()[0]


def outcomes(catalog: Catalog) -> set[tuple]:
    return set(catalog.db.execute("SELECT uid, filter, status, reason, details, params_hash FROM outcomes"))


def warm_up(tmp_path: Path) -> None:
    """Screen and dedup a small catalog first: imports and caches (pymatgen's element data, SMACT's
    tables) are allocated once per process and are not what the bound is about."""
    catalog = make_catalog(tmp_path / "warm" / "catalog.sqlite", 3)
    st.run_screen(catalog, ScreeningSettings(max_atoms=None))
    st.run_dedup(catalog, ScreeningSettings(max_atoms=None))
    catalog.close()


def traced_peak(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_screen_streams_in_pages(tmp_path: Path) -> None:
    catalog = make_catalog(tmp_path / "a" / "catalog.sqlite", 400)
    total = data_bytes(catalog)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    whole = Catalog(tmp_path / "b" / "catalog.sqlite")
    settings = ScreeningSettings()  # max_atoms 200: the 216-site cells stop there
    warm_up(tmp_path)

    summary, peak = traced_peak(lambda: st.run_screen(catalog, settings, page_size=PAGE))
    whole_summary, whole_peak = traced_peak(lambda: st.run_screen(whole, settings, page_size=10**6))
    assert summary == whole_summary == {"screened": 413, "skipped": 0}
    assert outcomes(catalog) == outcomes(whole)
    # pages of 20 rows + one worker chunk of 32 in flight: about an eighth of the data, never all of it
    assert peak < total / 3, (peak, total)
    assert whole_peak > total, (whole_peak, total)  # the same run holding every row: the measure sees it
    states = {r["uid"]: r["state"] for r in st.list_entries(catalog)}
    assert states["heavy:0000"] == "max_atoms: fail"
    assert states["real:NaCl-conv"] == "screened"
    # resumed: nothing left, and the count of finished structures is every one
    assert st.run_screen(catalog, settings, page_size=PAGE) == {"screened": 0, "skipped": 413}


def _screened_catalog(path: Path, n_heavy: int) -> Catalog:
    """A catalog whose heavy cells passed screening each in a bucket of its own.

    Their symmetry outcomes are written directly (distinct space group / primitive
    size per cell, so every heavy cell is a singleton bucket and a formula of its
    own); the small real cells are screened for real.
    """
    catalog = make_catalog(path, n_heavy)
    st.run_screen(catalog, ScreeningSettings(), page_size=PAGE)
    rows = [(f"heavy:{i:04d}", "symmetry", "pass", "", {"spacegroup": 2 + i % 200, "n_primitive": 216 + i // 200,
                                                      "crystal_system": "triclinic"}, "x") for i in range(n_heavy)]
    catalog.add_outcomes(rows)
    return catalog


def _in_memory_dedup(catalog: Catalog) -> dict[str, tuple[str, str]]:
    """The unchunked answer: every item in memory, through deduplicate + merge_across_buckets."""
    items = []
    for uid, data, prov, rformula, sym in st._screen_passed(catalog):
        items.append(DedupItem(uid, json.loads(data), rformula, int(sym["spacegroup"]), int(sym["n_primitive"]),
                               PRIORITY.get(json.loads(prov).get("source", ""), 2)))
    groups = {}
    for _, found, err in deduplicate(items):
        assert err is None
        groups.update({g[0]: g[1:] for g in found})
    by_uid = {i.uid: i for i in items}
    for group in merge_across_buckets([by_uid[r] for r in groups]):
        for other in group[1:]:
            groups[group[0]] += [other, *groups.pop(other)]
    out = {rep: ("pass", "") for rep in groups}
    out.update({d: ("fail", rep) for rep, dups in groups.items() for d in dups})
    return out


def test_dedup_streams_one_bucket_at_a_time(tmp_path: Path) -> None:
    catalog = _screened_catalog(tmp_path / "a" / "catalog.sqlite", 400)
    total = data_bytes(catalog)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    whole = Catalog(tmp_path / "b" / "catalog.sqlite")
    settings = ScreeningSettings()
    warm_up(tmp_path)

    summary, peak = traced_peak(lambda: st.run_dedup(catalog, settings, page_size=PAGE))
    whole_summary = st.run_dedup(whole, settings, page_size=10**6)
    assert summary == whole_summary
    assert outcomes(catalog) == outcomes(whole)
    assert summary["entered"] == 413 and summary["merged_across_buckets"] == 1
    # only buckets with more than one member are loaded, one at a time: far below the data size
    assert peak < total / 10, (peak, total)

    expected = _in_memory_dedup(catalog)
    got = {u: (s, r if s == "fail" else "") for u, s, r in (
        (u, s, json.loads(d).get("representative", "")) for u, s, d in catalog.db.execute(
            "SELECT uid, status, details FROM outcomes WHERE filter='dedup'"))}
    assert got == expected
    assert got["real:NaCl-conv"] == ("fail", "real:NaCl-prim")  # icsd preferred
    assert got["real:NaCl-distorted"] == ("fail", "real:NaCl-prim")  # merged across buckets
    assert summary["unique"] == 400 + 4


def test_funnel_counts_while_streaming(tmp_path: Path) -> None:
    """funnel() holds the distinct reasons, not the rows: 60,000 outcomes in well under a megabyte."""
    catalog = Catalog(tmp_path / "catalog.sqlite")
    catalog.add_imported("task", [Imported(f"bad:{i}", {"source": "gen"}, error=f"reason {i % 3}")
                                  for i in range(30)])
    n = 60_000
    # statuses and reasons with distinct counts, so the top-3 order is fixed
    rows = [(f"gen:{i:06d}", "order", s, r, "{}", "h") for i, (s, r) in enumerate(
        [("fail", "partial occupancy")] * 7 + [("fail", "implicit hydrogens")] * 5
        + [("undetermined", "spglib failed")] * 3 + [("pass", "")] * 85)
        for _ in range(n // 100)]
    rows = [(f"gen:{i:06d}", *r[1:]) for i, r in enumerate(rows)]
    with catalog.transaction() as db:
        db.executemany("INSERT INTO outcomes VALUES(?,?,?,?,?,?)", rows)
        db.execute("INSERT INTO filter_params VALUES('order', 'h', '{}')")
    listed = sum(len(r[0]) + len(r[2]) + len(r[3]) + 150 for r in rows)  # what a list of the rows takes, at least
    del rows
    result, peak = traced_peak(lambda: st.funnel(catalog))
    steps = {r["step"]: r for r in result}
    assert steps["import"] == {"step": "import", "entered": 30, "passed": 0, "failed": 30, "undetermined": 0,
                               "reasons": [("reason 0", 10), ("reason 1", 10), ("reason 2", 10)]}
    assert steps["order"] == {"step": "order", "entered": n, "passed": n * 85 // 100, "failed": n * 12 // 100,
                              "undetermined": n * 3 // 100,
                              "reasons": [("partial occupancy", n * 7 // 100), ("implicit hydrogens", n * 5 // 100),
                                          ("spglib failed", n * 3 // 100)]}
    assert peak < 1_000_000 < listed, (peak, listed)
