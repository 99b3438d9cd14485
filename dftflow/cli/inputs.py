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


_SET_HELP = ("Input set (default: the ECD set the run looks like: HSE06 when LHFCALC, relax when NSW > 0, "
             "else the PBE static).")


@app.command("diff")
def diff(
    target: Annotated[Path, typer.Argument(help="A structure file (then OUTCAR is needed), or a directory of runs.")],
    outcar: Annotated[Path | None, typer.Argument(help="The OUTCAR (plain or .gz) of the run of STRUCTURE.")] = None,
    set_: Annotated[str | None, typer.Option("--set", help=_SET_HELP)] = None,
    rung: Annotated[int | None, typer.Option(help="Rung to compare with (default: the rung that fits best).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Where what an OUTCAR printed differs from the input set, field by field; over a directory, the parity table."""
    from dftflow.vasp.audit import diff_run, diff_tree, parity

    if target.is_dir():
        if outcar is not None:
            raise InputError(f"{target} is a directory of runs: give no OUTCAR argument")
        diffs = diff_tree(target, set_, rung)
        summary = parity(diffs)
        if json_:
            print_json({"parity": summary, "runs": [d.as_dict() for d in diffs]})
            return
        table = Table("run", "set", "rung", "matched", "misses")
        for d in diffs:
            table.add_row(d.run, d.inputset, str(d.rung), f"{len(d.fields) - len(d.misses)}/{len(d.fields)}",
                          ", ".join(f.field + (" (deliberate)" if f.deliberate else "") for f in d.misses) or "-")
        console.print(table)
        _print_parity(summary)
        return
    if outcar is None:
        raise InputError(f"{target}: a structure needs its OUTCAR as the second argument (or give a directory)")
    result = diff_run(read_structure(target), outcar, set_, rung)
    if json_:
        print_json(result.as_dict())
        return
    console.print(f"[bold]{outcar}[/] against [bold]{result.inputset}[/] (rung {result.rung}): "
                  f"{len(result.fields) - len(result.misses)}/{len(result.fields)} fields match")
    table = Table("field", "run (OUTCAR)", "input set", "")
    for f in result.fields:
        if not f.match:
            table.add_row(f.field, _show(f.run), _show(f.inputset), f"[dim]{f.deliberate}[/]" if f.deliberate else "")
    if result.misses:
        console.print(table)
    else:
        console.print("no differences")
    if result.not_printed:
        console.print(f"[dim]not printed by this OUTCAR, not compared: {', '.join(result.not_printed)}[/]")


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _print_parity(summary: dict[str, Any]) -> None:
    console.print(f"[bold]parity[/]: {summary['matched']}/{summary['total']} fields "
                  f"({100 * summary['fraction']:.1f} %) over {summary['runs']} runs; "
                  f"{summary['deliberate_misses']} misses are the set's documented deviations "
                  f"({100 * summary['fraction_without_deliberate']:.1f} % without them)")
    if summary["misses_by_field"]:
        console.print("misses by field: " + ", ".join(f"{k} {v}" for k, v in summary["misses_by_field"].items()))
