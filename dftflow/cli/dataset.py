"""``dftflow harvest`` and ``dftflow dataset``: densities into HDF5, and what a dataset holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dftflow.cli.common import JsonOpt, RichProgress, WorkersOpt, console, print_json
from dftflow.errors import InputError

app = typer.Typer(help="Inspect HDF5 charge-density datasets.", no_args_is_help=True)


def harvest(
    sources: Annotated[list[Path], typer.Argument(help="dftflow project directories or trees of CHGCAR files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory (created if missing).")],
    workers: WorkersOpt = None,
    compression: Annotated[str, typer.Option(help="gzip (smaller) or lzf (faster).")] = "gzip",
    json_: JsonOpt = False,
) -> None:
    """Harvest charge densities into an HDF5 dataset (resumable; bad files are quarantined)."""
    from dftflow.dataset.harvest import from_directory, from_project
    from dftflow.dataset.harvest import harvest as run

    items = []
    for src in sources:
        if not src.exists():
            raise InputError(f"{src}: no such directory")
        items += list(from_project(src.resolve())) if (src / "jobs.sqlite").exists() \
            else list(from_directory(src.resolve()))
    with RichProgress(enabled=not json_) as progress:
        summary = run(items, out.resolve(), workers=workers or 1, progress=progress, compression=compression)
    if json_:
        print_json(summary)
        return
    console.print(f"stored {summary['stored']}, quarantined {summary['quarantined']}, "
                  f"already there {summary['already_stored']} → {out}")


@app.command("info")
def info(dataset: Annotated[Path, typer.Argument(help="Dataset directory.")], json_: JsonOpt = False) -> None:
    """Counts, elements, grid sizes, functionals, size on disk and the quarantine."""
    from dftflow.dataset.harvest import info as run

    if not (dataset / "manifest.sqlite").exists():
        raise InputError(f"{dataset}: not a dftflow dataset (no manifest.sqlite)")
    data = run(dataset)
    if json_:
        print_json(data)
        return
    table = Table("materials", "quarantined", "functionals", "engines", "grid points (median)", "MB on disk",
                  "bytes/point")
    bpp = data["bytes_per_grid_point"]
    table.add_row(str(data["materials"]), str(data["quarantined"]), str(data["functionals"]), str(data["engines"]),
                  str(data["grid_points_median"]), f"{data['bytes_on_disk'] / 1e6:.2f}",
                  f"{bpp:.2f}" if bpp else "")
    console.print(table)
    console.print("elements: " + ", ".join(f"{k} {v}" for k, v in data["elements"].items()))
    for q in data["quarantine"]:
        console.print(f"[yellow]quarantined[/] {q['material_id']}: {q['reason']}")
