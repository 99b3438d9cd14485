"""Undo gzip, bzip2 or xz compression, recognised by the data's magic bytes (not the file name)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib

_MAGIC = ((b"\x1f\x8b", gzip.decompress), (b"BZh", bz2.decompress), (b"\xfd7zXZ\x00", lzma.decompress))


def decompress(raw: bytes) -> bytes:
    """``raw`` decompressed when it starts with a known magic number, else unchanged."""
    for magic, function in _MAGIC:
        if raw.startswith(magic):
            return function(raw)
    return raw


def read_text(path) -> str:
    """A text file's content, decompressed when compressed; undecodable bytes become U+FFFD.

    A missing file or a damaged archive (a truncated or bit-flipped ``.gz``, say) raises
    :class:`~dftflow.errors.InputError` naming the file.
    """
    from pathlib import Path

    from dftflow.errors import InputError

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return decompress(raw).decode(errors="replace")
    except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:  # zlib.error: a corrupt deflate stream
        raise InputError(f"{path}: damaged compressed file ({exc})") from None
