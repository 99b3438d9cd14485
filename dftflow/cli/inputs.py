"""``dftflow inputs``: the fully resolved VASP inputs of an input set for one structure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dftflow.cli.common import JsonOpt, console, print_json, read_structure
from dftflow.errors import InputError

app = typer.Typer(help="Show the VASP inputs an input set gives a structure.", no_args_is_help=True)


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise InputError(f"--incar {text!r}: expected KEY=VALUE (VALUE in JSON or plain text; KEY= removes the tag)")
    key, raw = text.split("=", 1)
    if raw == "":
        return key.strip().upper(), None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = {"true": True, "false": False, ".true.": True, ".false.": False}.get(raw.lower(), raw)
    return key.strip().upper(), value


@app.command("show")
def show(
    structure: Annotated[Path, typer.Argument(help="Structure file (POSCAR, CIF, ...).")],
    set_: Annotated[str, typer.Option("--set", help="Input set name (inputsets/) or YAML path.")] = "ecd-pbe-static",
    rung: Annotated[int, typer.Option(help="Rung of the set's fallback ladder (0: the set itself).")] = 0,
    incar: Annotated[list[str] | None, typer.Option("--incar", help="User override KEY=VALUE (repeatable).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Print the resolved INCAR, k-point mesh and POTCAR symbols (no POTCAR files needed)."""
    from dftflow.vasp.inputs import resolve_inputs

    user = dict(_parse_override(t) for t in incar or [])
    inputs = resolve_inputs(read_structure(structure), set_, rung=rung, overrides=[user])
    data = inputs.as_dict()
    if json_:
        print_json(data)
        return
    console.print(f"[bold]{structure}[/] with [bold]{inputs.inputset}[/]" + (f" (rung {rung})" if rung else ""))
    table = Table("INCAR", "value")
    for key, value in inputs.incar.items():
        table.add_row(key, " ".join(map(str, value)) if isinstance(value, list) else str(value))
    console.print(table)
    console.print(f"KPOINTS: {inputs.kpoints['style']} {' '.join(map(str, inputs.kpoints['mesh']))}"
                  f"  ({inputs.kpoints['rule']})")
    console.print("POTCAR:  " + " ".join(inputs.potcar_symbols))
    for note in inputs.notes:
        console.print(f"[dim]{note}[/]")
