"""CIF import on the real fixture CIFs, checked against values obtained independently.

Expected cell parameters are read from the CIF text with a regular expression,
expected site counts, element counts and positions come from ASE's CIF reader
(a second, unrelated parser) or are known by hand. Every source layout
(file, recursive directory, COD mirror, zip, tar.gz, .cif.gz, .cif.bz2) must
give the same structures as the plain files.
"""

from __future__ import annotations

import bz2
import gzip
import re
import shlex
import shutil
import tarfile
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import ase.io
import numpy as np
import pytest

from dftflow.sources.discover import discover, run_import_task
from dftflow.sources.records import Imported, unpack

SINGLE_BLOCK = [
    "CsSnI3.cif", "CuCl.cif", "Fe3O4.cif", "FePO4.cif", "Graphite.cif", "La2CoO4.cif",
    "Li10GeP2S12.cif", "Li2O.cif", "LiFePO4.cif", "MgNiF6.cif", "V2O3.cif", "garnet.cif",
]
PAULING = ["PF_sd_1002871.cif", "PF_sd_1500382.cif"]

# Known by hand (conventional cells as written): sites and element counts.
HAND = {
    "garnet.cif": (160, {"Ca": 24, "Al": 16, "Si": 24, "O": 96}),
    "LiFePO4.cif": (28, {"Li": 4, "Fe": 4, "P": 4, "O": 16}),
    "Li2O.cif": (12, {"Li": 8, "O": 4}),
    "Fe3O4.cif": (14, {"Fe": 6, "O": 8}),
    # ASE's reader fails on this file; olivine-type FePO4, Z = 4.
    "FePO4.cif": (24, {"Fe": 4, "P": 4, "O": 16}),
}
# Written with partial occupancies: element amounts are occupancy-weighted.
DISORDERED = {"Li10GeP2S12.cif"}


@pytest.fixture(scope="module")
def cif_dir(shared: Path) -> Path:
    path = shared / "fixtures" / "cif"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


def import_all(kind: str, path: Path, label: str = "x", pattern: str = "*.cif") -> list[Imported]:
    entries: list[Imported] = []
    for task in discover(kind, path, label, pattern):
        entries.extend(run_import_task(task))
    return entries


def text_blocks(text: str) -> dict[str, str]:
    """``data_`` blocks of a CIF, split by hand: name -> text."""
    parts = re.split(r"(?m)^data_", text)[1:]
    return {p.split(None, 1)[0]: p for p in parts}


def written_cell(text: str) -> tuple[list[float], list[float]]:
    def tag(name: str) -> float:
        m = re.search(rf"(?mi)^\s*_cell_{name}\s+([-+]?[0-9.]+)", text)
        assert m is not None, f"no _cell_{name} in the text"
        return float(m.group(1))

    return ([tag(f"length_{x}") for x in "abc"], [tag(f"angle_{x}") for x in ("alpha", "beta", "gamma")])


def ase_images(path: Path) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ase.io.read(path, format="cif", index=":")


def elements_of(entry: Imported) -> Counter:
    comp = unpack(entry.packed).composition.element_composition
    return Counter({el.symbol: float(n) for el, n in comp.items()})


def assert_same_sites(entry: Imported, atoms, check_species: bool = True) -> None:
    """Every imported site sits where ASE puts an atom (same element unless disordered)."""
    structure = unpack(entry.packed)
    ase_frac = atoms.get_scaled_positions(wrap=True)
    ase_symbols = atoms.get_chemical_symbols()
    unused = set(range(len(atoms)))
    for site in structure:
        d = ase_frac - site.frac_coords
        d -= np.round(d)
        dist = np.linalg.norm(d @ atoms.cell.array, axis=1)
        candidates = [i for i in np.argsort(dist) if dist[i] < 1e-3 and i in unused]
        if check_species:
            candidates = [i for i in candidates if ase_symbols[i] in {el.symbol for el in site.species.elements}]
        assert candidates, f"site {site.species} at {site.frac_coords} has no ASE counterpart"
        unused.discard(candidates[0])
    assert not unused


@pytest.mark.parametrize("name", SINGLE_BLOCK)
def test_single_block_cif_matches_independent_reading(cif_dir: Path, name: str) -> None:
    path = cif_dir / name
    text = path.read_text()
    entries = import_all("cif", path)
    assert len(entries) == 1
    (entry,) = entries
    assert entry.ok, entry.error
    assert entry.uid == f"x:{name}"
    assert entry.flags == []

    structure = unpack(entry.packed)
    lengths, angles = written_cell(text)
    np.testing.assert_allclose(structure.lattice.abc, lengths, rtol=1e-6)
    np.testing.assert_allclose(structure.lattice.angles, angles, atol=1e-6)

    if name in HAND:
        nsites, counts = HAND[name]
        assert len(structure) == nsites
        assert elements_of(entry) == Counter({k: float(v) for k, v in counts.items()})
    if name != "FePO4.cif":
        (atoms,) = ase_images(path)
        assert len(structure) == len(atoms)
        if name in DISORDERED:
            assert set(elements_of(entry)) == set(atoms.get_chemical_symbols())
        else:
            assert elements_of(entry) == Counter({k: float(v) for k, v in
                                                  Counter(atoms.get_chemical_symbols()).items()})
        assert_same_sites(entry, atoms, check_species=name not in DISORDERED)

    formula = re.search(r"(?m)^_chemical_formula_sum\s+'([^']+)'", text)
    if formula is not None:
        from pymatgen.core import Composition

        assert unpack(entry.packed).composition.reduced_formula == Composition(formula.group(1)).reduced_formula

    icsd = re.search(r"(?mi)^_database_code_ICSD\s+(\d+)", text)
    if icsd is not None:
        assert entry.provenance["icsd_id"] == icsd.group(1)
    else:
        assert "icsd_id" not in entry.provenance
    assert entry.provenance["source"] == "x" and entry.provenance["file"] == str(path)


def test_partial_occupancies_are_kept(cif_dir: Path) -> None:
    (entry,) = import_all("cif", cif_dir / "Li10GeP2S12.cif")
    structure = unpack(entry.packed)
    assert not structure.is_ordered
    # Ge and P share a site in LGPS: some site holds both with occupancies < 1.
    mixed = [s for s in structure if {el.symbol for el in s.species.elements} == {"Ge", "P"}]
    assert mixed and all(0 < occ < 1 for s in mixed for occ in s.species.values())


def wyckoff_site_count(block_text: str) -> int:
    """Sites in the cell by the written Wyckoff multiplicities ('.16h' -> 16), read by hand.

    Rows at the same position (a mixed site such as 'OH'/'F') count once.
    """
    lines = block_text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.strip() == "_atom_site_label")
    header = []
    while lines[i].strip().startswith("_"):
        header.append(lines[i].strip())
        i += 1
    col = {h: header.index(h) for h in header}
    positions: dict[tuple[str, str, str], int] = {}
    while i < len(lines) and lines[i].strip() and not lines[i].startswith(("_", "loop_")):
        if lines[i].startswith("#"):  # a commented-out row
            i += 1
            continue
        row = shlex.split(lines[i])
        xyz = tuple(re.sub(r"\(\d+\)", "", row[col[f"_atom_site_fract_{a}"]]) for a in "xyz")
        positions[xyz] = int(re.match(r"\.?(\d+)", row[col["_atom_site_Wyckoff_symbol"]]).group(1))
        i += 1
    return sum(positions.values())


@pytest.mark.parametrize("name, pauling_id, flagged, failing", [
    # The published cell of SD1002871 is written in 'F4/mmm', a non-standard setting of
    # I4/mmm that neither pymatgen nor ASE knows: read as I4/mmm it has 22 of its 36 sites.
    ("PF_sd_1002871.cif", "SD1002871", "NH3", ["published_cell", "niggli_reduced_cell"]),
    ("PF_sd_1500382.cif", "SD1500382", "OH", ["niggli_reduced_cell"]),
])
def test_pauling_file_one_entry_per_structure_block(cif_dir: Path, name: str, pauling_id: str,
                                                    flagged: str, failing: list[str]) -> None:
    path = cif_dir / name
    text = path.read_text()
    blocks = text_blocks(text)
    with_atoms = [b for b, t in blocks.items() if "_atom_site_fract_x" in t]
    # The global block and the powder pattern hold no atom sites.
    assert "sm_global" in blocks and "sm_global" not in with_atoms
    assert [b.split("-", 1)[1] for b in with_atoms] == ["standardized_unitcell", "published_cell",
                                                         "niggli_reduced_cell"]
    entries = import_all("cif", path)
    assert [e.uid for e in entries] == [f"x:{name}#{b}" for b in with_atoms]
    for e in entries:
        assert e.provenance["pauling_id"] == pauling_id
        assert e.provenance["block"] == e.uid.split("#", 1)[1]

    by_kind = {e.provenance["block"].split("-", 1)[1]: e for e in entries}
    for kind in failing:
        e = by_kind[kind]
        assert not e.ok and e.packed is None and e.error
    # The Niggli-cell blocks carry '?' for every atom-site value.
    assert "structure" in by_kind["niggli_reduced_cell"].error
    if "published_cell" in failing:
        block = blocks[by_kind["published_cell"].provenance["block"]]
        assert "F4/mmm" in by_kind["published_cell"].error
        images = ase_images(path)
        published = [a for a in images if np.allclose(a.cell.cellpar()[:3], written_cell(block)[0])]
        assert len(published) == 1 and len(published[0]) == 22 != wyckoff_site_count(block) == 36

    ok = [e for e in entries if e.ok]
    assert sorted(by_kind) == sorted(failing + [k for k, e in by_kind.items() if e.ok])
    assert "standardized_unitcell" not in failing and by_kind["standardized_unitcell"].ok
    images = ase_images(path)
    for entry in ok:
        block = blocks[entry.provenance["block"]]
        lengths, angles = written_cell(block)
        structure = unpack(entry.packed)
        np.testing.assert_allclose(structure.lattice.abc, lengths, rtol=1e-6)
        np.testing.assert_allclose(structure.lattice.angles, angles, atol=1e-6)
        assert len(structure) == wyckoff_site_count(block)
        same_cell = [a for a in images if np.allclose(a.cell.cellpar(), lengths + angles)]
        assert same_cell and all(len(a) == len(structure) for a in same_cell)
        # Sites whose type symbol is a group with implicit hydrogens ('NH3', 'OH').
        assert f"'{flagged}'" in block
        assert "implicit_hydrogens" in entry.flags


def test_nh3_is_flagged_not_silently_nihonium(cif_dir: Path) -> None:
    entries = [e for e in import_all("cif", cif_dir / "PF_sd_1002871.cif") if e.ok]
    assert entries
    from dftflow.screening.filters import OrderFilter

    for e in entries:
        elements = set(elements_of(e))
        assert {"Cu", "Br"} <= elements
        # pymatgen reads the 'NH3' type symbol as nihonium (Nh): the flag is what says it is not
        assert elements - {"Cu", "Br", "N", "H"} <= {"Nh"}
        assert "implicit_hydrogens" in e.flags
        # ... and screening rejects the entry for it, with that reason
        outcome = OrderFilter().check(unpack(e.packed), e.flags)
        assert outcome.status == "fail" and outcome.reason == "implicit hydrogens"


def _plain(cif_dir: Path, names: list[str]) -> dict[str, list[dict]]:
    return {n: [e.packed for e in import_all("cif", cif_dir / n)] for n in names}


def _by_file(entries: list[Imported]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in entries:
        name = Path(e.provenance.get("member") or e.provenance["file"]).name
        for suffix in (".gz", ".bz2"):
            name = name.removesuffix(suffix)
        out.setdefault(name, []).append(e.packed)
    return out


def test_recursive_directory_matches_plain_files(cif_dir: Path, tmp_path: Path) -> None:
    names = SINGLE_BLOCK + PAULING
    src = tmp_path / "db"
    for i, n in enumerate(names):
        sub = src / f"part{i % 3}" / ("deep" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(cif_dir / n, sub / n)
    (src / "README.txt").write_text("not a structure")
    (src / "part0" / "notes.json").write_text("{}")
    entries = import_all("cif", src, label="icsd")
    assert _by_file(entries) == _plain(cif_dir, names)
    uids = [e.uid for e in entries]
    assert len(uids) == len(set(uids))
    for e in entries:
        rel = Path(e.provenance["file"]).relative_to(src).as_posix()
        assert e.uid.split("#")[0] == f"icsd:{rel}"
    # Discovery is sorted, so a second discovery gives the same uids in the same order.
    assert [t.uid for t in discover("cif", src, "icsd")] == [t.uid for t in discover("cif", src, "icsd")]


def test_cod_mirror_layout(cif_dir: Path, tmp_path: Path) -> None:
    layout = {"1000000": "CuCl.cif", "1000001": "Fe3O4.cif", "2310001": "garnet.cif", "9012345": "Li2O.cif"}
    root = tmp_path / "cod" / "cif"
    for cod_id, name in layout.items():
        d = root / cod_id[0] / cod_id[1:3] / cod_id[3:5]
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(cif_dir / name, d / f"{cod_id}.cif")
    entries = import_all("cif", root, label="cod")
    assert sorted(e.provenance["cod_id"] for e in entries) == sorted(layout)
    plain = _plain(cif_dir, list(layout.values()))
    for e in entries:
        cod_id = e.provenance["cod_id"]
        assert e.uid == f"cod:{cod_id[0]}/{cod_id[1:3]}/{cod_id[3:5]}/{cod_id}.cif"
        assert [e.packed] == plain[layout[cod_id]]
    # Other labels do not get a cod_id, even for numeric file names.
    assert all("cod_id" not in e.provenance for e in import_all("cif", root, label="mine"))


def test_archives_and_compressed_files_match_plain_files(cif_dir: Path, tmp_path: Path) -> None:
    names = ["CuCl.cif", "garnet.cif", "Li2O.cif", "PF_sd_1002871.cif", "LiFePO4.cif"]
    plain = _plain(cif_dir, names)

    zpath = tmp_path / "set.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n in names:
            zf.write(cif_dir / n, f"inner/{n}")
        zf.writestr("inner/readme.txt", "not a CIF")
    zentries = import_all("cif", zpath, label="z")
    assert _by_file(zentries) == plain
    assert {e.uid.split("#")[0] for e in zentries} == {f"z:set.zip/inner/{n}" for n in names}
    assert all(e.provenance["file"] == str(zpath) for e in zentries)

    tpath = tmp_path / "set.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        for n in names:
            tf.add(cif_dir / n, arcname=f"cifs/{n}")
    tentries = import_all("cif", tpath, label="t")
    assert _by_file(tentries) == plain
    assert {e.provenance["member"] for e in tentries} == {f"cifs/{n}" for n in names}

    gzdir = tmp_path / "gz"
    gzdir.mkdir()
    for i, n in enumerate(names):
        data = (cif_dir / n).read_bytes()
        if i % 2:
            (gzdir / f"{n}.bz2").write_bytes(bz2.compress(data))
        else:
            (gzdir / f"{n}.gz").write_bytes(gzip.compress(data))
    assert _by_file(import_all("cif", gzdir, label="g")) == plain

    # A single .cif.gz file as the source.
    single = tmp_path / "garnet.cif.gz"
    single.write_bytes(gzip.compress((cif_dir / "garnet.cif").read_bytes()))
    (entry,) = import_all("cif", single, label="g")
    assert entry.ok and [entry.packed] == plain["garnet.cif"] and len(entry.packed["species"]) == 160

    # An archive inside a directory source is opened too.
    nested = tmp_path / "nested"
    nested.mkdir()
    shutil.copy(zpath, nested / "set.zip")
    shutil.copy(cif_dir / "V2O3.cif", nested / "V2O3.cif")
    got = _by_file(import_all("cif", nested, label="n"))
    assert got == {**plain, **_plain(cif_dir, ["V2O3.cif"])}


def test_pattern_selects_files(cif_dir: Path, tmp_path: Path) -> None:
    for n in ("CuCl.cif", "Li2O.cif", "LiFePO4.cif"):
        shutil.copy(cif_dir / n, tmp_path / n)
    entries = import_all("cif", tmp_path, label="p", pattern="Li*.cif")
    assert sorted(Path(e.provenance["file"]).name for e in entries) == ["Li2O.cif", "LiFePO4.cif"]


GENERAL_POSITION = """data_{name}
_cell_length_a 5.1
_cell_length_b 6.2
_cell_length_c 7.3
_cell_angle_alpha 90
_cell_angle_beta {beta}
_cell_angle_gamma 90
_symmetry_space_group_name_H-M '{symbol}'
_symmetry_Int_Tables_number {number}
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na1 Na 0.1134 0.2071 0.3317
"""


@pytest.mark.parametrize("symbol, number, beta, sites", [
    ("P 21/c", 14, 101.0, 4),      # short symbol pymatgen does not look up; the number gives the same group
    ("P 1 21/c 1", 14, 101.0, 4),
    ("C 1 2/c 1", 15, 101.0, 8),
    ("A 2/a", 15, 101.0, None),    # a non-standard setting: the standard C2/c operations would misplace atoms
    ("F4/mmm", 139, 90.0, None),   # as in the Pauling file; I4/mmm has other translations
    ("I 4/m m m", 139, 90.0, 32),
])
def test_space_group_settings_without_operations(symbol: str, number: int, beta: float,
                                                 sites: int | None) -> None:
    """A block with a symbol and number but no operation list: one atom in the general
    position gives as many sites as the group has operations (hand-known)."""
    from dftflow.sources.cif import parse_cif_text

    text = GENERAL_POSITION.format(name="g", symbol=symbol, number=number, beta=beta)
    (entry,) = parse_cif_text(text, "u", {})
    if sites is None:
        assert not entry.ok and symbol in entry.error and "setting" in entry.error
    else:
        assert entry.ok, entry.error
        assert len(entry.packed["species"]) == sites


# A Pauling-file style entry (hand-written for this test, not a database record): the
# M site is a mixture written as one type symbol, '0.8Nb + 0.2Zr', with occupancy 0.95.
PAULING_MIXED = """\
data_sm_isp_SD0000001
_chemical_formula_sum 'N Nb0.76 Zr0.19'
_cell_length_a 4.40
_cell_length_b 4.40
_cell_length_c 4.40
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'F m -3 m'
_symmetry_Int_Tables_number 225
loop_
 _symmetry_equiv_pos_as_xyz
 'x, y, z'
 'x, y+1/2, z+1/2'
 'x+1/2, y, z+1/2'
 'x+1/2, y+1/2, z'
loop_
 _atom_site_label
 _atom_site_type_symbol
 _atom_site_symmetry_multiplicity
 _atom_site_Wyckoff_symbol
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
 M1 '0.8Nb + 0.2Zr' 4 a 0 0 0 0.95
 N1 N 4 b 0.5 0.5 0.5 1
"""


def test_pauling_mixed_type_symbols_are_partial_occupancies(tmp_path: Path) -> None:
    from dftflow.screening.filters import OrderFilter

    path = tmp_path / "NbZrN_sm_isp_SD0000001.cif"
    path.write_text(PAULING_MIXED)
    (entry,) = import_all("cif", path)
    assert entry.error is None, entry.error  # was: "unknown element symbol(s): 0.8Nb + 0.2Zr"
    assert entry.provenance["pauling_id"] == "SD0000001"
    structure = unpack(entry.packed)
    metal = [s for s in structure if "N" not in {el.symbol for el in s.species.elements}]
    assert len(metal) == 4 and len(structure) == 8
    for site in metal:
        occ = {el.symbol: round(x, 6) for el, x in site.species.items()}
        assert occ == {"Nb": 0.76, "Zr": 0.19}
    outcome = OrderFilter().check(structure, entry.flags)
    assert outcome.status == "fail" and outcome.reason == "partial occupancy"
