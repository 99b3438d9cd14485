"""Locate the user-editable YAML folders (recipes, input sets, profiles, model configs).

In a source checkout or an editable install they are the top-level folders of
the repository; a wheel carries copies under ``dftflow/_data``. Every command
also accepts a path to a user's own file, which always wins over a bundled name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from dftflow.errors import ConfigError

Kind = Literal["workflows", "inputsets", "ml", "cluster_profiles"]
KINDS: tuple[Kind, ...] = ("workflows", "inputsets", "ml", "cluster_profiles")

_PACKAGE = Path(__file__).resolve().parent


def data_dir(kind: Kind) -> Path:
    """Return the folder that holds the bundled files of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown resource kind {kind!r}; expected one of {KINDS}")
    for candidate in (_PACKAGE / "_data" / kind, _PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    raise ConfigError(
        f"bundled {kind}/ folder not found (looked in {_PACKAGE / '_data'} and {_PACKAGE.parent}); "
        "reinstall dftflow"
    )


def bundled(kind: Kind) -> dict[str, Path]:
    """Bundled YAML files of ``kind`` by name (file name without ``.yaml``)."""
    return {p.stem: p for p in sorted(data_dir(kind).glob("*.yaml"))}


def resolve(kind: Kind, name_or_path: str | Path) -> Path:
    """Resolve a user's file path or the name of a bundled file to a path.

    An existing path is returned as is; otherwise ``name_or_path`` is looked up
    among the bundled files of ``kind`` (with or without ``.yaml``).
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    available = bundled(kind)
    if str(path) in (name, name + ".yaml", name + ".yml") and name in available:
        return available[name]
    listing = ", ".join(available) or "none"
    raise ConfigError(f"{name_or_path}: no such file, and no bundled {kind} entry of that name "
                      f"(bundled: {listing})")
