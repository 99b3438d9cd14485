"""CHGCAR reading and writing against real VASP files and pymatgen's parser."""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.vasp.outputs import Chgcar

from dftflow.density import Density, read_chgcar, write_chgcar
from dftflow.density._fortran import format_fortran, parse_token
from dftflow.errors import DensityError

FIXTURES = {
    "Li_nospin": "fixtures/chgcar/Li_nospin.gz",
    "Li_spin": "fixtures/chgcar/Li_spin.gz",
    "Si_static": "fixtures/vasp/Si_static_with_chgcar/outputs/CHGCAR.gz",
}
_AUG_HEADER = re.compile(rb"^augmentation occupancies\s+(\d+)\s+(\d+)\s*$", re.M)


def _text(shared: Path, name: str) -> bytes:
    return gzip.decompress((shared / FIXTURES[name]).read_bytes())


def _plain(shared: Path, name: str, tmp_path: Path, data: bytes | None = None) -> Path:
    path = tmp_path / f"CHGCAR_{name}"
    path.write_bytes(_text(shared, name) if data is None else data)
    return path


def _body(text: bytes) -> list[bytes]:
    """Lines from the first grid line on, trailing blanks removed."""
    lines = [line.rstrip() for line in text.split(b"\n")]
    first_grid = next(i for i, line in enumerate(lines) if re.fullmatch(rb"\s*\d+\s+\d+\s+\d+", line))
    return lines[first_grid:]


# --------------------------------------------------------------------------- real files


@pytest.mark.parametrize("name", FIXTURES)
def test_values_equal_pymatgen_parse(shared, name):
    path = shared / FIXTURES[name]
    ours, theirs = read_chgcar(path), Chgcar.from_file(str(path))
    assert ours.source == str(path)
    assert np.array_equal(ours.total, theirs.data["total"])
    assert ours.total.dtype == np.float64 and ours.total.flags.c_contiguous
    if "diff" in theirs.data:
        assert np.array_equal(ours.diff, theirs.data["diff"])
    else:
        assert ours.diff is None
    assert ours.magnetisation is None
    assert ours.structure.lattice == theirs.structure.lattice
    assert [s.symbol for s in ours.structure.species] == [s.symbol for s in theirs.structure.species]
    assert np.allclose(ours.structure.frac_coords, theirs.structure.frac_coords)
    for key, per_site in ours.augmentation.items():
        assert len(per_site) == len(theirs.data_aug[key]) == len(ours.structure)
        for ion, values in enumerate(per_site, start=1):
            assert np.array_equal(values, theirs.data_aug[key][ion])


@pytest.mark.parametrize("name", FIXTURES)
def test_round_trip_reproduces_the_file(shared, name, tmp_path):
    original_text = _text(shared, name)
    original = read_chgcar(shared / FIXTURES[name])
    out = tmp_path / "CHGCAR"
    write_chgcar(original, out)
    again = read_chgcar(out)

    assert np.allclose(again.total, original.total, rtol=1e-10, atol=0)
    assert np.array_equal(again.total, original.total)  # 11 digits in, the same 11 digits out
    assert (again.diff is None) == (original.diff is None)
    if original.diff is not None:
        assert np.array_equal(again.diff, original.diff)
        assert np.array_equal(again.moments, original.moments)
    assert again.electrons() == pytest.approx(original.electrons(), abs=1e-12)
    assert again.structure.matches(original.structure)
    assert np.allclose(again.structure.lattice.matrix, original.structure.lattice.matrix, atol=1e-12)
    # Augmentation blocks: the same ions and sizes as the original file, the same values.
    headers = [(int(i), int(n)) for i, n in _AUG_HEADER.findall(original_text)]
    assert [(int(i), int(n)) for i, n in _AUG_HEADER.findall(out.read_bytes())] == headers
    sizes = [v.size for key in again.block_keys for v in again.augmentation[key]]
    assert sizes == [n for _, n in headers]
    for key in original.block_keys:
        for a, b in zip(again.augmentation[key], original.augmentation[key]):
            assert np.array_equal(a, b)
    # From the first grid line on, the written file is VASP's own layout: values,
    # augmentation blocks, the moments line before the magnetisation block.
    assert _body(out.read_bytes()) == _body(original_text)


@pytest.mark.parametrize("name", FIXTURES)
def test_pymatgen_reads_the_written_file(shared, name, tmp_path):
    original = read_chgcar(shared / FIXTURES[name])
    out = tmp_path / "CHGCAR.gz"
    write_chgcar(original, out)
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    chg = Chgcar.from_file(str(out))
    assert np.allclose(chg.data["total"], original.total, rtol=1e-10, atol=0)
    if original.diff is not None:
        assert np.allclose(chg.data["diff"], original.diff, rtol=1e-10, atol=0)
    for key, per_site in original.augmentation.items():
        for ion, values in enumerate(per_site, start=1):
            assert np.array_equal(chg.data_aug[key][ion], values)


def test_electron_counts_of_the_fixtures(shared):
    # The Li files integrate to 1 electron per Li: the standard Li POTCAR (ZVAL 1),
    # not Li_sv (ZVAL 3, 1s2s), which would give 3.
    for name in ("Li_nospin", "Li_spin"):
        density = read_chgcar(shared / FIXTURES[name], nelect=1.0, nelect_tol=1e-6)
        assert len(density.structure) == 1
        assert density.electrons() == pytest.approx(1.0, abs=1e-6)
    spin = read_chgcar(shared / FIXTURES["Li_spin"])
    assert spin.diff.sum() / spin.diff.size == pytest.approx(-0.0203, abs=1e-4)  # net moment, μB
    assert spin.moments.tolist() == [0.6]  # the MAGMOM VASP wrote before the magnetisation block
    # Si: NELECT from the run's vasprun.xml, ZVAL of its POTCAR from OUTCAR.
    run = shared / "fixtures/vasp/Si_static_with_chgcar/outputs"
    vasprun = gzip.decompress((run / "vasprun.xml.gz").read_bytes()).decode()
    nelect = float(re.search(r'<i name="NELECT">\s*([\d.]+)', vasprun).group(1))
    zval = float(re.search(r"ZVAL\s*=\s*([\d.]+)", gzip.decompress((run / "OUTCAR.gz").read_bytes()).decode()).group(1))
    density = read_chgcar(run / "CHGCAR.gz", nelect=nelect, nelect_tol=1e-5)
    assert nelect == zval * len(density.structure) == 8.0
    assert density.grid == (40, 40, 40)
    assert density.rho().mean() * density.structure.volume == pytest.approx(8.0, abs=1e-5)


@pytest.mark.parametrize("name", FIXTURES)
def test_block_sums_are_the_grids_sums_from_the_checking_pass(shared, name):
    # The harvest takes its electron counts from the sums the reader made while checking each block;
    # in the file's order they are np.sum of the grids bit for bit, so the counts stored do not change.
    sums, c_sums = [], []
    density = read_chgcar(shared / FIXTURES[name], c_order=False, sums=sums)
    assert sums == [float(np.sum(block)) for block in density.blocks()]
    c_density = read_chgcar(shared / FIXTURES[name], sums=c_sums)  # C order: the same sums, as read
    assert c_sums == sums and c_density.electrons() == pytest.approx(sums[0] / density.total.size, rel=1e-14)
    from dftflow.dataset.harvest import record_from_density

    with_sums, summed_here = record_from_density(density, {}, sums), record_from_density(density, {})
    assert with_sums["electrons"] == summed_here["electrons"]
    assert with_sums["electrons_diff"] == summed_here["electrons_diff"]


def test_a_checked_density_skips_only_the_finiteness_pass():
    structure = Structure(Lattice.cubic(3.0), ["Li"], [[0, 0, 0]])
    grid = np.ones((4, 4, 4))
    grid[1, 2, 3] = np.nan
    with pytest.raises(DensityError, match="non-finite"):
        Density(structure=structure, total=grid)
    assert Density(structure=structure, total=grid, checked=True).total is grid  # the caller vouched for it
    with pytest.raises(DensityError, match="non-finite"):  # a converted copy is checked whatever the caller says
        Density(structure=structure, total=grid.astype(np.float32), checked=True)


def test_nelect_mismatch_names_both_numbers(shared):
    path = shared / FIXTURES["Li_nospin"]
    with pytest.raises(DensityError) as err:
        read_chgcar(path, nelect=3)  # what a Li_sv POTCAR would have given
    message = str(err.value)
    assert str(path) in message and "1.000000" in message and "NELECT = 3" in message


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress, lambda b: b])
def test_compression_is_recognised_by_content(shared, tmp_path, compress):
    path = tmp_path / "CHGCAR"  # no suffix to go by
    path.write_bytes(compress(_text(shared, "Li_nospin")))
    assert np.array_equal(read_chgcar(path).total, read_chgcar(shared / FIXTURES["Li_nospin"]).total)


def test_file_written_by_pymatgen_has_no_moments_line(shared, tmp_path):
    # GPAW densities are written through pymatgen, which leaves out VASP's moments line.
    original = read_chgcar(shared / FIXTURES["Li_spin"])
    Chgcar.from_file(str(shared / FIXTURES["Li_spin"])).write_file(str(tmp_path / "CHGCAR"))
    density = read_chgcar(tmp_path / "CHGCAR")
    assert density.moments is None
    assert np.array_equal(density.total, original.total) and np.array_equal(density.diff, original.diff)


# --------------------------------------------------------------------------- broken files


def _error(path: Path) -> str:
    with pytest.raises(DensityError) as err:
        read_chgcar(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    return message


def test_truncated_in_the_data_block(shared, tmp_path):
    text = _text(shared, "Li_spin")
    cut = text.index(b" 0.73575419420E+00") + 7  # inside a number, line 14
    message = _error(_plain(shared, "Li_spin", tmp_path, text[:cut]))
    assert "line 14" in message and "13 of the 110592 values" in message and "truncated" in message
    # Cut after the moments line, before the magnetisation block.
    cut = text.index(b"  0.600000000000E+00\n") + 21
    assert "truncated" in _error(_plain(shared, "Li_spin", tmp_path, text[:cut]))
    # Cut in the middle of the magnetisation block.
    assert "magnetisation block (truncated?)" in _error(_plain(shared, "Li_spin", tmp_path, text[: len(text) * 3 // 4]))


def test_truncated_in_the_augmentation_section(shared, tmp_path):
    text = _text(shared, "Li_spin")
    second = text.index(b"augmentation", text.index(b"augmentation") + 1)
    message = _error(_plain(shared, "Li_spin", tmp_path, text[: second + 80]))
    assert "augmentation occupancies of ion 1 (magnetisation block) stop after 3 of 15 values" in message
    # Cut inside the last number of the file: the count is right, the number is not.
    assert "ends inside the number '0.5195503E'" in _error(_plain(shared, "Li_spin", tmp_path, text.rstrip()[:-3]))
    # '0.5195503E-0' still reads as a number; only its missing exponent digit tells.
    assert "ends inside the number '0.5195503E-0'" in _error(_plain(shared, "Li_spin", tmp_path, text.rstrip()[:-1]))
    si = _text(shared, "Si_static")
    cut = si.index(b"augmentation occupancies   2")
    assert "augmentation occupancies for 1 of the 2 sites" in _error(_plain(shared, "Si_static", tmp_path, si[:cut]))
    assert "middle of a line" in _error(_plain(shared, "Si_static", tmp_path, si[: cut + 15]))


def test_truncated_compressed_stream(shared, tmp_path):
    path = tmp_path / "CHGCAR.gz"
    path.write_bytes((shared / FIXTURES["Li_spin"]).read_bytes()[:200_000])
    assert "cut short" in _error(path)


def test_fortran_number_without_exponent_letter_is_read_correctly(shared, tmp_path):
    # Fortran writes 0.44062142953E-100 as '0.44062142953-100'; a tolerant parser reads
    # 0.44062142953 and -100 and shifts every later value by one.
    text = _text(shared, "Li_nospin")
    assert text.count(b" 0.44062142953E+00") == 1 and text.count(b"  0.2743786E+00") == 1
    broken = text.replace(b" 0.44062142953E+00", b" 0.44062142953-100").replace(b"  0.2743786E+00", b"  0.2743786-101")
    density = read_chgcar(_plain(shared, "Li_nospin", tmp_path, broken))
    original = read_chgcar(shared / FIXTURES["Li_nospin"])
    assert density.total[0, 0, 0] == 0.44062142953e-100
    assert np.array_equal(density.total.ravel()[1:], original.total.ravel()[1:])
    assert density.augmentation["total"][0][0] == 0.2743786e-101
    assert np.array_equal(density.augmentation["total"][0][1:], original.augmentation["total"][0][1:])


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (b" 0.44404397585E+00", b"               NaN", "line 12: the total density block holds a non-finite value"),
        (b" 0.64853662602E+00", b" NaN", "line 14: cannot read 'NaN' as a finite number in the total density"),
        (b" 0.44404397585E+00", b" 0.44404397585E+0x", "line 12: cannot read '0.44404397585E+0x'"),
        (b" 0.44404397585E+00", b" *****************", "line 12: cannot read '*****************'"),
        (b" 0.64853662602E+00", b"", "stops after 110591 of its 110592 values"),
        (b" 0.64853662602E+00", b" 0.64853662602E+00 0.1E+01", "more values than its 110592 grid points"),
        (b"  0.2753636E+00", b"            NaN", "cannot read 'NaN' as a finite number in the augmentation"),
        (b"  0.600000000000E+00", b"  0.6E+00  0.1E+01", "found 2 numbers before the magnetisation block"),
        (b"  0.600000000000E+00", b"  0.6E+00\n 0.1E+01", "found 2 numbers before the magnetisation block"),
    ],
)
def test_bad_values_are_refused(shared, tmp_path, old, new, expected):
    text = _text(shared, "Li_spin")
    assert old in text
    assert expected in _error(_plain(shared, "Li_spin", tmp_path, text.replace(old, new, 1)))


def test_a_value_missing_inside_a_file_without_augmentation(shared, tmp_path):
    # A CHG-like file: no augmentation section, so the block count alone would not
    # notice that the moments line slid into the total block.
    lines = _text(shared, "Li_spin").split(b"\n")
    starts = [i for i, line in enumerate(lines) if line.startswith(b"augmentation")]
    drop = {i + k for i in starts for k in range(4)}  # the header and 15 values, 5 a line
    text = b"\n".join(line for i, line in enumerate(lines) if i not in drop)
    assert b"augmentation" not in text and b"0.600000000000E+00" in text
    assert read_chgcar(_plain(shared, "Li_spin", tmp_path, text)).augmentation is None
    message = _error(_plain(shared, "Li_spin", tmp_path, text.replace(b" 0.64853662602E+00", b"", 1)))
    assert "line 14" in message and "holds 4 values, its other lines 5" in message


# --------------------------------------------------------------------------- densities built in memory


def _unsorted_structure() -> Structure:
    lattice = Lattice.from_parameters(5.6, 5.7, 5.8, 90, 91, 92)
    coords = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0.5], [0.25, 0.25, 0.25]]
    return Structure(lattice, ["Na", "Cl", "Na", "Cl", "O"], coords, site_properties={"magmom": [1, -2, 3, -4, 5]})


def _occupancies(structure: Structure, rng: np.random.Generator, scale: float) -> list[np.ndarray]:
    size = {"Na": 5, "Cl": 8, "O": 13}
    # Values with 7 significant digits, the precision VASP writes them with.
    return [np.array([float(f"{v:.6e}") for v in rng.normal(0, scale, size[s.symbol])]) for s in structure.species]


def test_unsorted_structure_round_trip_keeps_site_data_together(tmp_path):
    rng = np.random.default_rng(0)
    structure = _unsorted_structure()
    shape = (6, 8, 10)  # unequal, so a transposed grid cannot pass
    total = rng.uniform(0.1, 50, shape)
    diff = rng.normal(0, 1, shape)
    augmentation = {"total": _occupancies(structure, rng, 1.0), "diff": _occupancies(structure, rng, 0.1)}
    density = Density(structure, total, diff, None, augmentation)
    out = tmp_path / "CHGCAR"
    write_chgcar(density, out)
    again = read_chgcar(out)

    assert [s.symbol for s in again.structure.species] == ["Na", "Na", "Cl", "Cl", "O"]
    assert np.allclose(again.total, total, rtol=1e-10, atol=0)
    assert np.allclose(again.diff, diff, rtol=1e-10, atol=1e-100)
    headers = [(int(i), int(n)) for i, n in _AUG_HEADER.findall(out.read_bytes())]
    assert headers == [(1, 5), (2, 5), (3, 8), (4, 8), (5, 13)] * 2
    for j, site in enumerate(again.structure):
        i = next(i for i, s in enumerate(structure) if np.allclose(s.frac_coords, site.frac_coords))
        assert site.specie == structure[i].specie
        for key in ("total", "diff"):
            assert np.allclose(again.augmentation[key][j], augmentation[key][i], rtol=1e-12, atol=0)
        assert again.moments[j] == structure.site_properties["magmom"][i]
    chg = Chgcar.from_file(str(out))
    assert np.allclose(chg.data["total"], total, rtol=1e-10, atol=0)
    assert [s.symbol for s in chg.structure.species] == ["Na", "Na", "Cl", "Cl", "O"]


def test_non_collinear_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    structure = _unsorted_structure()
    shape = (5, 4, 3)
    total, magnetisation = rng.uniform(1, 2, shape), rng.normal(0, 1, (3, *shape))
    keys = ("total", "m_x", "m_y", "m_z")
    augmentation = {key: _occupancies(structure, rng, 1.0) for key in keys}
    augmentation["total"][2] = augmentation["total"][2] + 1j * augmentation["m_x"][2]  # imaginary parts
    moments = rng.normal(0, 1, (len(structure), 3)).round(6)
    density = Density(structure, total, None, magnetisation, augmentation, moments=moments)
    write_chgcar(density, tmp_path / "CHGCAR")
    again = read_chgcar(tmp_path / "CHGCAR")
    order = [0, 2, 1, 3, 4]  # Na Na Cl Cl O
    assert again.diff is None and again.magnetisation.shape == (3, *shape)
    assert np.allclose(again.magnetisation, magnetisation, rtol=1e-10, atol=1e-100)
    assert np.allclose(again.moments, moments[order], rtol=1e-11, atol=0)
    for key in keys:
        assert all(np.array_equal(again.augmentation[key][j], augmentation[key][i]) for j, i in enumerate(order))
    assert (tmp_path / "CHGCAR").read_bytes().count(b"augmentation occupancies (imaginary part)   2   5\n") == 1
    assert np.iscomplexobj(again.augmentation["total"][1]) and not np.iscomplexobj(again.augmentation["total"][0])


def test_grid_is_written_x_fastest(tmp_path):
    structure = Structure(Lattice.cubic(3.0), ["Si"], [[0, 0, 0]])
    ix, iy, iz = np.indices((2, 3, 4))
    density = Density(structure, (1 + ix + 10 * iy + 100 * iz).astype(float))
    write_chgcar(density, tmp_path / "CHGCAR")
    body = _body((tmp_path / "CHGCAR").read_bytes())
    assert body[0].split() == [b"2", b"3", b"4"]
    assert [float(v) for v in body[1].split()] == [1, 2, 11, 12, 21]
    assert np.array_equal(read_chgcar(tmp_path / "CHGCAR").total, density.total)
    assert density.grid == (2, 3, 4) and density.augmentation is None


def test_vasp4_header_without_species_line(shared, tmp_path):
    write_chgcar(read_chgcar(shared / FIXTURES["Li_nospin"]), tmp_path / "CHGCAR")
    lines = (tmp_path / "CHGCAR").read_bytes().split(b"\n")
    assert lines[5].split() == [b"Li"]
    vasp4 = tmp_path / "CHGCAR4"
    vasp4.write_bytes(b"\n".join([b"unknown system", *lines[1:5], *lines[6:]]))
    assert "pass species=[...]" in _error(vasp4)
    assert read_chgcar(vasp4, species=["Li"]).structure.formula == "Li1"
    vasp4.write_bytes(b"\n".join([b"Li", *lines[1:5], *lines[6:]]))
    assert read_chgcar(vasp4).structure.formula == "Li1"


def test_density_checks_its_arrays():
    structure = Structure(Lattice.cubic(3.0), ["Si"], [[0, 0, 0]])
    grid = np.ones((2, 2, 2))
    with pytest.raises(DensityError, match="diff has shape"):
        Density(structure, grid, np.ones((2, 2, 3)))
    with pytest.raises(DensityError, match="non-finite"):
        Density(structure, np.full((2, 2, 2), np.nan))
    for bad in (np.inf, -np.inf):  # one value among finite ones, also where the sum is finite otherwise
        values = grid.copy()
        values[1, 0, 1] = bad
        with pytest.raises(DensityError, match="non-finite"):
            Density(structure, values)
    huge = np.full((2, 2, 2), 1.5e308)  # finite values whose sum overflows are not refused
    assert Density(structure, huge).total is not None
    with pytest.raises(DensityError, match="1 sites"):
        Density(structure, grid, augmentation={"total": [np.ones(3), np.ones(3)]})
    density = Density(structure, 8 * grid)
    assert density.electrons() == 8.0 and density.rho().max() == pytest.approx(8 / 27)


def test_fortran_formats():
    values = np.array([1.0, -1.1477587988, 0.0, 1e-101, 0.999999999999, 123.456])
    text = format_fortran(values, width=17, digits=11, per_line=5, lead=" ").decode()
    assert text == (
        " 0.10000000000E+01 -.11477587988E+01 0.00000000000E+00 0.00000000000E+00 0.10000000000E+01\n"
        " 0.12345600000E+03\n"
    )
    assert format_fortran(np.array([0.2753636, -0.03331354]), width=15, digits=7, per_line=5) == (
        b"  0.2753636E+00 -0.3331354E-01\n"
    )
    assert format_fortran(np.array([0.6]), width=20, digits=12, per_line=5) == b"  0.600000000000E+00\n"
    assert parse_token("0.12345-100") == 0.12345e-100 and parse_token("-.5E+01") == -5.0
    assert parse_token("1.0D+02") == 100.0 and parse_token("0.1E+0x") is None
    with pytest.raises(ValueError, match="three-digit exponent"):
        format_fortran(np.array([1e120]), width=15, digits=7, per_line=5)


_LI_AUG = (b"  0.2753636E+00 -0.3331354E-01  0.0000000E+00  0.0000000E+00  0.0000000E+00\n"
           b"  0.1027381E-02  0.0000000E+00  0.0000000E+00  0.0000000E+00  0.4070687E-01\n"
           b"  0.7248414E-04 -0.8899631E-04 -0.4475686E-04  0.1257305E-03 -0.2554096E-04\n")


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(lambda tokens: [tokens[i : i + 3] for i in range(0, 15, 3)], id="3-per-line"),
        pytest.param(lambda tokens: [tokens[:5], tokens[5:7], tokens[7:]], id="ragged"),
        pytest.param(lambda tokens: [tokens[:5], [], tokens[5:10], tokens[10:]], id="blank-line"),
    ],
)
def test_occupancies_in_another_line_layout_read_the_same(shared, tmp_path, layout):
    # The one-go read of the occupancies assumes the lines a full first line implies; any other
    # layout must give the same numbers through the line-by-line reader.
    text = _text(shared, "Li_spin")
    assert text.count(_LI_AUG) == 1
    relaid = b"".join(b"  " + b"  ".join(line) + b"\n" for line in layout(_LI_AUG.split()))
    density = read_chgcar(_plain(shared, "Li_spin", tmp_path, text.replace(_LI_AUG, relaid)))
    original = read_chgcar(shared / FIXTURES["Li_spin"])
    assert np.array_equal(density.augmentation["total"][0], original.augmentation["total"][0])
    assert np.array_equal(density.total, original.total) and np.array_equal(density.diff, original.diff)


_LI_LAST = b" -0.1474442E-04  0.1810340E-04  0.9104335E-05 -0.2557553E-04  0.5195503E-05\n"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (_LI_AUG, _LI_AUG.replace(b" -0.2554096E-04\n", b" -0.2554096E-04  0.1E+01\n"),
         "augmentation occupancies of ion 1 (total density block) hold more than the 15 values"),
        (_LI_LAST, _LI_LAST.replace(b"  0.5195503E-05\n", b"\n"),
         "augmentation occupancies of ion 1 (magnetisation block) stop after 14 of 15 values"),
        # one value short before the moments line: that line (one number, another format) is not the 15th value
        (_LI_AUG, _LI_AUG.replace(b" -0.2554096E-04\n", b"\n"),
         "augmentation occupancies of ion 1 (total density block) stop after 14 of 15 values"),
        (_LI_AUG, _LI_AUG.replace(b"  0.1027381E-02", b"            inf"),
         "cannot read 'inf' as a finite number in the augmentation occupancies of ion 1"),
        (_LI_AUG, _LI_AUG.replace(b"  0.1027381E-02", b"  0.1027381E+0x"),
         "line 22133: cannot read '0.1027381E+0x'"),
    ],
)
def test_bad_occupancies_are_refused_with_their_line(shared, tmp_path, old, new, expected):
    text = _text(shared, "Li_spin")
    assert text.count(old) == 1
    assert expected in _error(_plain(shared, "Li_spin", tmp_path, text.replace(old, new)))
