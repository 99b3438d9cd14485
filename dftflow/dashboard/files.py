"""Which project files the dashboard may serve: regular files inside the project, after resolving links."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

#: Content types by suffix; anything else is sent as plain text (never as HTML or script).
_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
          ".json": "application/json", ".csv": "text/csv; charset=utf-8"}


def inside(root: Path, url_path: str) -> Path | None:
    """The file that ``url_path`` (the part of the URL after ``/files/``, still %-encoded) names in ``root``.

    None unless, after decoding and resolving every symbolic link, it is a regular file within
    ``root`` (itself resolved): ``..``, absolute paths, NUL bytes and links that lead out are refused.
    """
    rel = unquote(url_path)
    if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/"):
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    base = root.resolve()
    try:
        target = base.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None
    if not target.is_relative_to(base) or not target.is_file():
        return None
    return target


def content_type(path: Path) -> str:
    return _TYPES.get(path.suffix.lower(), "text/plain; charset=utf-8")
