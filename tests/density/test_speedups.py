"""The compiled CHGCAR reader and chunk shuffler (dftflow/_speedups.c) against Python and numpy."""

from __future__ import annotations

import gzip
import os
import re

import numpy as np
import pytest

from dftflow.density import _fortran, read_chgcar
from dftflow.density._fortran import format_fortran

speedups = pytest.importorskip("dftflow._speedups", reason="dftflow/_speedups.c was not compiled")

FIXTURES = {
    "Li_nospin": "fixtures/chgcar/Li_nospin.gz",
    "Li_spin": "fixtures/chgcar/Li_spin.gz",
    "Si_static": "fixtures/vasp/Si_static_with_chgcar/outputs/CHGCAR.gz",
}


def _parse(text: bytes, capacity: int | None = None) -> tuple[np.ndarray, int, int]:
    out = np.full(capacity if capacity is not None else len(text.split()), np.pi)
    count, stop = speedups.parse_doubles(text, 0, len(text), out)
    return out[:count], count, stop


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.int64), b.view(np.int64))


def test_ci_builds_the_extension():
    """CI sets DFTFLOW_REQUIRE_SPEEDUPS=1; there the reader must be the compiled one."""
    if os.environ.get("DFTFLOW_REQUIRE_SPEEDUPS") == "1":
        assert _fortran.parse_fixed is speedups.parse_fixed


def test_every_number_is_read_as_python_float_reads_it():
    """Bit for bit: the exact fast path (|k| <= 22, <= 19 digits), strtod's range, signs, zeros, limits."""
    rng = np.random.default_rng(7)
    tokens = []
    for exponent in range(-330, 306, 3):
        values = rng.standard_normal(8) * np.float64(10.0) ** exponent
        for fmt in ("%.11E", "%.7e", "%.17g", "%.3f", "%.25e", "%.0e", "%.12G"):
            tokens += [fmt % v for v in values]
    tokens += ["0", "-0", "+0.0", "-0.00000000000E+00", ".5", "5.", "-.11477587988E+01", "+.1e+1", "007",
               "1e400", "-1E400", "1E-400", "4.9406564584124654e-324", "2.4703282292062327e-324",
               "2.2250738585072011e-308", "1.7976931348623157e308", "9007199254740993", "9007199254740992.5",
               "123456789012345678901234567890", "0.000000000000000000000000001234", "1" * 400 + "e-380",
               "0.1" + "0" * 300 + "1", "8.98846567431158e307"]
    tokens = [t for t in tokens if "inf" not in t.lower() and "nan" not in t.lower()]
    rng.shuffle(tokens)
    text = "\n".join(f"{' ' * (i % 3)}{t}" for i, t in enumerate(tokens)).encode()
    values, count, stop = _parse(text)
    assert count == len(tokens) and stop == len(text)
    assert _same_bits(values, np.array([float(t) for t in tokens]))


@pytest.mark.parametrize("special", ["nan", "NaN", "-inf", "Infinity", "+INF"])
def test_nan_and_inf_are_read_for_the_finiteness_check(special):
    values, count, _ = _parse(f"1.0 {special} 2.0".encode())
    expected = float(special)
    assert count == 3 and values[0] == 1.0 and values[2] == 2.0
    assert np.isnan(values[1]) if np.isnan(expected) else values[1] == expected


@pytest.mark.parametrize(
    ("text", "count"),
    [(b"1 2 0.1-100 3", 2), (b"1 2 1.0D+02", 2), (b"1 x", 1), (b"1 2 .", 2), (b"1E", 0), (b"1 2 3e+", 2),
     (b"1 1.2.3", 1), (b"1 1e5x 2", 1), (b"- 1", 0), (b"1 nanx", 1), (b"1 in", 1), (b"1 0x10", 1)],
)
def test_anything_but_a_plain_number_stops_the_parse_before_it(text, count):
    """The caller then reads the block token by token (Fortran's exponents, or an error naming the token)."""
    values, got, stop = _parse(text, capacity=8)
    assert got == count
    assert _same_bits(values, np.array([float(t) for t in text.split()[:count]]))
    assert text[stop:].split()[0] == text.split()[count]


def test_the_parse_stops_when_out_is_full_and_reads_only_its_range():
    text = b" 1.5 2.5 3.5 4.5 garbage"
    values, count, stop = _parse(text, capacity=2)
    assert list(values) == [1.5, 2.5] and text[stop:].startswith(b" 3.5")
    out = np.zeros(4)
    assert speedups.parse_doubles(text, 5, 12, out) == (2, 12)  # "2.5 3.5", nothing of what follows
    assert list(out[:2]) == [2.5, 3.5]
    with pytest.raises(ValueError):
        speedups.parse_doubles(text, 0, len(text) + 1, out)
    with pytest.raises(TypeError):
        speedups.parse_doubles(text, 0, len(text), np.zeros(4, dtype=np.float32))


def _vasp_block(values: np.ndarray) -> bytes:
    return format_fortran(values, width=17, digits=11, per_line=5, lead=" ")


def test_fixed_fields_read_as_float_reads_each():
    rng = np.random.default_rng(3)
    values = rng.standard_normal(10_003) * 10.0 ** rng.integers(-60, 60, size=10_003)
    values[::97] = 0.0
    block = _vasp_block(values)
    assert b"-." in block  # VASP's narrow negative form
    out = np.empty(values.size)
    assert speedups.parse_fixed(block, 0, block.index(b"\n") + 1, 5, out) == values.size
    assert _same_bits(out, np.array([float(t) for t in block.split()]))
    for threads in (1, 2, 3):
        end = len(block) - 1
        got = _fortran.parse_fixed_block(block, 0, end, values.size, block.index(b"\n") + 1, 5, threads)
        assert got is not None and _same_bits(got, out)


def test_a_field_that_is_not_one_number_stops_the_fixed_parse_there():
    values = np.linspace(-3, 3, 23)
    block = bytearray(_vasp_block(values))
    width = block.index(b"\n") + 1
    field = (width - 1) // 5
    at = 2 * width + 3 * field  # value 13: Fortran's letterless exponent, which the token path reads
    block[at : at + field] = b" 0.12345678901-100"
    out = np.empty(values.size)
    assert speedups.parse_fixed(bytes(block), 0, width, 5, out) == 13
    assert _fortran.parse_fixed_block(bytes(block), 0, len(block) - 1, values.size, width, 5) is None


@pytest.mark.parametrize("name", FIXTURES)
def test_real_chgcars_read_the_same_with_and_without_the_compiled_reader(shared, name, tmp_path, monkeypatch):
    path = tmp_path / "CHGCAR"
    path.write_bytes(gzip.decompress((shared / FIXTURES[name]).read_bytes()))
    fast = read_chgcar(path)
    split = read_chgcar(path, threads=2, c_order=False)
    monkeypatch.setattr(_fortran, "parse_fixed", None)
    monkeypatch.setattr(_fortran, "parse_doubles", None)
    slow = read_chgcar(path)
    for key in ("total", "diff"):
        a, b, c = getattr(fast, key), getattr(slow, key), getattr(split, key)
        if b is None:
            assert a is None and c is None
            continue
        assert _same_bits(a, b) and a.flags.c_contiguous
        assert np.array_equal(c, b) and c.flags.f_contiguous and not c.flags.c_contiguous
    for block_fast, block_slow in zip(fast.augmentation["total"], slow.augmentation["total"], strict=True):
        assert np.array_equal(block_fast, block_slow)


def _shuffled_reference(data: np.ndarray, z0: int, depth: int) -> bytes:
    block = data[..., z0 : z0 + depth]
    pad = depth - block.shape[-1]
    if pad:
        block = np.concatenate([block, np.zeros((*block.shape[:-1], pad), np.float32)], axis=-1)
    return np.ascontiguousarray(block).view(np.uint8).reshape(-1, 4).T.tobytes()


@pytest.mark.parametrize("shape", [(9, 7, 11), (1, 1, 5), (16, 4, 3)])
def test_shuffled_chunks_equal_hdf5s_shuffle_of_the_c_ordered_chunk(shape):
    data = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    strided = np.zeros((*shape[:2], 2 * shape[2]), np.float32)[..., ::2]  # neither C nor Fortran order
    strided[...] = data
    for layout in (data, np.asfortranarray(data), strided):
        for depth in (1, 2, 4, shape[2], shape[2] + 3):
            for z0 in range(0, shape[2], depth):
                assert speedups.shuffle_chunk(layout, z0, depth) == _shuffled_reference(data, z0, depth)
    with pytest.raises(TypeError):
        speedups.shuffle_chunk(data.astype(np.float64), 0, 1)
    with pytest.raises(ValueError):
        speedups.shuffle_chunk(data, shape[2], 1)


_PLAIN = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def test_random_text_is_read_up_to_the_first_token_that_is_not_a_plain_number():
    """Mutated numbers and garbage: every value read equals float(token), and the parse stops exactly at the
    first token outside the grammar (or reads them all); fixed-width reads agree with the token reads."""
    rng = np.random.default_rng(11)
    alphabet = list("0123456789.+-eEdD xn\t")
    for _ in range(3000):
        tokens = []
        for _ in range(rng.integers(1, 12)):
            if rng.random() < 0.7:
                tokens.append(f"{rng.standard_normal() * 10.0 ** rng.integers(-30, 30):.{rng.integers(0, 14)}E}")
            else:
                tokens.append("".join(rng.choice(alphabet, size=rng.integers(1, 8))).strip() or "0")
            if rng.random() < 0.2:  # damage one character
                t = list(tokens[-1])
                t[rng.integers(len(t))] = str(rng.choice(alphabet))
                tokens[-1] = "".join(t).strip() or "1"
        tokens = [t for tok in tokens for t in tok.split()]
        text = " ".join(tokens).encode()
        out = np.full(len(tokens) + 1, np.pi)
        count, stop = speedups.parse_doubles(text, 0, len(text), out)
        plain = [bool(_PLAIN.fullmatch(t)) for t in tokens]
        expected = plain.index(False) if False in plain else len(tokens)
        assert count == expected, (tokens, count)
        assert _same_bits(out[:count], np.array([float(t) for t in tokens[:count]]))
        assert out[count] == np.pi  # nothing written past the values read
        width = 24  # the same tokens right-aligned in fields of one line
        kept = [t for t in tokens if len(t) < width]
        n = len(kept)
        if n == 0:
            continue
        fields = "".join(t.rjust(width) for t in kept).encode() + b"\n"
        got = np.empty(n)
        read = speedups.parse_fixed(fields, 0, len(fields), n, got)
        ok = [bool(_PLAIN.fullmatch(t)) for t in kept]
        assert read == (ok.index(False) if False in ok else n)
        assert _same_bits(got[:read], np.array([float(t) for t in kept[:read]]))
