"""Parsing of CHGCAR-format text, with errors that name the file, the line and the reason.

The grid blocks take a fast path when they are laid out as VASP writes them
(lines of equal length, every value a plain number): pymatgen's C parser
reads them and the block must end exactly at its last value. Anything else is
read token by token, which reads Fortran's mis-split exponents (``0.1-100``)
and says what is wrong when a value is missing, extra or garbled.
"""

from __future__ import annotations

import lzma
import math
import os
import re
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from dftflow.compression import decompress
from dftflow.density._fortran import parse_clean_block, parse_fixed_block, parse_token
from dftflow.density.model import BLOCK_KEYS, checked_sum
from dftflow.errors import DensityError

_AUG = b"augmentation occupancies"
_AUG_IMAG = b"augmentation occupancies (imaginary part)"
# The end of a complete E-format number (also Fortran's '0.1-100').
_COMPLETE = re.compile(rb"(?:[EeDd][+-]?\d\d|\d[+-]\d\d\d)$")
_GRID_LINE = re.compile(rb"\s*(\d+)\s+(\d+)\s+(\d+)\s*")


def read_bytes(path: str | os.PathLike) -> bytes:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DensityError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    try:
        raw = decompress(raw)
    except (EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as exc:
        raise DensityError(f"{path}: the compressed stream is damaged or cut short ({exc})") from exc
    if not raw or raw.isspace():
        raise DensityError(f"{path}: the file is empty")
    return raw


class Reader:
    """A cursor over the bytes of one file, with errors that name the file and line."""

    def __init__(self, buf: bytes, path: str, c_order: bool = True, threads: int = 1) -> None:
        self.buf, self.path, self.pos, self.c_order, self.threads = buf, path, 0, c_order, threads
        self.sums: list[float] = []  # np.sum of each data block read, in file order

    def error(self, reason: str, pos: int | None = None, line: int | None = None) -> DensityError:
        if line is None:
            line = self.line_number(self.pos if pos is None else pos)
        return DensityError(f"{self.path}: line {line}: {reason}")

    def line_number(self, pos: int) -> int:
        return self.buf.count(b"\n", 0, pos) + 1

    def peek(self) -> bytes | None:
        """The next line (without its newline), or None at the end of the file."""
        if self.pos >= len(self.buf):
            return None
        end = self.buf.find(b"\n", self.pos)
        return self.buf[self.pos : len(self.buf) if end < 0 else end]

    def advance(self) -> None:
        end = self.buf.find(b"\n", self.pos)
        self.pos = len(self.buf) if end < 0 else end + 1

    def line(self, what: str) -> bytes:
        text = self.peek()
        if text is None:
            raise self.error(f"the file ends where {what} should be (truncated?)")
        self.advance()
        return text

    def floats(self, what: str, count: int) -> list[float]:
        tokens = self.line(what).split()
        values = [parse_token(t.decode("latin-1")) for t in tokens[:count]]
        if len(values) < count or None in values or not all(math.isfinite(v) for v in values):  # type: ignore[arg-type]
            raise self.error(f"expected {count} finite numbers for {what}, found {_show(b' '.join(tokens))}",
                             self._last())
        return values  # type: ignore[return-value]

    def _last(self) -> int:
        return max(self.pos - 1, 0)

    # -- header ---------------------------------------------------------------

    def header(self, species: Sequence[str] | None) -> Structure:
        comment = self.line("the comment line").decode("latin-1").strip()
        scale_tokens = self.line("the scale factor").split()
        scale = [parse_token(t.decode("latin-1")) for t in scale_tokens[:3]]
        if not scale or None in scale or len(scale) == 2 or not all(math.isfinite(x) and x != 0 for x in scale):
            raise self.error(f"cannot read the scale factor from {_show(b' '.join(scale_tokens))}", self._last())
        scale_line = self.line_number(self._last())
        matrix = np.array([self.floats(f"lattice vector {i + 1}", 3) for i in range(3)])
        if len(scale) == 3:  # one factor per axis (VASP 6)
            factor: float | np.ndarray = np.array(scale)
        elif scale[0] < 0:  # a negative scale is the cell volume
            unscaled = abs(float(np.linalg.det(matrix)))
            factor = (-scale[0] / unscaled) ** (1 / 3) if unscaled > 0 else math.nan
        else:
            factor = scale[0]
        matrix = matrix * factor
        volume = abs(float(np.linalg.det(matrix))) if np.isfinite(matrix).all() else math.nan
        if not (math.isfinite(volume) and volume > 1e-6 * float(np.prod(np.linalg.norm(matrix, axis=1)))):
            raise self.error(f"the scale factor and lattice vectors give a degenerate cell (volume {volume:.3g} Å³)",
                             line=scale_line)
        symbols, counts = self._species_and_counts(comment, species)
        mode = self.line("the coordinate mode").strip()
        if mode[:1] in (b"s", b"S"):  # Selective dynamics
            mode = self.line("the coordinate mode").strip()
        cartesian = mode[:1] in (b"c", b"C", b"k", b"K")
        nsites = sum(counts)
        if nsites == 0:
            raise self.error("the header declares no atoms", self._last())
        coords = np.array([self.floats(f"the coordinates of site {i + 1}", 3) for i in range(nsites)])
        site_species = [s for s, n in zip(symbols, counts) for _ in range(n)]
        if cartesian:
            coords = coords * factor
        try:
            return Structure(Lattice(matrix), site_species, coords, coords_are_cartesian=cartesian)
        except ValueError as exc:
            raise self.error(f"the header does not describe a valid cell ({exc})") from exc

    def _species_and_counts(self, comment: str, species: Sequence[str] | None) -> tuple[list[str], list[int]]:
        tokens = self.line("the species or counts line").split()
        if tokens and all(t.isdigit() for t in tokens):  # VASP 4: no species line
            counts = [int(t) for t in tokens]
            names = list(species) if species is not None else comment.split()
            if len(names) != len(counts) or not all(Element.is_valid_symbol(n) for n in names):
                raise self.error(
                    "the header has no species line (VASP 4 format) and the comment line "
                    f"{comment!r} does not name the {len(counts)} elements; pass species=[...]",
                    self._last(),
                )
            return names, counts
        symbols = [re.split(r"[_/.]", t.decode("latin-1"))[0] for t in tokens]
        bad = [s for s in symbols if not Element.is_valid_symbol(s)]
        if bad or not symbols:
            raise self.error(f"the species line {_show(b' '.join(tokens))} names no element {bad}", self._last())
        if species is not None and list(species) != symbols:
            raise self.error(f"the file names species {symbols}, the caller {list(species)}", self._last())
        count_tokens = self.line("the counts line").split()
        if len(count_tokens) != len(symbols) or not all(t.isdigit() for t in count_tokens):
            raise self.error(
                f"expected {len(symbols)} site counts for {symbols}, found {_show(b' '.join(count_tokens))}",
                self._last(),
            )
        return symbols, [int(t) for t in count_tokens]

    # -- data -----------------------------------------------------------------

    def body(self, nsites: int) -> tuple[list[np.ndarray], list[list[np.ndarray]], np.ndarray | None]:
        """Data blocks, their augmentation occupancies and the moments between them."""
        blocks: list[np.ndarray] = []
        augmentation: list[list[np.ndarray]] = []
        gaps: list[list[float]] = []
        pending: list[float] | None = None  # moments read since the last block
        while (text := self._skip_blank()) is not None:
            if grid := _GRID_LINE.fullmatch(text):
                shape = tuple(int(g) for g in grid.groups())
                if blocks and shape != blocks[0].shape:
                    raise self.error(f"grid {shape} differs from the first block's {blocks[0].shape}")
                if blocks:
                    gaps.append(pending or [])
                self.advance()
                blocks.append(self._grid_block(shape, _block_name(len(blocks))))
                augmentation.append([])
                pending = None
            elif not blocks:
                raise self.error(f"expected the grid dimensions 'nx ny nz', found {_show(text)}")
            elif text.lstrip().startswith(_AUG):
                if pending is not None:
                    raise self.error(
                        f"{len(pending)} stray number(s) between the {_block_name(len(blocks) - 1)} and its "
                        "augmentation occupancies (a block with more values than its grid?)"
                    )
                self._augmentation_block(text, augmentation[-1], nsites, len(blocks))
            elif (values := _numbers(text)) is not None:
                pending = [] if pending is None else pending
                pending.extend(values)
                self.advance()
            elif self.pos + len(text) >= len(self.buf):
                raise self.error(f"the file ends in the middle of a line, {_show(text)} (truncated?)")
            else:
                raise self.error(f"unexpected line {_show(text)} (several densities in one CHG file are not supported)")
        self._check_last_token()
        if pending is not None and len(pending) <= 3 * nsites:
            raise self.error(
                f"the file ends after {len(pending)} moment(s) but before the magnetisation block they "
                "announce (truncated?)"
            )
        if pending is not None:
            raise self.error(
                f"{len(pending)} numbers after the {_block_name(len(blocks) - 1)} belong to no block "
                "(a grid line missing?)"
            )
        if len(blocks) not in BLOCK_KEYS:
            raise self.error(f"found {len(blocks)} data blocks; a density file has 1, 2 (ISPIN=2) or 4 (non-collinear)")
        self._check_augmentation(augmentation, nsites)
        return blocks, (augmentation if augmentation[0] else []), self._moments(gaps, nsites, len(blocks))

    def _token(self, token: bytes, tokens: list[bytes], pos: int, what: str) -> float:
        """One number of the line at ``pos``, or an error that names it."""
        value = parse_token(token.decode("latin-1"))
        if value is not None and math.isfinite(value):
            return value
        if value is None and token is tokens[-1] and self.buf.find(b"\n", pos) < 0:
            raise self.error(f"the file ends inside the number {_show(token)} (truncated?)", pos)
        raise self.error(f"cannot read {_show(token)} as {what}", pos)

    def _check_last_token(self) -> None:
        """A file that stops without a newline inside a number, e.g. ``0.2068E-0``, was cut short."""
        if self.buf.endswith(b"\n"):
            return
        tokens = self.buf[-200:].split()
        if len(tokens) >= 2 and _COMPLETE.search(tokens[-2]) and not _COMPLETE.search(tokens[-1]):
            raise self.error(f"the file ends inside the number {_show(tokens[-1])} (truncated?)", len(self.buf))

    def _skip_blank(self) -> bytes | None:
        while (text := self.peek()) is not None and not text.strip():
            self.advance()
        return text

    def _grid_block(self, shape: tuple[int, ...], name: str) -> np.ndarray:
        n = int(np.prod(shape))
        if n == 0:
            raise self.error(f"the {name} has an empty grid {shape}")
        start, per_line = self.pos, len((self.peek() or b"").split())
        values = self._fast_block(n)
        if values is None:
            values = self._careful_block(n, name)
        total = checked_sum(values)
        if total is None:  # the careful path has checked that all lines but the last hold per_line values
            bad = np.flatnonzero(~np.isfinite(values))
            raise self.error(
                f"the {name} holds a non-finite value ({values[bad[0]]}) at grid point {bad[0]}",
                line=self.line_number(start) + int(bad[0]) // per_line,
            )
        self.sums.append(total)
        grid = values.reshape(shape, order="F")  # x fastest, as the file has it
        return np.ascontiguousarray(grid) if self.c_order else grid

    def _fast_block(self, n: int) -> np.ndarray | None:
        """Values of a block written as VASP does (equal lines), or None to look closer."""
        buf, start = self.buf, self.pos
        first = self.peek() or b""
        per_line = len(first.split())
        if per_line == 0:
            return None
        nlines = -(-n // per_line)
        width = len(first) + 1
        if nlines > 1:  # every full line ends at the same column: check the newlines there
            ends = np.frombuffer(buf, dtype=np.uint8)[start + width - 1 : start + width * (nlines - 1) : width]
            if len(ends) != nlines - 1 or (ends != 10).any():
                return None
        last = start + width * (nlines - 1)
        end = buf.find(b"\n", last)
        end = len(buf) if end < 0 else end
        if end - last > width - 1:
            return None
        values = parse_fixed_block(buf, start, end, n, width, per_line, self.threads)
        if values is None:
            values = parse_clean_block(buf, start, end, n)
        if values is not None:
            self.pos = min(end + 1, len(buf))
        return values

    def _careful_block(self, n: int, name: str) -> np.ndarray:
        """Token by token: reads mis-split exponents, names what is wrong."""
        values: list[float] = []
        counts: list[tuple[int, int]] = []  # (values on the line, line start)
        while len(values) < n:
            text = self.peek()
            if text is None:
                raise self.error(f"the file ends after {len(values)} of the {n} values of the {name} (truncated?)")
            tokens = text.split()
            if tokens and tokens[0][:1].isalpha() and parse_token(tokens[0].decode("latin-1")) is None:
                raise self.error(
                    f"the {name} stops after {len(values)} of its {n} values, at {_show(text)} "
                    "(values missing or the file cut short)"
                )
            values.extend(self._token(t, tokens, self.pos, f"a finite number in the {name}") for t in tokens)
            if len(values) > n:
                raise self.error(f"the {name} has more values than its {n} grid points (a value too many?)")
            if tokens:
                counts.append((len(tokens), self.pos))
            self.advance()
        per_line = counts[0][0]
        for i, (count, line_start) in enumerate(counts):
            if count != per_line and i != len(counts) - 1 or count > per_line:
                raise self.error(
                    f"this line of the {name} holds {count} values, its other lines {per_line} "
                    "(a value missing, extra or garbled)",
                    line_start,
                )
        return np.array(values)

    def _augmentation_block(self, text: bytes, blocks: list[np.ndarray], nsites: int, block_no: int) -> None:
        imaginary = text.lstrip().startswith(_AUG_IMAG)
        fields = text.split()
        if len(fields) < 4 or not fields[-1].isdigit() or not fields[-2].isdigit():
            raise self.error(f"cannot read the augmentation header {_show(text)}")
        ion, n = int(fields[-2]), int(fields[-1])
        expected = len(blocks) if not imaginary else len(blocks) - 1
        if ion != expected + 1 or ion > nsites:
            raise self.error(f"augmentation occupancies for ion {ion} where ion {expected + 1} of {nsites} is due")
        self.advance()
        values = self._plain_occupancies(n)
        if values is None:
            what = f"augmentation occupancies of ion {ion} ({_block_name(block_no - 1)})"
            values = self._careful_occupancies(n, what)
        if imaginary:
            if n != blocks[-1].size:
                raise self.error(f"imaginary part of ion {ion} has {n} values, its real part {blocks[-1].size}")
            blocks[-1] = blocks[-1] + 1j * values
        else:
            blocks.append(values)

    def _plain_occupancies(self, n: int) -> np.ndarray | None:
        """The usual case in one go: ``n`` finite plain numbers on the lines a full first line implies, or None."""
        first = self.peek()
        per_line = len(first.split()) if first is not None else 0
        if per_line == 0:
            return None
        end = self.pos - 1
        for _ in range(-(-n // per_line)):
            end = self.buf.find(b"\n", end + 1)
            if end < 0:
                return None
        values = parse_clean_block(self.buf, self.pos, end, n)
        if values is None:  # a header, a mis-split exponent, garbage or a count off: read line by line
            return None
        if not np.isfinite(values).all():
            return None
        self.pos = end + 1
        return values

    def _careful_occupancies(self, n: int, what: str) -> np.ndarray:
        """Line by line: reads mis-split exponents, names what is missing, extra or unreadable."""
        lines: list[tuple[int, list[bytes]]] = []  # (line start, tokens)
        count = 0
        while count < n:
            line = self.peek()
            tokens = line.split() if line is not None else []
            if line is None or (tokens and tokens[0][:1].isalpha() and parse_token(tokens[0].decode()) is None):
                raise self.error(f"the {what} stop after {count} of {n} values (truncated?)")
            if tokens and _after_short_line(lines) and _widths(tokens) - _widths(t for _, ts in lines for t in ts):
                # a short line ends a block; a line written in another number format after it is the next
                # item of the file (the magnetic moments before a spin block), not the missing values
                raise self.error(f"the {what} stop after {count} of {n} values; the next line, {_show(line)}, "
                                 "is not written like them")
            count += len(tokens)
            if count > n:
                raise self.error(f"the {what} hold more than the {n} values announced")
            lines.append((self.pos, tokens))
            self.advance()
        try:  # the usual case: plain numbers, read in one go
            values = np.array([t for _, tokens in lines for t in tokens], dtype=np.float64)
        except ValueError:
            values = np.full(n, np.nan)
        if not np.isfinite(values).all():  # mis-split exponents, or say what is wrong
            values = np.array(
                [self._token(t, tokens, pos, f"a finite number in the {what}") for pos, tokens in lines for t in tokens]
            )
        return values

    def _check_augmentation(self, augmentation: list[list[np.ndarray]], nsites: int) -> None:
        if not any(augmentation):
            return
        for i, per_site in enumerate(augmentation):
            if len(per_site) != nsites:
                raise self.error(
                    f"the {_block_name(i)} has augmentation occupancies for {len(per_site)} of the {nsites} "
                    "sites (truncated?)"
                )

    def _moments(self, gaps: list[list[float]], nsites: int, nblocks: int) -> np.ndarray | None:
        """One moment per site before each magnetisation block (VASP's MAGMOM), or None.

        The collinear layout is checked against VASP's output (a count other than
        one per site means values have slid). For a non-collinear file the count
        is not verified against VASP, so other counts are dropped, not refused.
        """
        if nblocks == 1 or not any(gaps):
            return None
        if nblocks == 4 and any(len(gap) != nsites for gap in gaps):
            return None
        for i, gap in enumerate(gaps):
            if len(gap) != nsites:
                raise self.error(
                    f"found {len(gap)} numbers before the {_block_name(i + 1)} where VASP writes one moment "
                    f"per site ({nsites})"
                )
        array = np.array(gaps)
        if not np.isfinite(array).all():
            raise self.error("non-finite magnetic moments between the data blocks")
        return array[0] if nblocks == 2 else array.T


def _after_short_line(lines: list[tuple[int, list[bytes]]]) -> bool:
    """Whether the last line read holds fewer values than the widest line before it."""
    counts = [len(tokens) for _, tokens in lines if tokens]
    return len(counts) > 1 and counts[-1] < max(counts[:-1])


def _widths(tokens: Iterable[bytes]) -> set[int]:
    """How many characters the numbers take, sign aside: one writer writes a block in one format."""
    return {len(t.lstrip(b"-")) for t in tokens}


def _numbers(text: bytes) -> list[float] | None:
    values = [parse_token(t.decode("latin-1")) for t in text.split()]
    return None if None in values else values  # type: ignore[return-value]


def _block_name(index: int) -> str:
    return ("total density block", "magnetisation block", "m_y magnetisation block", "m_z magnetisation block")[index]


def _show(text: bytes, limit: int = 60) -> str:
    shown = text.strip().decode("latin-1")
    return repr(shown if len(shown) <= limit else shown[:limit] + "...")
