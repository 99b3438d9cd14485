"""``dftflow build-dataset``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dftflow.cli.common import JsonOpt, ProjectOpt, RichProgress, WorkersOpt, console, print_json
from dftflow.cli.tables import dft_table, funnel_table
from dftflow.config.recipe import STAGES, load_recipe
from dftflow.project import Project


def build_dataset(
    recipe: Annotated[str, typer.Argument(help="Recipe: a bundled name (see `dftflow recipes list`) or a YAML path.")],
    until: Annotated[str, typer.Option("--until", help=f"Last stage to run: {', '.join(STAGES)}.")] = STAGES[-1],
    project: ProjectOpt = None,
    workers: WorkersOpt = None,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Write PNG figures.")] = True,
    json_: JsonOpt = False,
) -> None:
    """Build a dataset from a recipe: import, screen, dedup, select, then DFT (resumable)."""
    from dftflow.build import build_dataset as run

    loaded = load_recipe(recipe)
    root = Path(project).resolve() if project else loaded.project_dir()
    with RichProgress(enabled=not json_) as progress:
        summary = run(loaded, Project(root), until=until, workers=workers,  # type: ignore[arg-type]
                      progress=progress, figures=figures)
    if json_:
        print_json(summary)
        return
    console.print(funnel_table(summary["funnel"], title=f"{loaded.name}: screening funnel"))
    for name, info in summary["stages"].get("select", {}).items():
        if isinstance(info, dict) and "size" in info:
            console.print(f"selection [bold]{name}[/]: {info['size']} of {info['eligible']} eligible; "
                          f"element-distribution distance to the pool {info['tv_distance']:.3f} "
                          f"(random subset: {info['tv_distance_random']:.3f})")
    dft = summary["stages"].get("dft")
    if dft:
        if len(dft["results"]) <= 100:  # a campaign's table is `dftflow status`'s job
            console.print(dft_table(dft["results"], title=f"{loaded.name}: DFT ({loaded.dft.engine}, local)"))
        c = dft["cost"]
        if c["completed"]:
            console.print(f"cost per structure: median {c['median_s']} s, mean {c['mean_s']} s, slowest "
                          f"{c['max_s']} s; {c['core_hours']} core-hours in all (failed runs included)")
        counts = dft["jobs"]
        console.print(f"jobs: {counts['COMPLETED']} completed, {counts['FAILED']} failed, {counts['LOST']} lost"
                      + ("; `dftflow status` shows why, `dftflow retry` runs them again"
                         if counts["FAILED"] or counts["LOST"] else ""))
    harvested = summary["stages"].get("harvest")
    if harvested:
        console.print(f"dataset: {harvested['stored']} new densities stored, {harvested['already_stored']} already "
                      f"there, {harvested['quarantined']} quarantined → {harvested['dataset']} "
                      "(`dftflow dataset info` describes it)")
    trained = summary["stages"].get("train")
    if trained:
        eps = trained.get("best_val_eps_mae")
        console.print(f"model: {trained['model']} ({trained.get('steps', '?')} steps"
                      + (f", best validation ε_mae {eps:.2%}" if isinstance(eps, float) and eps < 1e9 else "") + ")")
    accel = summary["stages"].get("accel")
    if accel:
        from dftflow.cli.accel import accel_table

        console.print(accel_table({"settings": {"arms": accel["arms"]}, "materials": accel["materials"]}))
        for problem in accel["problems"]:
            console.print(f"[red]{problem['uid']} {problem['job']}: {problem['state']}[/] {problem['error'] or ''}")
        rows = [r for r in accel["materials"] if r.get("steps_ml") is not None]
        if rows:
            default, ml = sum(r["steps_default"] for r in rows), sum(r["steps_ml"] for r in rows)
            console.print(f"model {accel['model']}: {ml} SCF steps from the ML start against {default} from the "
                          f"default guess on {len(rows)} held-back material(s) ({1 - ml / default:+.0%} saved)")
        console.print(f"accel-eval report: {accel['report']}")
    for fig in summary.get("figures", []):
        console.print(f"figure: {fig}")
    console.print(f"project: {root}")
