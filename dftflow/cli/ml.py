"""``dftflow train``: ChargE3Net on a dftflow dataset (one process, or many under torchrun)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from dftflow.cli.common import JsonOpt, RichProgress, console, err_console, print_json, read_structure, structure_name
from dftflow.cli.models import ModelOpt
from dftflow.errors import DensityError, InputError


def _overrides(items: list[str] | None) -> dict[str, Any]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected section.key=value, e.g. optim.max_steps=500")
        key, raw = item.split("=", 1)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def train(
    config: Annotated[str, typer.Argument(help="Training config (ml/*.yaml name or path).")],
    resume: Annotated[bool, typer.Option(help="Continue from <out>/checkpoint_last.pt.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override, e.g. optim.max_steps=500.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Train (or fine-tune, with init_from) ChargE3Net; under torchrun, data-parallel over the processes."""
    import torch

    from dftflow.ml.config import load_config
    from dftflow.ml.train import train as run

    cfg = load_config(config, _overrides(set_))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    try:
        with RichProgress(enabled=not json_ and rank == 0) as progress:
            summary = run(cfg, resume=resume, progress=progress)
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    if rank != 0:
        return
    if json_:
        print_json(summary)
        return
    best = summary["best_val_eps_mae"]
    console.print(f"{summary['steps']} steps, final loss {summary['final_loss']:.4g}"
                  + (f", best validation ε_mae {100 * best:.2f} %" if best is not None else "")
                  + f" → {Path(summary['out'])}")


def _nelect(structure: Any, how: str) -> float | None:
    if how == "none":
        return None
    if how != "auto":
        try:
            value = float(how)
        except ValueError:
            raise InputError(f"--nelect {how!r}: auto, none or a number") from None
        if not value > 0:
            raise InputError(f"--nelect {how!r}: the electron count must be positive")
        return value
    from dftflow.vasp.inputs import valence_electrons

    return float(valence_electrons(structure))


def _grid(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"--grid {text!r}: expected nx,ny,nz (three positive integers)")
    return shape  # type: ignore[return-value]


def _usable_model(model: str | None, structures: list[tuple[Path, Any]], allow_unseen: bool) -> tuple[Any, ...]:
    """The model, its checkpoint and, per structure, the elements it never saw; refusals come first."""
    from dftflow.ml.predict import is_correction_model, load_model, unseen_elements
    from dftflow.models import resolve_model

    path = resolve_model(model)
    label = model or path.stem
    net, ckpt = load_model(path)
    if is_correction_model(ckpt):
        raise InputError(f"{label}: a correction model (target smooth_delta) predicts a change to GPAW's atomic "
                         "guess, not a density a CHGCAR can hold; use it with `dftflow accel-eval --engine gpaw`")
    unseen = [unseen_elements(ckpt, structure) for _, structure in structures]
    for (src, _), missing in zip(structures, unseen, strict=True):
        if missing and not allow_unseen:
            raise InputError(f"{src}: the model {label} was not trained on {', '.join(missing)}; "
                             "pass --allow-unseen to predict anyway")
        if missing:
            err_console.print(f"warning: {src}: the model {label} was not trained on {', '.join(missing)}; "
                              "its density there is an extrapolation", highlight=False, soft_wrap=True)
    return net, ckpt, unseen


def predict(
    structures: Annotated[list[Path], typer.Argument(help="Structure files (POSCAR, CIF, ...).")],
    model: ModelOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for <name>/CHGCAR.")] = Path("predicted"),
    grid: Annotated[str | None, typer.Option(help="Grid 'nx,ny,nz' (default: from --spacing).")] = None,
    spacing: Annotated[float, typer.Option(help="Largest grid spacing in Å when --grid is not given.")] = 0.1,
    nelect: Annotated[str, typer.Option(help="Rescale to this many electrons: auto (VASP-recommended PAW "
                                             "valence), none, or a number.")] = "auto",
    chunk: Annotated[int | None, typer.Option(help="Probe points per chunk (default: sized to ~8,000 "
                                                   "atom-probe edges, which bounds the memory).")] = None,
    symmetry: Annotated[bool, typer.Option(help="Evaluate one point per space-group orbit of the grid "
                                                "and copy it to the others (same result, less work).")] = True,
    allow_unseen: Annotated[bool, typer.Option(
        "--allow-unseen", help="Predict structures with elements the model was not trained on (else refused).",
    )] = False,
    json_: JsonOpt = False,
) -> None:
    """Predict the full-grid density of any structure (no density file needed) and write a CHGCAR."""
    from dftflow.ml.predict import (
        default_grid,
        predict_density,
        save_density_matrices,
        write_prediction_chgcar,
    )
    from dftflow.ml.predict import predicted_augmentation as predict_blocks

    fixed = _grid(grid) if grid else None
    items = [(path, read_structure(path)) for path in structures]
    net, ckpt, unseen = _usable_model(model, items, allow_unseen)
    rows = []
    for (path, structure), missing in zip(items, unseen, strict=True):
        shape = fixed or default_grid(structure.lattice.matrix, spacing)
        target = _nelect(structure, nelect)
        with RichProgress(enabled=not json_) as progress:
            try:
                result = predict_density(net, ckpt, structure, shape, nelect=target, chunk=chunk,
                                         symmetry=symmetry, progress=progress)
            except DensityError as exc:  # a raw count not worth rescaling: name the file, write nothing
                raise InputError(f"{path}: {exc}; --nelect none writes it as predicted") from exc
        dest = out / structure_name(path) / "CHGCAR"
        dest.parent.mkdir(parents=True, exist_ok=True)
        augmentation, occupancies = predict_blocks(net, structure, spin=result["diff"] is not None)
        if net.occupancy_head is not None and net.occupancy_head.kind == "gpaw":  # for a GPAW restart
            free = save_density_matrices(net, structure, dest.parent / "density_matrices.npz")
            occupancies = "predicted GPAW density matrices in density_matrices.npz" + (
                f" (free-atom ones for {', '.join(free)}, which the head never saw)" if free else "")
        write_prediction_chgcar(structure, result["rho"], dest, diff=result["diff"], augmentation=augmentation)
        rows.append({"structure": str(path), "chgcar": str(dest), "grid": list(shape), "seconds": result["seconds"],
                     "electrons_predicted": result["electrons_predicted"], "nelect": target,
                     "scale": result["scale"], "points_evaluated": result["points_evaluated"],
                     "symmetry": result["symmetry"], "occupancies": occupancies, "unseen_elements": missing})
    if json_:
        print_json(rows)
        return
    for r in rows:
        console.print(f"{r['structure']} → {r['chgcar']}  grid {r['grid']}, {r['seconds']:.1f} s, "
                      f"{r['electrons_predicted']:.3f} e predicted" + (f", scaled ×{r['scale']:.4f} to "
                                                                        f"{r['nelect']:g}" if r["nelect"] else "")
                      + f"; occupancies {r['occupancies']}")


def evaluate(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint.")],
    dataset: Annotated[Path, typer.Option("--dataset", help="Dataset directory.")],
    split: Annotated[Path | None, typer.Option(help="Split file; default: every material.")] = None,
    task: Annotated[str, typer.Option(help="Task of the split.")] = "pbe-id",
    phase: Annotated[str, typer.Option(help="Phase of the task (test, val, train).")] = "test",
    probes: Annotated[int, typer.Option(help="Random points per structure; 0: the whole grid.")] = 5000,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the plots and the JSON.")]
    = Path("evaluation"),
    json_: JsonOpt = False,
) -> None:
    """ε_mae per structure on a split, per-element errors, parity and error plots (PNG)."""
    from rich.table import Table

    from dftflow.dataset.split import load_split, task_sets
    from dftflow.dataset.store import Dataset
    from dftflow.ml.evaluate import evaluate as run

    if split is not None:
        sets = task_sets(load_split(split), task)
        if phase not in sets:
            raise InputError(f"--phase {phase}: task {task} has phases {sorted(sets)}")
        ids = sets[phase]
    else:
        ds = Dataset(dataset)
        ids = ds.ids()
        ds.close()
    summary = run(model, dataset, ids, n_probes=probes or None, out=out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(summary, indent=1))
    if json_:
        print_json(summary)
        return
    table = Table("material", "ε_mae (%)", "points")
    for r in summary["per_structure"]:
        table.add_row(r["material_id"], f"{100 * r['eps_mae']:.3f}", str(r["points"]))
    console.print(table)
    if summary["eps_mae_mean"] is not None:
        console.print(f"mean ε_mae {100 * summary['eps_mae_mean']:.3f} %, median "
                      f"{100 * summary['eps_mae_median']:.3f} %; plots in {out}")
