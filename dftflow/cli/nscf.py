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
                                            "oracle (the converged density), default (GPAW's atoms; not with "
                                            "VASP).")] = "ml",
    inputset: Annotated[str, typer.Option(help="Input set of the SCF and every step; it chooses the engine: a GPAW "
                                               "set, or a VASP static (ecd-pbe-static, mp-static: ICHARG = 11 "
                                               "steps, gaps and band energy only). Hybrid (HSE06) sets are "
                                               "refused.")] = "gpaw_pbe_static",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Input-set override KEY=VALUE (repeatable); "
                                                                 "INCAR tags with VASP.")] = None,
    occupancies: Annotated[str, typer.Option(help="GPAW: density matrices of a total-density model's start: "
                                                  "predicted, atomic, or auto (predicted when the model has an "
                                                  "occupancy head). Correction models bring their own. VASP: auto "
                                                  "only (the VASP occupancy head's blocks, else none).")] = "auto",
    profile: Annotated[str | None, typer.Option(help="VASP: cluster profile (SLURM) to run in; without it VASP "
                                                     "runs on local workers.")] = None,
    workers: WorkersOpt = None,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Write the PNG figures.")] = True,
    experimental: Annotated[bool, typer.Option("--experimental", help="Put the band gaps next to experimental "
                                               "ones (a bundled table with sources, matched by formula and "
                                               "space group).")] = False,
    dry_run: Annotated[bool, typer.Option(help="With --profile: write the launch scripts, do not sbatch.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Compare properties of one non-self-consistent step on a fixed density with the SCF reference.

    With VASP the step is ICHARG = 11 from a CHGCAR; VASP gives no meaningful
    total energy or forces at a fixed density, so only gaps and band energy are
    compared (docs/nscf.md).
    """
    from dftflow.build import _ticker
    from dftflow.models import resolve_model
    from dftflow.nscf.run import nscf_eval as run

    starts = tuple(s.strip() for s in start.split(",") if s.strip())
    checkpoint = resolve_model(model) if "ml" in starts else None
    items = evaluation_materials(materials, dataset, split, task, subset)
    with RichProgress(enabled=not json_) as progress:
        report = run(out.resolve(), items, model=checkpoint, starts=starts, inputset=inputset,
                     overrides=_overrides(set_ or []), occupancies=occupancies, workers=workers or 1,
                     figures=figures, experimental=experimental, profile=profile, dry_run=dry_run,
                     on_tick=_ticker(progress))
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
    for start, props in report.get("not_available", {}).items():
        for reason in sorted(set(props.values())):
            names = ", ".join(p for p, r in props.items() if r == reason)
            console.print(f"[dim]{start}: {names} not available: {reason}[/]")
    for fig in report["figures"]:
        console.print(f"figure: {fig}")
    pending = sum(v for k, v in report["jobs"].items() if k not in ("COMPLETED", "FAILED", "LOST"))
    if pending:
        console.print(f"{pending} job(s) still queued or running"
                      + (f"; submitted {len(report['launched'])} allocation(s)" if report.get("launched") else "")
                      + "; run the same command again to collect them")
    console.print(f"report: {out / 'nscf.json'}, {out / 'nscf.csv'}")


def nscf_table(report: dict):
    """MAE and maximum over materials per start and property, in meV (per atom, per Å)."""
    from rich.table import Table

    from dftflow.nscf.report import OPTIONAL

    table = Table(title="|NSCF − SCF| over materials: MAE / max (meV, meV/atom, meV/Å; magmom μB/cell)")
    table.add_column("start")
    props = [p for p in report["units"]
             if p not in OPTIONAL or any(block[p]["n"] for block in report["summary"].values())]
    for prop in props:
        table.add_column(prop, justify="right")
    for start, block in report["summary"].items():
        cells = [start]
        for prop in props:
            stats = block[prop]
            scale = 1e3 if report["units"][prop].startswith("eV") else 1.0  # eV → meV; the moment stays in μB
            if stats["n"]:
                cells.append(f"{scale * stats['mae']:.3g} / {scale * stats['max']:.3g}")
            else:
                cells.append("n/a" if stats.get("not_available") else "-")
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
