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


@app.command("check")
def check_profile(
    profile: Annotated[str, typer.Argument(help="Bundled profile name or path to a YAML file.")],
    launch_dir: Annotated[str, typer.Option(help="Launch directory to show in the script.")]
    = "<project>/launches/<launch-id>",
    json_: JsonOpt = False,
) -> None:
    """Validate a profile and print the batch script a launch would submit."""
    from pathlib import Path

    from dftflow.execution.slurm import job_script

    prof = load_profile(profile)
    problems = []
    if prof.scheduler == "slurm" and "vasp_std" not in prof.commands:
        problems.append("commands.vasp_std is missing: VASP jobs would not know how to start VASP")
    uris = {"store.uri": prof.store.uri if prof.store.type == "mongodb" else None,
            "fireworks.launchpad": prof.fireworks.launchpad if prof.engine == "fireworks" and prof.fireworks else None}
    for key, uri in uris.items():
        if uri and "${" in uri:
            import os
            import re

            missing = [v for v in re.findall(r"\$\{(\w+)\}", uri) if v not in os.environ]
            if missing:
                problems.append(f"{key} uses unset environment variable(s): {', '.join(missing)}")
    if prof.scheduler != "slurm":
        script = None
    elif prof.engine == "fireworks":  # FireWorks' CommonAdapter writes the allocations' scripts
        from dftflow.execution.fw_launches import allocation_script

        script = allocation_script(prof, Path(launch_dir), job_name="dftflow-fw")
    else:
        script = job_script(prof, Path(launch_dir))
    if json_:
        print_json({"profile": prof.name, "valid": True, "warnings": problems, "script": script})
        return
    console.print(f"[green]valid[/]: {prof.name} ({prof.scheduler})")
    for p in problems:
        console.print(f"[yellow]warning[/]: {p}")
    if script is None:
        console.print("runs on this machine with local worker processes: no batch script")
    else:
        typer.echo(script)
