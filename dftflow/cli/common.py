"""Shared CLI pieces: option types, output helpers and a rich progress adapter."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()
err_console = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]
ProjectOpt = Annotated[
    Path | None,
    typer.Option("--project", "-p", help="Project directory (default: the recipe's, or ./<name>-project)."),
]
WorkersOpt = Annotated[int | None, typer.Option("--workers", "-w", min=1, help="Worker processes.")]


def read_structure(path: Path) -> Any:
    """A pymatgen Structure from a POSCAR, CIF, ... file; a clear error naming the file otherwise."""
    from pymatgen.core import Structure

    from dftflow.errors import InputError

    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        return Structure.from_file(path)
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types for unreadable files
        raise InputError(f"{path}: cannot read a structure ({exc})") from exc


def structure_name(path: Path) -> str:
    """A name for the structure in ``path``: the file stem, or the directory for POSCAR/CONTCAR."""
    return path.stem if path.stem not in ("POSCAR", "CONTCAR") else path.resolve().parent.name


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


class RichProgress:
    """Adapter from the library's Progress protocol to a rich progress bar on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and err_console.is_terminal
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> RichProgress:
        self._progress = Progress(
            TextColumn("[bold]{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, disable=not self.enabled,
        )
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._progress is not None
        self._progress.__exit__(*exc)

    def start(self, label: str, total: int | None) -> None:
        assert self._progress is not None
        if self._task is not None:
            self._progress.update(self._task, visible=True)
        self._task = self._progress.add_task(label, total=total)

    def advance(self, n: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)
