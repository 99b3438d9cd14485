"""``dftflow candidates``: the single steps of the structure pipeline, and catalog queries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dftflow.build import project_recipe, save_recipe
from dftflow.cli.common import JsonOpt, RichProgress, WorkersOpt, console, print_json
from dftflow.cli.tables import funnel_table
from dftflow.config.recipe import Recipe, SourceSpec, load_recipe
from dftflow.errors import InputError
from dftflow.project import Project
from dftflow.screening import stages as st

app = typer.Typer(help="Import, screen, deduplicate and select candidate structures step by step.",
                  no_args_is_help=True)

ProjectArg = Annotated[Path, typer.Option("--project", "-p", help="Project directory.")]
RecipeOpt = Annotated[str | None, typer.Option("--recipe", "-r",
                                               help="Recipe whose settings to use (default: the project's).")]


def _recipe(project: Project, recipe: str | None) -> Recipe:
    if recipe is not None:
        return load_recipe(recipe)
    stored = project_recipe(project)
    if stored is None:
        raise InputError(f"{project.root}: no recipe stored in this project; pass --recipe")
    return stored


@app.command("import")
def import_(
    sources: Annotated[list[Path], typer.Argument(help="CIF files, directories, archives, .pt or extxyz files.")],
    project: ProjectArg = Path("dftflow-project"),
    type_: Annotated[str, typer.Option("--type", "-t", help="cif, diffcsp or mattergen.")] = "cif",
    label: Annotated[str | None, typer.Option(
        "--label", help="Source name recorded as provenance (icsd, cod, ...).")] = None,
    workers: WorkersOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Import structures into a project's catalog (files already imported are skipped)."""
    specs = [SourceSpec(type=type_, path=str(s.resolve()), label=label) for s in sources]  # type: ignore[arg-type]
    _import(project, specs, workers, json_)


def _import(project: Path, specs: list[SourceSpec], workers: int | None, json_: bool) -> None:
    proj = Project(project.resolve())
    base = project_recipe(proj)
    recipe = Recipe(name=proj.root.name, sources=specs,
                    **({} if base is None else {"screening": base.screening, "selection": base.selection}))
    with proj.locked("candidates import"), RichProgress(enabled=not json_) as progress:
        if base is None:
            save_recipe(proj, recipe)
        catalog = proj.catalog()
        summary = st.run_import(catalog, recipe, workers=workers or recipe.workers, progress=progress)
    if json_:
        print_json(summary)
    else:
        console.print(f"imported {summary['imported']} structures, {summary['failed']} failed "
                      f"({summary['skipped_tasks']} files already in the catalog)")


@app.command("generate")
def generate(
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write one CIF per candidate here (files already there are kept).")] = None,
    prototype: Annotated[list[str] | None, typer.Option(
        "--prototype", help="Prototype name, repeatable (default: all; see dftflow.sources.prototypes).")] = None,
    elements: Annotated[str | None, typer.Option(
        "--elements", help="Comma-separated allowed elements (default: those with a GPAW setup).")] = None,
    max_atoms: Annotated[int, typer.Option("--max-atoms", min=1, help="Largest primitive cell.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the order (any prefix is diverse).")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="The first N candidates.")] = None,
    per_prototype: Annotated[int | None, typer.Option(
        "--per-prototype", min=1, help="At most N decorations of each prototype.")] = None,
    project: Annotated[Path | None, typer.Option(
        "--project", "-p", help="Import the candidates into this project's catalog.")] = None,
    label: Annotated[str, typer.Option("--label", help="Source name in the uids and provenance.")] = "prototypes",
    workers: WorkersOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Decorate prototype crystals with charge-balanced or all-metal element combinations."""
    from dftflow.config.recipe import PrototypeSettings
    from dftflow.sources import prototypes as pt

    if out is None and project is None:
        raise InputError("candidates generate: give --out DIR, --project DIR or both")
    symbols = None if elements is None else [e.strip() for e in elements.split(",") if e.strip()]
    pt.select_prototypes(prototype, None), pt.select_elements(symbols)  # a clear error for unknown names
    settings = PrototypeSettings(prototypes=prototype or None, elements=symbols, max_atoms=max_atoms, seed=seed,
                                 limit=limit, per_prototype=per_prototype)
    if out is not None:
        summary = pt.write_cifs(out, pt.generate(**settings.model_dump()))
        if json_:
            print_json(summary)
        else:
            table = Table("prototype", "candidates")
            for name, n in sorted(summary["per_prototype"].items()):
                table.add_row(name, str(n))
            console.print(table)
            console.print(f"{summary['generated']} candidates over {len(summary['elements'])} elements: "
                          f"{summary['written']} CIFs written, {summary['kept']} already in {out}")
    if project is not None:
        _import(project, [SourceSpec(type="prototypes", label=label, generate=settings)], workers,
                json_ and out is None)


def _step(stage: str, project: Path, recipe: str | None, workers: int | None, json_: bool) -> None:
    proj = Project(project.resolve())
    rec = _recipe(proj, recipe)
    with proj.locked(f"candidates {stage}"), RichProgress(enabled=not json_) as progress:
        catalog = proj.catalog()
        w = workers or rec.workers
        if stage == "screen":
            summary = st.run_screen(catalog, rec.screening, workers=w, progress=progress)
        elif stage == "dedup":
            summary = st.run_dedup(catalog, rec.screening, workers=w, progress=progress)
        else:
            summary = st.run_select(catalog, rec.selection)
    if json_:
        print_json(summary)
    else:
        console.print_json(json.dumps(summary, default=str))


@app.command("screen")
def screen(project: ProjectArg = Path("dftflow-project"), recipe: RecipeOpt = None,
           workers: WorkersOpt = None, json_: JsonOpt = False) -> None:
    """Run the screening filters on imported structures (finished ones are skipped)."""
    _step("screen", project, recipe, workers, json_)


@app.command("dedup")
def dedup(project: ProjectArg = Path("dftflow-project"), recipe: RecipeOpt = None,
          workers: WorkersOpt = None, json_: JsonOpt = False) -> None:
    """Group screened structures into duplicates and keep one of each."""
    _step("dedup", project, recipe, workers, json_)


@app.command("select")
def select(project: ProjectArg = Path("dftflow-project"), recipe: RecipeOpt = None,
           json_: JsonOpt = False) -> None:
    """Choose the recipe's subsets (e.g. the HSE06 subset) from the unique structures."""
    _step("select", project, recipe, None, json_)


@app.command("funnel")
def funnel(project: ProjectArg = Path("dftflow-project"),
           figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Write PNG figures.")] = True,
           json_: JsonOpt = False) -> None:
    """How many structures entered and left each step, with the top reasons."""
    proj = Project(project.resolve())
    catalog = proj.catalog()
    rows = st.funnel(catalog)
    paths = []
    if figures:
        from dftflow.screening.report import write_figures

        paths = [str(p) for p in write_figures(catalog, proj.figures_dir)]
    if json_:
        print_json({"funnel": rows, "figures": paths})
        return
    console.print(funnel_table(rows))
    for p in paths:
        console.print(f"figure: {p}")


@app.command("list")
def list_(
    project: ProjectArg = Path("dftflow-project"),
    status: Annotated[str, typer.Option(
        "--status", help="all, ok, failed (import), kept (passed everything), rejected, or selection:NAME.")] = "all",
    limit: Annotated[int, typer.Option("--limit", help="At most this many rows (0: all).")] = 50,
    json_: JsonOpt = False,
) -> None:
    """List catalog entries with their formula and where they stopped in the funnel."""
    catalog = Project(project.resolve()).catalog()
    rows = st.list_entries(catalog, status)
    if limit:
        rows = rows[:limit]
    if json_:
        print_json(rows)
        return
    table = Table("uid", "formula", "sites", "state", "reason")
    for r in rows:
        table.add_row(r["uid"], r["formula"] or "", str(r["nsites"] or ""), r["state"], r["reason"] or "")
    console.print(table)


@app.command("show")
def show(uid: Annotated[str, typer.Argument(help="Catalog uid.")],
         project: ProjectArg = Path("dftflow-project"), json_: JsonOpt = False) -> None:
    """Everything recorded for one entry: provenance, structure, every filter outcome."""
    catalog = Project(project.resolve()).catalog()
    info = st.describe(catalog, uid)
    if json_:
        print_json(info)
        return
    console.print_json(json.dumps(info, default=str))
