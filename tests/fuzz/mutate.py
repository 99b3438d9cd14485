"""Seeded mutations of a file's bytes, and the tally of what the readers made of them.

Every mutation takes the bytes and a :class:`random.Random`, so a run is
reproducible from its seed; each returns the mutated bytes and a short label
that says what was done (it ends up in failure messages).
"""

from __future__ import annotations

import gzip
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

# A number as the text formats here write it: 1, -0.5, .25, 0.123E+01, 0.1D-02, 2.73.
NUMBER = re.compile(rb"(?<![\w.+-])[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[EeDd][+-]?\d+)?(?![\w.])")
NONFINITE = (b"NaN", b"nan", b"Inf", b"-inf", b"Infinity", b"1e999", b"-1.0E+999")
EMPTY = (b"", b"\n", b"   \n\n", b"\t\n \n")


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Cut at a random offset (never the full length)."""
    cut = rng.randrange(len(data))
    return data[:cut], f"truncated at byte {cut} of {len(data)}"


def truncate_line(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Cut at the start of a random line, as a writer killed between two lines leaves a file."""
    starts = [0] + [m.end() for m in re.finditer(rb"\n", data[:-1])]
    cut = rng.choice(starts)
    return data[:cut], f"truncated at the line starting at byte {cut} of {len(data)}"


def flip(data: bytes, rng: random.Random, lo: int = 0, hi: int | None = None) -> tuple[bytes, str]:
    """Flip one random bit of one byte in ``data[lo:hi]``."""
    out = bytearray(data)
    at = rng.randrange(lo, len(data) if hi is None else hi)
    bit = rng.randrange(8)
    out[at] ^= 1 << bit
    return bytes(out), f"bit {bit} of byte {at} flipped ({data[at:at + 1]!r} -> {bytes(out[at:at + 1])!r})"


def number_spans(data: bytes, lo: int = 0, hi: int | None = None) -> list[tuple[int, int]]:
    """(start, end) of every number in ``data[lo:hi]``."""
    return [m.span() for m in NUMBER.finditer(data, lo, len(data) if hi is None else hi)]


def nonfinite(data: bytes, rng: random.Random, spans: list[tuple[int, int]]) -> tuple[bytes, str]:
    """Replace one of the numbers at ``spans`` by a NaN or an infinity."""
    start, end = rng.choice(spans)
    token = rng.choice(NONFINITE)
    return data[:start] + token + data[end:], f"{data[start:end]!r} at byte {start} -> {token!r}"


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def line_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every line, the end excluding its newline."""
    spans, start = [], 0
    for m in re.finditer(rb"\n", data):
        spans.append((start, m.start()))
        start = m.end()
    if start < len(data):
        spans.append((start, len(data)))
    return spans


def replace_span(data: bytes, span: tuple[int, int], new: bytes) -> bytes:
    return data[: span[0]] + new + data[span[1]:]


@dataclass
class Tally:
    """Cases tried per kind and what became of them; problems are the cases that broke the contract."""

    outcomes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    problems: list[str] = field(default_factory=list)

    def add(self, kind: str, outcome: str) -> None:
        self.outcomes[kind][outcome] += 1

    def cases(self, kind: str | None = None) -> int:
        kinds = [kind] if kind is not None else list(self.outcomes)
        return sum(sum(self.outcomes[k].values()) for k in kinds)

    def table(self) -> str:
        lines = [f"{'kind':<12}{'cases':>7}  outcomes"]
        for kind, counts in sorted(self.outcomes.items()):
            detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            lines.append(f"{kind:<12}{sum(counts.values()):>7}  {detail}")
        lines.append(f"{'total':<12}{self.cases():>7}")
        return "\n".join(lines)
