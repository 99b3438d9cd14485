"""Training ChargE3Net on a dftflow HDF5 dataset: random structures × random probes, L1, Adam.

``dftflow train CONFIG`` runs :func:`train`. What a step sees is a function
of (seed, step) only — which structures (:class:`~dftflow.ml.data.StepSampler`)
and which probe points (the loader's per-item draw) — so ``--resume`` from a
checkpoint continues the same loss curve, and ``torchrun`` with N processes
splits each global batch of structures between them (DistributedDataParallel,
gloo on CPU, NCCL on GPUs) and sees the same data as one process.

Learning rate: lr · 0.96^(step / decay_steps), as in the paper. Every
``val_every`` steps the run is validated (:mod:`dftflow.ml.validation`) and
checkpointed (:mod:`dftflow.ml.checkpoint`); ``log.csv`` gets one row per step.

This module holds the set-up of a run (data, fine-tuning parent, Δ-SAED,
occupancy head) and the loop. The pieces live beside it: the config
(:mod:`dftflow.ml.config`), the data of each step (:mod:`dftflow.ml.data`),
batches (:mod:`dftflow.ml.batch`), the loss (:mod:`dftflow.ml.loss`),
validation and checkpoints. ``load_config``, ``load_checkpoint``,
``graph_batch`` and ``occupancy_layouts`` are importable from here too.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dftflow.errors import ConfigError
from dftflow.ml.batch import graph_batch, to_device
from dftflow.ml.checkpoint import (
    TrainState,
    load_checkpoint,
    model_card_fields,
    restore_training,
    save_checkpoint,
)
from dftflow.ml.config import TrainConfig, load_config
from dftflow.ml.data import StepSampler, occupancy_layouts, phase_ids, unseen_elements
from dftflow.ml.loss import training_loss
from dftflow.ml.model import ChargE3Net, build_model
from dftflow.ml.validation import occupancy_errors, validate

__all__ = ["TrainConfig", "graph_batch", "load_checkpoint", "load_config", "occupancy_layouts", "train"]

#: The header of ``log.csv``.
LOG_COLUMNS = "step,loss,lr,steps_per_s,val_eps_mae\n"


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _datasets(cfg: TrainConfig) -> tuple[Any, list[str], Any]:
    """The training set, the validation ids and the validation set of ``cfg``."""
    from dftflow.dataset.loader import ProbeDataset

    if cfg.data.dataset is None:
        raise ConfigError("data.dataset: a dataset directory is needed")
    train_set = ProbeDataset(cfg.data.dataset, phase_ids(cfg, "train"), n_probes=cfg.data.n_probes, seed=cfg.seed,
                             spin=cfg.model.spin, target=cfg.data.target)
    val_ids = phase_ids(cfg, "val") if (cfg.data.val_ids is not None or cfg.data.split) else []
    val_set = ProbeDataset(cfg.data.dataset, val_ids, n_probes=cfg.data.val_probes or None, seed=cfg.seed + 1,
                           target=cfg.data.target)
    if cfg.data.loss == "relative_l1" and cfg.model.spin:
        raise ConfigError("data.loss relative_l1 is for one density channel (model.spin false)")
    if cfg.data.target != "total" and (cfg.delta_saed or cfg.model.spin):
        raise ConfigError(f"data.target {cfg.data.target!r} is already a difference to the engine's atomic guess: "
                          "it takes neither delta_saed nor model.spin")
    if len(train_set) == 0:
        raise ConfigError("the training set is empty")
    return train_set, val_ids, val_set


def _inherit_from_parent(cfg: TrainConfig, parent: dict[str, Any]) -> TrainConfig:
    """``cfg`` checked against the checkpoint it fine-tunes, with the parent's occupancy head if it has one."""
    if parent.get("target", "total") != cfg.data.target:
        raise ConfigError(f"init_from {cfg.init_from}: it learnt data.target {parent.get('target', 'total')!r}, "
                          f"this run {cfg.data.target!r}; fine-tuning keeps the target")
    if parent["model_config"].get("occupancy") and not cfg.model.occupancy:
        # the parent's occupancy head, layouts and reference included: its weights must fit
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={
            k: parent["model_config"].get(k) for k in ("occupancy", "occupancy_reference", "occupancy_layout")})})
    return cfg


def _with_occupancy_head(cfg: TrainConfig, ids: list[str]) -> TrainConfig:
    """``cfg`` with the occupancy head's layouts (from the materials ``ids``) and atomic reference filled in."""
    if cfg.occupancy_weight > 0 and not cfg.model.occupancy:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={
            "occupancy": occupancy_layouts(cfg.data.dataset, ids, cfg.model.occupancy_layout)})})
    if (cfg.occupancy_weight > 0 and cfg.occupancy_delta and cfg.model.occupancy_layout == "gpaw"
            and cfg.model.occupancy_reference is None):
        from dftflow.ml.occupancy import gpaw_atomic_reference

        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={
            "occupancy_reference": gpaw_atomic_reference(cfg.model.occupancy)})})
    return cfg


def _load_parent_weights(model: ChargE3Net, parent: dict[str, Any], cfg: TrainConfig) -> None:
    """The fine-tuning parent's weights into ``model`` (an occupancy head the parent lacks starts fresh)."""
    try:
        missing, unexpected = model.load_state_dict(parent["model"], strict=False)
    except RuntimeError as exc:  # shapes differ: another mul, lmax, number of layers ...
        raise ConfigError(f"init_from {cfg.init_from}: its weights do not fit model: (use the model section "
                          f"it was trained with, e.g. its ml/*.yaml): {str(exc).splitlines()[1:2]}") from exc
    if unexpected or any(not k.startswith("occupancy_head.") for k in missing):
        raise ConfigError(f"{cfg.init_from}: its model does not match model: (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")


def _fit_saed(cfg: TrainConfig, ids: list[str]) -> dict[str, Any]:
    """The SAED table (atomic densities) fitted to ``saed_probes`` points of each training material."""
    from dftflow.dataset.loader import ProbeDataset
    from dftflow.ml.saed import fit_saed

    fit_set = ProbeDataset(cfg.data.dataset, ids, n_probes=cfg.saed_probes, seed=cfg.seed + 7)
    return fit_saed([{k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in fit_set[i].items()}
                     for i in range(len(fit_set))])


def _log(path: Path, row: dict[str, float]) -> None:
    with open(path, "a", newline="") as fh:
        csv.writer(fh).writerow([row["step"], f"{row['loss']:.6g}", f"{row['lr']:.6g}",
                                 f"{row.get('steps_per_s', ''):}", row.get("val_eps_mae", "")])


def train(cfg: TrainConfig, *, resume: bool = False, progress: Any = None) -> dict[str, Any]:
    """Train (or fine-tune) per ``cfg``; returns the history and the best validation ε_mae."""
    rank, world = _distributed()
    dtype = {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    train_set, val_ids, val_set = _datasets(cfg)
    unseen = unseen_elements(cfg.data.dataset, train_set.ids, val_ids)
    if unseen and rank == 0:
        import warnings

        warnings.warn(f"validation materials hold elements no training material has ({', '.join(unseen)}): "
                      "their validation error says nothing about the model (dataset split --cover-elements)",
                      stacklevel=2)
    parent = None
    if cfg.init_from:
        from dftflow.models import model_path

        parent = load_checkpoint(model_path(cfg.init_from))  # a checkpoint file or a bundled model's name
        cfg = _inherit_from_parent(cfg, parent)
    cfg = _with_occupancy_head(cfg, train_set.ids + val_ids)
    train_set.occupancies = val_set.occupancies = cfg.model.occupancy_layout if cfg.occupancy_weight > 0 else False
    if cfg.freeze_density and not (cfg.init_from and cfg.occupancy_weight > 0):
        raise ConfigError("freeze_density trains only the occupancy head: it needs init_from and occupancy_weight > 0")
    model = build_model(cfg.model).to(dtype)
    saed = None
    device = torch.device(cfg.device)
    if parent is not None:
        _load_parent_weights(model, parent, cfg)
        saed = parent.get("saed")  # fine-tuning keeps the baseline the model learnt against
    if cfg.delta_saed and saed is None:
        saed = _fit_saed(cfg, train_set.ids)
    elif not cfg.delta_saed:
        saed = None
    extra = {"saed": saed, **model_card_fields(cfg, train_set)}
    if cfg.freeze_density:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("occupancy_head.")
    model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  lambda step: 0.96 ** (step / cfg.optim.decay_steps))
    state = TrainState()
    last = out / "checkpoint_last.pt"
    if resume:
        if not last.exists():
            raise ConfigError(f"{last}: nothing to resume from")
        state, ckpt = restore_training(last, model, optimizer, scheduler)
        if cfg.delta_saed:
            saed = ckpt.get("saed") or saed
            extra = {**extra, "saed": saed}
    ddp_model: torch.nn.Module = model
    if world > 1:
        # a structure with no neighbour within the cutoff (an unrelaxed cell with wide bonds) leaves a layer out of
        # its process's graph; DDP must then reduce a zero gradient for it, not wait for one that never comes
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    if cfg.data.batch_size % world:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} is not divisible by {world} processes")
    sampler = StepSampler(len(train_set), cfg.data.batch_size, cfg.seed)
    log_path = out / "log.csv"
    if rank == 0 and not (resume and log_path.exists()):
        log_path.write_text(LOG_COLUMNS)
    if progress is not None:
        progress.start("train", cfg.optim.max_steps - state.step)
    t_last, s_last = time.perf_counter(), state.step
    t_start = t_last
    deadline = math.inf if cfg.optim.max_seconds is None else t_start + cfg.optim.max_seconds
    while state.step < cfg.optim.max_steps:
        out_of_time = time.perf_counter() >= deadline
        step = state.step
        train_set.set_epoch(step)
        mine = sampler.indices(step)[rank::world]
        batch = to_device(graph_batch([train_set[i] for i in mine], cfg.model.cutoff, dtype, saed,
                                      model.occupancy_head, probes=not cfg.freeze_density), device)
        loss = training_loss(ddp_model, batch, cfg.model.spin, cfg.occupancy_weight, density=not cfg.freeze_density,
                             relative=cfg.data.loss == "relative_l1")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        state.step += 1
        value = float(loss.detach())
        if world > 1:  # one reduction for the mean loss and the time limit: every process stops after the same
            t = torch.tensor([value, float(out_of_time)])  # step, or the others would wait for it forever
            torch.distributed.all_reduce(t)
            value, out_of_time = float(t[0]) / world, bool(t[1] > 0)
        row = {"step": state.step, "loss": value, "lr": scheduler.get_last_lr()[0]}
        last_step = state.step == cfg.optim.max_steps or out_of_time
        if state.step % cfg.optim.val_every == 0 or last_step:
            now = time.perf_counter()
            row["steps_per_s"] = (state.step - s_last) / max(now - t_last, 1e-9)
            t_last, s_last = now, state.step
            if rank == 0 and len(val_set):
                row["val_eps_mae"] = validate(model, val_set, cfg, dtype, saed)
        state.history.append(row)  # before the best checkpoint is written: it holds its own validation
        if row.get("val_eps_mae", math.inf) < state.best_val:  # (only rank 0 validates)
            state.best_val = row["val_eps_mae"]
            save_checkpoint(out / "checkpoint_best.pt", model, optimizer, scheduler, state, cfg, extra)
        if rank == 0:
            _log(log_path, row)
            if state.step % cfg.optim.checkpoint_every == 0 or last_step:
                save_checkpoint(last, model, optimizer, scheduler, state, cfg, extra)
        if progress is not None:
            progress.advance()
        if out_of_time:
            break
    summary = {"steps": state.step, "seconds": round(time.perf_counter() - t_start, 1),
               "stopped_by_time": state.step < cfg.optim.max_steps, "device": str(device),
               "final_loss": state.history[-1]["loss"] if state.history else None,
               "best_val_eps_mae": None if math.isinf(state.best_val) else state.best_val, "out": str(out),
               "saed_fit_eps_mae": saed["fit_eps_mae"] if saed else None, "val_unseen_elements": unseen}
    if cfg.occupancy_weight > 0 and rank == 0:
        summary["occupancy_mae"] = occupancy_errors(model, val_set if len(val_set) else train_set, cfg, dtype)
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
