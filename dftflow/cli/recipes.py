"""``dftflow recipes``: the build-dataset recipes that ship with dftflow, or a user's own."""

from __future__ import annotations

from typing import Annotated

import typer
import yaml
from rich.syntax import Syntax
from rich.table import Table

from dftflow.cli.common import JsonOpt, console, print_json
from dftflow.config.recipe import load_recipe
from dftflow.resources import bundled

app = typer.Typer(help="List and show build-dataset recipes.", no_args_is_help=True)


@app.command("list")
def list_recipes(json_: JsonOpt = False) -> None:
    """List the bundled recipes."""
    rows = []
    for name, path in bundled("workflows").items():
        recipe = load_recipe(path)
        rows.append({"name": name, "path": str(path), "description": recipe.description,
                     "sources": len(recipe.sources)})
    if json_:
        print_json(rows)
        return
    table = Table("name", "description", "path")
    for r in rows:
        table.add_row(r["name"], r["description"], r["path"])
    console.print(table)


@app.command("show")
def show_recipe(
    recipe: Annotated[str, typer.Argument(help="Bundled recipe name or path to a YAML file.")],
    json_: JsonOpt = False,
) -> None:
    """Show a recipe with every default filled in (validated)."""
    loaded = load_recipe(recipe)
    data = loaded.model_dump(mode="json", by_alias=True)
    if json_:
        print_json(data)
        return
    console.print(Syntax(yaml.safe_dump(data, sort_keys=False), "yaml"))
