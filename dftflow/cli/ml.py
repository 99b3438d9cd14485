"""``dftflow train``: ChargE3Net on a dftflow dataset (one process, or many under torchrun)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from dftflow.cli.common import JsonOpt, RichProgress, console, print_json
from dftflow.errors import InputError


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

    from dftflow.ml.train import load_config
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
