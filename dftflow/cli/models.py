"""``dftflow models``: the ChargE3Net models that ship with dftflow, and their model cards."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from dftflow.cli.common import JsonOpt, console, print_json

app = typer.Typer(help="List and show the bundled ML models.", no_args_is_help=True)

#: ``--model`` of the commands that run a model: a checkpoint file, a bundled name, or the default model.
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Checkpoint file or bundled model name (dftflow models list); default: the bundled default.")]


def _metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


@app.command("list")
def list_models(json_: JsonOpt = False) -> None:
    """List the bundled models (the default one is marked)."""
    from dftflow.models import DEFAULT_MODEL
    from dftflow.models import list_models as cards

    rows = cards()
    if json_:
        print_json(rows)
        return
    if not rows:
        console.print("no bundled models")
        return
    table = Table("name", "target", "engine", "elements", "materials", "metrics")
    for r in rows:
        materials = r["training"]["materials"]
        table.add_row(r["name"] + (" (default)" if r["name"] == DEFAULT_MODEL else ""), r["target"], r["engine"],
                      str(len(r["elements"])), "" if materials is None else str(materials), _metrics(r["metrics"]))
    console.print(table)


@app.command("show")
def show_model(
    name: Annotated[str, typer.Argument(help="Bundled model name (dftflow models list) or checkpoint file.")],
    json_: JsonOpt = False,
) -> None:
    """Show a model's card (or what a checkpoint file says of itself), and the file's path, size and SHA-256."""
    from dftflow.models import model_details

    data = model_details(name)
    if json_:
        print_json(data)
        return
    table = Table("field", "value", show_header=False)
    for key, value in data.items():
        table.add_row(key, _cell(value))
    console.print(table)
    if data["checksum_ok"] is False:
        console.print(f"[red]{data['path']} differs from the file the card was written for (sha256)[/]")


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return "\n".join(f"{k}: {_cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "-"
    return "-" if value is None else str(value)


@app.command("calibrate")
def calibrate_model(
    checkpoint: Annotated[str, typer.Argument(help="A correction model's checkpoint (data.target smooth_delta).")],
    dataset: Annotated[str, typer.Option(help="Dataset of the validation materials ...")],
    split: Annotated[str, typer.Option(help="... its split file ...")],
    subset: Annotated[str, typer.Option(help="... and subset (never the test set you report on).")] = "val",
    task: Annotated[str, typer.Option(help="Split task.")] = "pbe-id",
    scales: Annotated[str, typer.Option(help="Comma-separated factors to compare.")] = "0.25,0.5,0.75,1",
    max_ratio: Annotated[float, typer.Option(help="A factor qualifies only if no material needs more than "
                                                  "this times the default's steps.")] = 1.1,
    out: Annotated[str, typer.Option("--out", "-o", help="Evaluation directory (resumable).")] = "calibration",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Input-set override KEY=VALUE (repeatable).")] = None,
    nfixed: Annotated[int, typer.Option(min=0, help="Fixed-density steps of every arm.")] = 3,
    write: Annotated[bool, typer.Option("--write/--dry-run", help="Store the chosen factor in the checkpoint.")] = True,
    bundle: Annotated[str | None, typer.Option(help="Then strip the checkpoint into the package's bundled "
                                                    "models under this name, with its card.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes.")] = 1,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many materials of the subset.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Choose the factor on a correction model's predicted change from SCF runs on validation materials."""
    from pathlib import Path

    from dftflow.accel.calibrate import calibrate, write_scale
    from dftflow.accel.run import dataset_materials
    from dftflow.cli.accel import _overrides
    from dftflow.errors import InputError

    try:
        factors = [float(x) for x in scales.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--scales {scales!r}: comma-separated numbers (0.5,1)") from None
    path = Path(checkpoint)
    items = dataset_materials(Path(dataset), Path(split), task, subset)[:limit]
    result = calibrate(path, Path(out).resolve(), items, scales=factors, max_ratio=max_ratio,
                       overrides=_overrides(set_ or []), nfixed=nfixed, workers=workers)
    if write or bundle:
        write_scale(path, result)
    if bundle:
        result["bundled"] = _bundle(path, bundle, result, subset)
    if json_:
        print_json(result)
        return
    table = Table("factor", "materials", "mean ratio", "median", "worst", "worse than default")
    for row in result["table"]:
        table.add_row(f"{row['scale']:g}", str(row["materials"]), f"{row['mean']:.3f}", f"{row['median']:.3f}",
                      f"{row['worst']:.3f}", f"{row['worse_than_default']:.0%}")
    console.print(table)
    console.print(f"chosen factor: {result['correction_scale']:g}" + (" (written to the checkpoint)" if write else ""))


def _bundle(checkpoint: Any, name: str, calibration: dict[str, Any], subset: str) -> dict[str, Any]:
    """Strip a calibrated correction model into ``dftflow/models/<name>.pt`` with its card."""
    from pathlib import Path

    import dftflow.models as models

    chosen = next((row for row in calibration["table"] if row["scale"] == calibration["correction_scale"]), None)
    metrics = {"correction_scale": calibration["correction_scale"]}
    if chosen is not None:
        metrics[f"{subset}_ml_ratio_mean"] = chosen["mean"]
        metrics[f"{subset}_ml_ratio_worst"] = chosen["worst"]
    return models.strip_checkpoint(
        checkpoint, Path(models.__file__).parent / f"{name}.pt", engine="gpaw",
        description="ChargE3Net correction to GPAW's superposition-of-atoms start (smooth density and PAW "
                    "density matrices), pretrained on decorated prototype crystals",
        settings={"inputset": calibration["inputset"], "overrides": calibration["overrides"]},
        training={"dataset": "workflows/pretrain-gpaw.yaml"}, metrics=metrics,
        rebuild="dftflow build-dataset pretrain-gpaw && dftflow models calibrate "
                "pretrain-project/model/checkpoint_last.pt --dataset pretrain-project/dataset "
                f"--split pretrain-project/split.json --subset {subset} --limit {calibration['materials']} "
                f"--scales {','.join(format(row['scale'], 'g') for row in calibration['table'])} "
                + "".join(f"--set {k}={v} " for k, v in calibration["overrides"].items()) + f"--bundle {name}")
