"""``dftflow accel-eval``: how many SCF steps a predicted starting density saves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dftflow.accel import DEFAULT_ARMS
from dftflow.cli.common import JsonOpt, RichProgress, WorkersOpt, console, print_json, read_structure, structure_name
from dftflow.cli.models import ModelOpt
from dftflow.errors import InputError


def _overrides(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r}: expected KEY=VALUE (e.g. ecut=300)")
        out[key] = yaml.safe_load(value)
    return out


def evaluation_materials(materials: list[Path] | None, dataset: Path | None, split: Path | None, task: str,
                         subset: str) -> list[tuple[str, Any]]:
    """The (name, structure) pairs of an evaluation: structure files, then a dataset split's subset."""
    from dftflow.accel.run import dataset_materials

    items = [(structure_name(path), read_structure(path)) for path in materials or []]
    if dataset is not None:
        if split is None:
            raise InputError("--dataset needs --split (from `dftflow dataset split`)")
        items += dataset_materials(dataset, split, task, subset)
    if not items:
        raise InputError("no materials: give structure files or --dataset/--split")
    return items


def accel_eval(
    materials: Annotated[list[Path] | None, typer.Argument(help="Structure files (POSCAR, CIF, ...).")] = None,
    model: ModelOpt = None,
    engine: Annotated[str, typer.Option(help="gpaw (local) or vasp (cluster profile).")] = "gpaw",
    out: Annotated[Path, typer.Option("--out", "-o", help="Evaluation directory (resumable).")] = Path("accel-eval"),
    dataset: Annotated[Path | None, typer.Option(help="Take materials from this dataset ...")] = None,
    split: Annotated[Path | None, typer.Option(help="... with this split file ...")] = None,
    task: Annotated[str, typer.Option(help="... task ...")] = "pbe-id",
    subset: Annotated[str, typer.Option(help="... and subset (train, val, test).")] = "test",
    arms: Annotated[str, typer.Option(help="Comma-separated arms: default, ml, ml-atomic-occ, ml-true-occ, "
                                           "oracle.")] = ",".join(DEFAULT_ARMS),
    inputset: Annotated[str | None, typer.Option(help="Input set of every arm (default: gpaw_pbe_static or "
                                                      "ecd-pbe-static).")] = None,
    profile: Annotated[str | None, typer.Option(help="Cluster profile for --engine vasp (SLURM).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Input-set override KEY=VALUE (repeatable); "
                                                                 "use the dataset's settings.")] = None,
    nfixed: Annotated[int | None, typer.Option(min=0, help="Fixed-density steps first, the same in every arm "
                                                            "(default: 3 with GPAW, NELMDL = -5 with VASP).")] = None,
    occupancies: Annotated[str, typer.Option(help="Occupancy source of the deployable ML arm: predicted (the "
                                                  "model's occupancy head), predicted-refresh, refresh, atomic, "
                                                  "or auto (refresh, the best measured so far).")] = "auto",
    correction_scale: Annotated[float | None, typer.Option(
        min=0, max=2, help="Correction models: the factor on the predicted change to GPAW's atomic guess "
                           "(default: the model's calibrated one); arms ml@0.5 etc. compare factors.")] = None,
    workers: WorkersOpt = None,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Write PNG figures.")] = True,
    dry_run: Annotated[bool, typer.Option(help="VASP: write the launch scripts, do not sbatch.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Restart SCF runs from predicted densities and compare their steps with the default guess."""
    from dftflow.accel.run import accel_eval as run
    from dftflow.build import _ticker
    from dftflow.models import resolve_model

    checkpoint = resolve_model(model)
    items = evaluation_materials(materials, dataset, split, task, subset)
    arm_list = tuple(a.strip() for a in arms.split(",") if a.strip())
    with RichProgress(enabled=not json_) as progress:
        report = run(out.resolve(), items, model=checkpoint, engine=engine, arms=arm_list, inputset=inputset,
                     overrides=_overrides(set_ or []), nfixed=nfixed, occupancies=occupancies,
                     workers=workers or 1, figures=figures, profile=profile, dry_run=dry_run,
                     correction_scale=correction_scale, on_tick=_ticker(progress))
    if json_:
        print_json(report)
        return
    console.print(accel_table(report))
    summary = report["summary"]["all"]
    for arm in report["settings"]["arms"]:
        stats = summary.get(f"ratio_{arm.replace('-', '_')}")
        if stats and stats["n"]:
            console.print(f"{arm:>14}: steps/steps(default) {stats['mean']:.3f} ± {stats['std']:.3f} "
                          f"(median {stats['median']:.3f}, {stats['n']} materials)")
    inference = summary.get("inference_per_scf_iteration")
    if inference and inference["n"]:
        console.print(f"inference: {inference['mean']:.2f} SCF iterations' time per material (mean)")
    for row in report["materials"]:
        if row.get("fallback"):
            console.print(f"[yellow]{row['uid']}[/]: {row['fallback']}")
    for problem in report["problems"]:
        console.print(f"[red]{problem['uid']} {problem['job']}: {problem['state']}[/] {problem['error'] or ''}")
    for fig in report.get("figures", []):
        console.print(f"figure: {fig}")
    pending = sum(v for k, v in report["jobs"].items() if k not in ("COMPLETED", "FAILED", "LOST"))
    if pending:
        console.print(f"{pending} job(s) still queued or running"
                      + (f"; submitted {len(report['launched'])} allocation(s)" if report["launched"] else "")
                      + "; run the same command again to collect them")
    console.print(f"report: {out / 'accel.json'}, {out / 'accel.csv'}")


def accel_table(report: dict):
    from rich.table import Table

    arms = report["settings"]["arms"]
    table = Table(title="SCF steps per arm (all electronic steps; ratio to the default guess)")
    table.add_column("material")
    for arm in arms:
        table.add_column(arm, justify="right")
    table.add_column("metal")
    table.add_column("magnetic")
    for row in report["materials"]:
        cells = [row["uid"]]
        for arm in arms:
            key = arm.replace("-", "_")
            steps = row.get(f"steps_{key}")
            ratio = row.get(f"ratio_{key}")
            cells.append("-" if steps is None else (f"{steps}" if ratio is None else f"{steps} ({ratio:.2f})"))
        cells += ["yes" if row.get("metal") else "no", "yes" if row.get("magnetic") else "no"]
        table.add_row(*cells)
    return table
