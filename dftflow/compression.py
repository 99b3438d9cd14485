"""Undo gzip, bzip2 or xz compression, recognised by the data's magic bytes (not the file name)."""

from __future__ import annotations

import bz2
import gzip
import lzma

_MAGIC = ((b"\x1f\x8b", gzip.decompress), (b"BZh", bz2.decompress), (b"\xfd7zXZ\x00", lzma.decompress))


def decompress(raw: bytes) -> bytes:
    """``raw`` decompressed when it starts with a known magic number, else unchanged."""
    for magic, function in _MAGIC:
        if raw.startswith(magic):
            return function(raw)
    return raw
