"""``dftflow harvest`` and ``dftflow dataset``: densities into HDF5, and what a dataset holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dftflow.cli.common import JsonOpt, RichProgress, WorkersOpt, console, err_console, print_json
from dftflow.errors import InputError

app = typer.Typer(help="Inspect HDF5 charge-density datasets.", no_args_is_help=True)


def harvest(
    sources: Annotated[list[Path], typer.Argument(help="dftflow project directories or trees of CHGCAR files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory (created if missing).")],
    workers: WorkersOpt = None,
    compression: Annotated[str, typer.Option(help="gzip (smaller) or lzf (faster).")] = "gzip",
    threads: Annotated[int, typer.Option(min=1, help="Threads that read each large grid in pieces and deflate "
                                                      "its chunks (cores for one large file).")] = 1,
    functional: Annotated[str | None, typer.Option(
        help="Label every density of a CHGCAR tree with this functional (PBE, PBE+U, HSE06); "
             "needed where no OUTCAR lies beside the CHGCARs.")] = None,
    engine: Annotated[str | None, typer.Option(help="Label every density of a CHGCAR tree with this engine "
                                                    "(vasp, gpaw).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Harvest charge densities into an HDF5 dataset (resumable; bad files are quarantined)."""
    from dftflow.dataset.harvest import from_directory, from_project, is_project, unlabelled
    from dftflow.dataset.harvest import harvest as run

    if engine is not None and engine.lower() not in ("vasp", "gpaw"):
        raise InputError(f"--engine {engine!r}: expected vasp or gpaw")
    labels = {"functional": functional, "engine": engine.lower() if engine else None}
    items = []
    for src in sources:
        if not src.exists():
            raise InputError(f"{src}: no such directory")
        items += list(from_project(src.resolve())) if is_project(src) \
            else list(from_directory(src.resolve(), labels=labels))
    bare = unlabelled(items)
    if bare:
        missing = [k for k in ("functional", "engine") if not labels[k]]
        msg = (f"{len(bare)} of {len(items)} densities have no OUTCAR beside them and no --{' / --'.join(missing)}:"
               f" they will be stored without {' and '.join(missing)}, and `dftflow train` cannot put them in a "
               f"PBE or HSE task. Label the tree, e.g. `dftflow harvest DIR --functional PBE --engine vasp`.")
        err_console.print(f"[yellow]warning:[/] {msg}")
    with RichProgress(enabled=not json_) as progress:
        summary = run(items, out.resolve(), workers=workers or 1, progress=progress, compression=compression,
                      threads=threads)
    summary["unlabelled"] = len(bare)
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


@app.command("split")
def split(
    dataset: Annotated[Path, typer.Argument(help="Dataset directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Split file to write (JSON).")] = Path("split.json"),
    seed: Annotated[int, typer.Option(help="Seed of the random assignment.")] = 0,
    test: Annotated[float, typer.Option(help="Test size per functional: a fraction (< 1) or a count.")] = 0.1,
    val: Annotated[float, typer.Option(help="Validation size per functional: a fraction or a count.")] = 0.05,
    hse_test: Annotated[float | None, typer.Option(help="Test size of the HSE06 densities (default --test).")] = None,
    hse_val: Annotated[float | None, typer.Option(help="Validation size of the HSE06 densities.")] = None,
    cover_elements: Annotated[bool, typer.Option(help="Hold out only crystals whose elements stay in training "
                                                      "(while the sizes allow).")] = True,
    workers: WorkersOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Split into train/validation/test for the ECD tasks (pbe-id, hse-id, pbe-to-hse, pbe+hse-tuning).

    Densities of the same crystal (any functional, and duplicates by
    StructureMatcher) always land in the same role, so no task tests on a
    structure it trained on.
    """
    import json

    from dftflow.dataset.split import default_sizes, split_dataset

    data = split_dataset(dataset, seed=seed, test=test, val=val, sizes=default_sizes(hse_test, hse_val),
                         workers=workers or 1, cover_elements=cover_elements)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    summary = {"out": str(out), "groups": data["groups"], "sets": {k: len(v) for k, v in data["sets"].items()},
               "tasks": data["tasks"], "uncovered": data["uncovered"]}
    if json_:
        print_json(summary)
        return
    table = Table("set", "densities")
    for name, members in data["sets"].items():
        table.add_row(name, str(len(members)))
    console.print(table)
    for name, missing in data["uncovered"].items():
        console.print(f"[yellow]{name}[/] has elements no training density has: {', '.join(missing)}")
    console.print(f"{data['groups']['count']} structure groups "
                  f"({data['groups']['with_duplicates']} with duplicates); tasks: {', '.join(data['tasks'])}")
    console.print(f"→ {out}")


@app.command("export")
def export(
    dataset: Annotated[Path, typer.Argument(help="Dataset directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write.")],
    format_: Annotated[str, typer.Option("--format", help="Export format (charge3net).")] = "charge3net",
    split_file: Annotated[Path | None, typer.Option("--split", help="Split file from `dataset split`.")] = None,
    task: Annotated[str | None, typer.Option(help="Task of the split to export (e.g. pbe-id).")] = None,
    spin: Annotated[bool, typer.Option(help="Stack the magnetisation density as a second channel.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Export grids and structures for other codes (ChargE3Net's filelist/.npy/_atoms.pkl layout)."""
    from dftflow.dataset.export import export_charge3net
    from dftflow.dataset.split import load_split

    if format_ != "charge3net":
        raise InputError(f"--format: unknown export format {format_!r} (known: charge3net)")
    split_data = load_split(split_file) if split_file is not None else None
    with RichProgress(enabled=not json_) as progress:
        summary = export_charge3net(dataset, out, split=split_data, task=task, spin=spin, progress=progress)
    if json_:
        print_json(summary)
        return
    console.print(f"exported {summary['materials']} materials ({summary['written']} written, "
                  f"{summary['kept']} already there) → {out}: {', '.join(summary['files'])}")
