"""``dftflow nscf-eval``: ground-state properties from one non-self-consistent step on a predicted density."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dftflow.cli.accel import _overrides, evaluation_materials
from dftflow.cli.common import JsonOpt, RichProgress, WorkersOpt, console, print_json
from dftflow.cli.models import ModelOpt


def nscf_eval(
    materials: Annotated[list[Path] | None, typer.Argument(help="Structure files (POSCAR, CIF, ...).")] = None,
    model: ModelOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Evaluation directory (resumable).")] = Path("nscf-eval"),
    dataset: Annotated[Path | None, typer.Option(help="Take materials from this dataset ...")] = None,
    split: Annotated[Path | None, typer.Option(help="... with this split file ...")] = None,
    task: Annotated[str, typer.Option(help="... task ...")] = "pbe-id",
    subset: Annotated[str, typer.Option(help="... and subset (train, val, test).")] = "test",
    start: Annotated[str, typer.Option(help="Comma-separated densities to hold fixed: ml (the prediction), "
                                            "oracle (the converged density), default (GPAW's atoms).")] = "ml",
    inputset: Annotated[str, typer.Option(help="GPAW input set of the SCF and every step.")] = "gpaw_pbe_static",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Input-set override KEY=VALUE (repeatable).")] = None,
    occupancies: Annotated[str, typer.Option(help="Density matrices of a total-density model's start: predicted, "
                                                  "atomic, or auto (predicted when the model has an occupancy "
                                                  "head). Correction models bring their own.")] = "auto",
    workers: WorkersOpt = None,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Write the PNG figures.")] = True,
    experimental: Annotated[bool, typer.Option("--experimental", help="Put the band gaps next to experimental "
                                               "ones (a bundled table with sources, matched by formula and "
                                               "space group).")] = False,
    json_: JsonOpt = False,
) -> None:
    """Compare properties of one non-self-consistent step on a fixed density with the SCF reference."""
    from dftflow.build import _ticker
    from dftflow.models import resolve_model
    from dftflow.nscf.run import nscf_eval as run

    starts = tuple(s.strip() for s in start.split(",") if s.strip())
    checkpoint = resolve_model(model) if "ml" in starts else None
    items = evaluation_materials(materials, dataset, split, task, subset)
    with RichProgress(enabled=not json_) as progress:
        report = run(out.resolve(), items, model=checkpoint, starts=starts, inputset=inputset,
                     overrides=_overrides(set_ or []), occupancies=occupancies, workers=workers or 1,
                     figures=figures, experimental=experimental, on_tick=_ticker(progress))
    if json_:
        print_json(report)
        return
    console.print(nscf_table(report))
    if "experimental" in report:
        console.print(experimental_table(report))
    for row in report["materials"]:
        if row.get("fallback"):
            console.print(f"[yellow]{row['uid']}[/]: {row['fallback']}")
    for problem in report["problems"]:
        console.print(f"[red]{problem['uid']} {problem['job']}: {problem['state']}[/] {problem['error'] or ''}")
    for fig in report["figures"]:
        console.print(f"figure: {fig}")
    console.print(f"report: {out / 'nscf.json'}, {out / 'nscf.csv'}")


def nscf_table(report: dict):
    """MAE and maximum over materials per start and property, in meV (per atom, per Å)."""
    from rich.table import Table

    table = Table(title="|NSCF − SCF| over materials: MAE / max (meV, meV/atom, meV/Å)")
    table.add_column("start")
    props = list(report["units"])
    for prop in props:
        table.add_column(prop, justify="right")
    for start, block in report["summary"].items():
        cells = [start]
        for prop in props:
            stats = block[prop]
            cells.append("-" if not stats["n"] else f"{1e3 * stats['mae']:.3g} / {1e3 * stats['max']:.3g}")
        table.add_row(*cells)
    return table


def experimental_table(report: dict):
    """Per material: the experimental gap, the SCF's and each start's (eV); the MAE row below."""
    from rich.table import Table

    block = report["experimental"]
    sources = list(block["summary"])
    table = Table(title=f"fundamental band gap vs experiment (eV): {block['matched']} matched")
    for column in ("material", "experiment", *sources, "source"):
        table.add_column(column, justify="left" if column in ("material", "source") else "right")
    for row in report["materials"]:
        if "gap_exp" not in row:
            continue
        cells = [f"{row['gap_exp'] + row[f'gap_vs_exp_{s}']:.2f}" if f"gap_vs_exp_{s}" in row else "-"
                 for s in sources]
        table.add_row(row["uid"], f"{row['gap_exp']:.2f}", *cells, f"{row['gap_exp_source']} ({row['gap_exp_T']:g} K)")
    table.add_row("MAE", "", *[f"{block['summary'][s]['mae']:.2f}" if block["summary"][s]["n"] else "-"
                               for s in sources], "")
    for uid, reason in block["unmatched"].items():
        table.add_row(uid, "-", *["" for _ in sources], reason)
    return table
