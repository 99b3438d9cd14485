"""Numbers as VASP's Fortran writes them: checked bulk parsing and E-format output.

Fortran drops the exponent letter when a three-digit exponent does not fit the
field: 0.123E-100 is written ``0.123-100``. A tolerant C parser (pymatgen's
``parse_n_doubles``, numpy's ``fromstring``) reads that as two numbers, 0.123
and −100, and every later value of the block slides by one. The bulk parser
here therefore accepts a block only when its ``n``-th number ends the block
(dftflow's compiled reader, ``dftflow/_speedups.c``, stops at such a token instead);
otherwise the caller reads it token by token with :func:`parse_token`, which
reads such numbers correctly and names a token it cannot read.
"""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # dftflow's compiled reader (built at install, see hatch_build.py): exact, releases the GIL
    from dftflow._speedups import parse_doubles, parse_fixed
except ImportError:  # pragma: no cover - installed without a C compiler
    parse_doubles = parse_fixed = None
try:  # pymatgen's fast_float-based reader (pymatgen >= 2025.6), about 4x numpy's
    from pymatgen.optimization.fast_parser import parse_n_doubles
except ImportError:  # pragma: no cover - older pymatgen
    parse_n_doubles = None

# A block is read on several threads only when each gets at least this many values.
_VALUES_PER_THREAD = 1 << 17
# ASCII digits of 0..999, zero-padded: the lookup table of format_fortran.
_THREE_DIGITS = np.array([[ord(c) for c in f"{i:03d}"] for i in range(1000)], dtype=np.uint8)
# A mantissa followed by a Fortran exponent that Python's float() rejects:
# '0.123-100' (letter dropped) or '0.123D+02' (double-precision letter).
_FORTRAN_NUMBER = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))(?:[DdQq]([+-]?\d+)|([+-]\d+))")


def parse_token(token: str) -> float | None:
    """Read one number as Fortran writes it, or None if it is not a number.

    >>> parse_token("0.12345-100"), parse_token("-.5E+01"), parse_token("1.0D+02")
    (1.2345e-101, -5.0, 100.0)
    """
    try:
        return float(token)
    except ValueError:
        pass
    match = _FORTRAN_NUMBER.fullmatch(token)
    if match is None:
        return None
    mantissa, exponent_d, exponent_bare = match.groups()
    return float(f"{mantissa}e{exponent_d or exponent_bare}")


def parse_clean_block(buf: bytes, start: int, end: int, n: int) -> np.ndarray | None:
    """Parse ``buf[start:end]`` if it is exactly ``n`` numbers; None means "look closer".

    For a grid the caller has checked that the block's lines all have the length of
    its first line (the fixed-width layout VASP writes), which rules out a value
    missing from a line; for augmentation occupancies the count alone decides, as
    it did when they were split into tokens. None is returned when the ``n``-th
    number does not end the block (a token read as two numbers, such as a
    mis-split exponent ``0.1-100``), or the parse stops early (garbage, or the
    block is short).
    """
    if parse_doubles is not None:
        values = np.empty(n)
        count, stop = parse_doubles(buf, start, end, values)
        if count != n or buf[stop:end].strip():
            return None
        return values
    if parse_n_doubles is None:
        try:
            values = np.array(buf[start:end].split(), dtype=np.float64)
        except ValueError:
            return None
        return values if values.size == n else None
    values = np.empty(n)
    stream = io.BytesIO(buf)  # shares buf, no copy
    stream.seek(start)
    if parse_n_doubles(stream, values, n) != n:
        return None
    stop = stream.tell()
    if stop > end or buf[stop:end].strip():
        return None
    return values


def parse_fixed_block(buf: bytes, start: int, end: int, n: int, line_width: int, per_line: int,
                      threads: int = 1) -> np.ndarray | None:
    """``n`` numbers in VASP's grid layout (lines of ``line_width`` bytes, newline included,
    ``per_line`` equal fields), each field read on its own; None means "look closer".

    The caller has checked that the full lines end at the same column. ``threads``
    > 1 reads a large block in that many pieces of whole lines at once (the reader
    releases the GIL). Needs the compiled reader; None without it.
    """
    if parse_fixed is None or (line_width - 1) % per_line:
        return None
    values = np.empty(n)
    lines = -(-n // per_line)
    pieces = max(1, min(threads, n // _VALUES_PER_THREAD))
    cuts = [lines * k // pieces for k in range(pieces + 1)]
    jobs = [(start + a * line_width, values[a * per_line : min(n, b * per_line)]) for a, b in zip(cuts, cuts[1:])]
    if pieces == 1:
        counts = [parse_fixed(buf, start, line_width, per_line, values)]
    else:
        with ThreadPoolExecutor(pieces - 1) as pool:
            rest = [pool.submit(parse_fixed, buf, at, line_width, per_line, out) for at, out in jobs[1:]]
            counts = [parse_fixed(buf, jobs[0][0], line_width, per_line, jobs[0][1])] + [f.result() for f in rest]
    if any(count != out.size for count, (_, out) in zip(counts, jobs)):
        return None
    line, column = divmod(n - 1, per_line)
    stop = start + line * line_width + (column + 1) * ((line_width - 1) // per_line)  # after the last field
    if stop > end or buf[stop:end].strip():
        return None
    return values


def format_fortran(values: np.ndarray, *, width: int, digits: int, per_line: int, lead: str = "") -> bytes:
    """Write values in Fortran's ``Ew.d`` form, ``per_line`` to a line, as VASP does.

    Each field is ``lead`` followed by ``width`` characters: ``0.ddddE+xx``
    right-aligned, ``-0.ddddE+xx`` for negative values where the field has room
    and ``-.ddddE+xx`` where it does not (VASP's ``-.11477587988E+01``).
    Magnitudes below 1E-100, which would need a three-digit exponent, are
    written as zero.

    Raises
    ------
    ValueError
        For non-finite values or magnitudes of 1E+99 and above.
    """
    x = np.ascontiguousarray(values, dtype=np.float64).ravel()
    if not np.isfinite(x).all():
        raise ValueError("non-finite values cannot be written")
    chunk = per_line * (1 << 16)  # bounds the temporary arrays
    if x.size > chunk:
        kwargs = {"width": width, "digits": digits, "per_line": per_line, "lead": lead}
        return b"".join(format_fortran(x[i : i + chunk], **kwargs) for i in range(0, x.size, chunk))
    mantissa, exponent = _decimal_parts(x, digits)
    if exponent.size and exponent.max() > 99:
        raise ValueError(f"|value| = {np.abs(x).max():.3e} needs a three-digit exponent")
    lead_bytes = lead.encode()
    w = len(lead_bytes) + width
    out = np.full((x.size, w), ord(" "), dtype=np.uint8)
    if lead_bytes:
        out[:, : len(lead_bytes)] = np.frombuffer(lead_bytes, dtype=np.uint8)
    out[:, w - 4 - digits : w - 4] = _digit_chars(mantissa, digits)
    out[:, w - 4] = ord("E")
    out[:, w - 3] = np.where(exponent < 0, ord("-"), ord("+"))
    out[:, w - 2] = np.abs(exponent) // 10 + ord("0")
    out[:, w - 1] = np.abs(exponent) % 10 + ord("0")
    dot = w - 5 - digits
    out[:, dot] = ord(".")
    negative = (x < 0) & (mantissa > 0)
    room = width - digits - 5  # characters left of the '.'
    out[:, dot - 1] = np.where(negative & (room < 2), ord("-"), ord("0"))
    if room >= 2:
        out[negative, dot - 2] = ord("-")
    return _lines(out, per_line)


def _decimal_parts(x: np.ndarray, digits: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer mantissas m (``digits`` digits) and exponents e with |x| ≈ 0.m × 10**e."""
    magnitude = np.abs(x)
    nonzero = magnitude >= 1e-100
    exponent = np.zeros(x.size, dtype=np.int64)
    exponent[nonzero] = np.floor(np.log10(magnitude[nonzero])).astype(np.int64) + 1
    mantissa = np.zeros(x.size, dtype=np.int64)
    top, bottom = 10**digits, 10 ** (digits - 1)
    for _ in range(3):  # log10 can be one off next to powers of ten; rounding can carry
        scaled = np.rint(magnitude * np.power(10.0, (digits - exponent).astype(np.float64)))
        mantissa = np.where(nonzero, scaled, 0).astype(np.int64)
        high, low = nonzero & (mantissa >= top), nonzero & (mantissa < bottom)
        if not (high.any() or low.any()):
            break
        exponent = exponent + high - low
    # Values that round below 0.1E-99 cannot be written with two exponent digits.
    underflow = exponent < -99
    mantissa[underflow], exponent[underflow] = 0, 0
    exponent[mantissa == 0] = 0
    return mantissa, exponent


def _digit_chars(mantissa: np.ndarray, digits: int) -> np.ndarray:
    """ASCII digits of non-negative integers, zero-padded to ``digits``: shape (n, digits)."""
    groups = -(-digits // 3)
    chars = np.empty((mantissa.size, 3 * groups), dtype=np.uint8)
    rest = mantissa
    for k in range(groups - 1, -1, -1):  # three digits at a time, through a lookup table
        rest, group = np.divmod(rest, 1000)
        chars[:, 3 * k : 3 * k + 3] = _THREE_DIGITS[group]
    return chars[:, 3 * groups - digits :]


def _lines(fields: np.ndarray, per_line: int) -> bytes:
    n, w = fields.shape
    full = n // per_line
    body = fields[: full * per_line].reshape(full, per_line * w)
    newline = np.full((full, 1), ord("\n"), dtype=np.uint8)
    text = np.hstack([body, newline]).tobytes()
    if n % per_line:
        text += fields[full * per_line :].tobytes() + b"\n"
    return text
