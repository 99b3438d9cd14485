"""ExpandingCifParser gives pymatgen's structures bit for bit, only faster.

Each test compares with pymatgen's own ``CifParser`` on the same text: a
shortcut that kept or dropped one symmetry image differently (a tolerance
test done another way, a wrapped coordinate rounded differently, another
order) changes a site, a coordinate or the site order, and fails here.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.io.cif import CifParser
from pymatgen.symmetry.groups import SpaceGroup

from dftflow.sources import cif as cif_module
from dftflow.sources.cif import parse_cif_text
from dftflow.sources.cif_expand import ExpandingCifParser, wrap_unit


def _both(text: str) -> tuple[list, list]:
    out = []
    for cls in (CifParser, ExpandingCifParser):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parser = cls.from_str(text, occupancy_tolerance=1.0, site_tolerance=1e-4)
            out.append(parser.parse_structures(primitive=False, check_occu=False, on_error="ignore"))
    return out[0], out[1]


def assert_identical(a, b) -> None:
    assert len(a) == len(b)
    for s, t in zip(a, b):
        assert np.array_equal(s.lattice.matrix, t.lattice.matrix)
        assert [site.species for site in s] == [site.species for site in t]
        assert np.array_equal(s.frac_coords, t.frac_coords)  # bitwise, site order included
        assert [site.label for site in s] == [site.label for site in t]


def _cif(symbol: str, cell: tuple[float, ...], sites: list[tuple[str, str, tuple[float, float, float], float]]) -> str:
    ops = SpaceGroup(symbol).symmetry_ops
    a, b, c, al, be, ga = cell
    lines = ["data_test", f"_cell_length_a {a}", f"_cell_length_b {b}", f"_cell_length_c {c}",
             f"_cell_angle_alpha {al}", f"_cell_angle_beta {be}", f"_cell_angle_gamma {ga}",
             f"_symmetry_space_group_name_H-M '{symbol}'", "loop_", "_symmetry_equiv_pos_as_xyz"]
    lines += [f"'{op.as_xyz_str()}'" for op in ops]
    lines += ["loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
              "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_occupancy"]
    lines += [f"{label} {el} {x!r} {y!r} {z!r} {occ}" for label, el, (x, y, z), occ in sites]
    return "\n".join(lines) + "\n"


def test_fixture_cifs_are_parsed_identically(shared: Path) -> None:
    files = sorted((shared / "fixtures" / "cif").glob("*.cif"))
    assert files
    for path in files:
        ref, fast = _both(path.read_text(errors="replace"))
        assert_identical(ref, fast)


@pytest.mark.parametrize("symbol, cell, sites", [
    # Special positions on every kind of element, a coordinate a hair below 1 and
    # one within site_tolerance of a mirror: the images that pymatgen merges.
    ("Fm-3m", (5.6, 5.6, 5.6, 90, 90, 90), [("Na1", "Na", (0.0, 0.0, 0.0), 1),
                                            ("Cl1", "Cl", (0.5, 0.5, 0.99996), 1)]),
    ("Fd-3m", (8.1, 8.1, 8.1, 90, 90, 90), [("Mg1", "Mg", (0.125, 0.125, 0.125), 1),
                                            ("Al1", "Al", (0.5, 0.5, 0.5), 1),
                                            ("O1", "O", (0.26, 0.26, 0.26), 1)]),
    ("P6_3/mmc", (3.2, 3.2, 5.2, 90, 90, 120), [("Mg1", "Mg", (1 / 3, 2 / 3, 0.25), 1),
                                                ("H1", "H", (0.33333, 0.66667, 0.75004), 1)]),
    ("P2_1/c", (5.1, 6.2, 7.3, 90, 101.5, 90), [("Fe1", "Fe", (0.1, 0.2, 0.3), 1),
                                                ("O1", "O", (0.0, 0.5, -0.00003), 1),
                                                ("O2", "O", (0.5, 0.0, 0.5), 1)]),
    # Two species on one position (pymatgen merges them into one disordered site).
    ("Pm-3m", (4.0, 4.0, 4.0, 90, 90, 90), [("Sr1", "Sr", (0.0, 0.0, 0.0), 0.5),
                                            ("Ba1", "Ba", (0.0, 0.0, 0.0), 0.5),
                                            ("Ti1", "Ti", (0.5, 0.5, 0.5), 1),
                                            ("O1", "O", (0.5, 0.5, 0.0), 1)]),
    ("R-3m", (2.9, 2.9, 14.2, 90, 90, 120), [("Li1", "Li", (0.0, 0.0, 0.5), 1),
                                             ("Co1", "Co", (0.0, 0.0, 0.0), 1),
                                             ("O1", "O", (0.0, 0.0, 0.2396), 1)]),
])
def test_special_positions_and_tolerance_edges(symbol: str, cell: tuple[float, ...], sites: list) -> None:
    ref, fast = _both(_cif(symbol, cell, sites))
    assert_identical(ref, fast)
    assert len(ref[0]) > len(sites)  # the operations were applied


def test_unique_coords_matches_pymatgen_near_the_tolerance() -> None:
    """Images placed at 0.5 to 2 site_tolerance from each other: every keep/drop decision is pymatgen's."""
    rng = np.random.default_rng(7)
    for number in (225, 194, 62, 14, 166, 141):
        ops = SpaceGroup.from_int_number(number).symmetry_ops
        ref, fast = CifParser.__new__(CifParser), ExpandingCifParser.__new__(ExpandingCifParser)
        for p in (ref, fast):
            p.symmetry_operations, p._site_tolerance = ops, 1e-4
        coords = []
        for base in rng.random((6, 3)):
            coords.append(tuple(base))
            for shift in (0.5e-4, 0.99e-4, 1.01e-4, 2e-4):
                coords.append(tuple(base + shift * rng.choice([-1, 1], 3)))
        coords += [(0.0, 0.0, 0.0), (-0.0, 0.5, 1.0 - 1e-5), (1e-5, -1e-5, 0.25)]
        labels = {c: f"L{i}" for i, c in enumerate(coords)}
        a, b = ref._unique_coords(coords, labels=labels), fast._unique_coords(coords, labels=labels)
        assert len(a[0]) == len(b[0])
        assert all(np.array_equal(x, y) and np.signbit(x).tolist() == np.signbit(y).tolist()
                   for x, y in zip(a[0], b[0]))
        assert a[2] == b[2]


def test_wrap_unit_keeps_the_sign_of_zero_like_math_floor() -> None:
    import math

    values = np.array([-0.0, 0.0, -1e-17, 0.9999999999, 1.0, -1.0, 2.5, -2.5])
    expected = [v - math.floor(v) for v in values]
    got = wrap_unit(values.copy())
    assert got.tolist() == expected
    assert np.signbit(got).tolist() == [math.copysign(1, v) < 0 for v in expected]


def test_import_entries_unchanged_with_pymatgen_parser(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole import (flags, checks, packed structure) is the same as with pymatgen's parser."""
    files = sorted((shared / "fixtures" / "cif").glob("*.cif"))
    fast = [parse_cif_text(p.read_text(errors="replace"), p.name, {}) for p in files]
    monkeypatch.setattr(cif_module, "ExpandingCifParser", CifParser)
    ref = [parse_cif_text(p.read_text(errors="replace"), p.name, {}) for p in files]
    for a, b in itertools.zip_longest(ref, fast):
        assert [(e.uid, e.packed, e.error, e.flags) for e in a] == [(e.uid, e.packed, e.error, e.flags) for e in b]
