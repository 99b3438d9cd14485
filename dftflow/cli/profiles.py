"""``dftflow profiles``: cluster profiles (where and how jobs run)."""

from __future__ import annotations

from typing import Annotated

import typer
import yaml
from rich.syntax import Syntax
from rich.table import Table

from dftflow.cli.common import JsonOpt, console, print_json
from dftflow.config.profile import load_profile
from dftflow.resources import bundled

app = typer.Typer(help="List and show cluster profiles.", no_args_is_help=True)


@app.command("list")
def list_profiles(json_: JsonOpt = False) -> None:
    """List the bundled cluster profiles."""
    rows = []
    for name, path in bundled("cluster_profiles").items():
        profile = load_profile(path)
        rows.append({"name": name, "scheduler": profile.scheduler, "description": profile.description,
                     "path": str(path)})
    if json_:
        print_json(rows)
        return
    table = Table("name", "scheduler", "description")
    for r in rows:
        table.add_row(r["name"], r["scheduler"], r["description"])
    console.print(table)


@app.command("show")
def show_profile(
    profile: Annotated[str, typer.Argument(help="Bundled profile name or path to a YAML file.")],
    json_: JsonOpt = False,
) -> None:
    """Show a cluster profile with every default filled in (validated)."""
    data = load_profile(profile).model_dump(mode="json")
    if json_:
        print_json(data)
        return
    console.print(Syntax(yaml.safe_dump(data, sort_keys=False), "yaml"))
