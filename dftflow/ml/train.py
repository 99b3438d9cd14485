"""Training ChargE3Net on a dftflow HDF5 dataset: random structures × random probes, L1, Adam.

``dftflow train CONFIG`` runs :func:`train`. What a step sees is a function
of (seed, step) only — which structures (:class:`StepSampler`) and which
probe points (the loader's per-item draw) — so ``--resume`` from a checkpoint
continues the same loss curve, and ``torchrun`` with N processes splits each
global batch of structures between them (DistributedDataParallel, gloo on CPU,
NCCL on GPUs) and sees the same data as one process.

Learning rate: lr · 0.96^(step / decay_steps), as in the paper. Validation
reports ε_mae = Σ|ρ − ρ̂| / Σ|ρ| per structure, averaged over structures, on
``val_probes`` random points per structure (or the full grid with ``0``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from dftflow.config.base import StrictModel, load_yaml_model
from dftflow.errors import ConfigError
from dftflow.ml.graph import make_batch
from dftflow.ml.model import ChargE3Net, ModelConfig


class DataSettings(StrictModel):
    dataset: str | None = Field(default=None, description="dataset directory")
    split: str | None = Field(default=None, description="split file from `dftflow dataset split`")
    task: str = "pbe-id"
    train_phase: str = "train"
    val_phase: str = "val"
    train_ids: list[str] | None = None
    val_ids: list[str] | None = None
    n_probes: int = Field(default=200, gt=0)
    batch_size: int = Field(default=4, gt=0, description="structures per step (global, over all processes)")
    val_probes: int = Field(default=2000, ge=0, description="0: full grid")
    num_workers: int = 0
    loss: Literal["l1", "relative_l1"] = Field(
        default="l1", description="relative_l1: each structure's L1 divided by the mean |target| of its grid, so "
        "materials with small corrections count as much as those with large ones (what ε_mae averages)")
    target: Literal["total", "smooth_delta"] = Field(
        default="total", description="total: the CHGCAR density; smooth_delta: GPAW's smooth density minus "
        "its atomic guess (a model of the correction to the engine's default start, docs/ml.md)")


class OptimSettings(StrictModel):
    lr: float = Field(default=5e-3, gt=0)
    decay_steps: float = Field(default=1000.0, gt=0, description="lr * 0.96^(step / decay_steps)")
    max_steps: int = Field(default=1000, gt=0)
    val_every: int = Field(default=100, gt=0)
    checkpoint_every: int = Field(default=100, gt=0)
    grad_clip: float | None = None
    max_seconds: float | None = Field(default=None, gt=0, description="stop (with a checkpoint and a validation) "
                                      "after this much wall time of this run, whatever the step")


class TrainConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataSettings = Field(default_factory=DataSettings)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    seed: int = 0
    out: str = "train-out"
    init_from: str | None = Field(default=None, description="checkpoint to fine-tune from (all weights trainable)")
    delta_saed: bool = Field(default=False, description="learn rho - rho_SAED (fitted atomic densities)")
    saed_probes: int = Field(default=4000, gt=0, description="points per training structure for the SAED fit")
    dtype: str = "float32"
    device: str = Field(default="cpu", description="torch device of the model and batches (cpu, cuda, cuda:1)")
    occupancy_weight: float = Field(default=0.0, ge=0,
                                    description="> 0: also learn the PAW occupancies (model.occupancy_layout)")
    freeze_density: bool = Field(default=False, description="train only the occupancy head (with init_from)")
    occupancy_delta: bool = Field(
        default=True, description="GPAW occupancies: learn the change from the free atoms' density matrices "
        "(stored in model.occupancy_reference), so an untrained head gives GPAW's atomic guess; VASP "
        "occupancies have no atomic reference here and are learnt whole")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    from dftflow.resources import resolve

    cfg = load_yaml_model(resolve("ml", path), TrainConfig)
    if overrides:
        data = cfg.model_dump()
        for dotted, value in overrides.items():
            node = data
            *head, last = dotted.split(".")
            for key in head:
                node = node[key]
            node[last] = value
        cfg = TrainConfig.model_validate(data)
    return cfg


class StepSampler:
    """Structure indices of each step: a function of (seed, step) only."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def indices(self, step: int) -> list[int]:
        rng = np.random.default_rng([self.seed, step])
        return [int(i) for i in rng.integers(0, self.n, self.batch_size)]


@dataclass
class TrainState:
    step: int = 0
    best_val: float = math.inf
    history: list[dict[str, float]] = field(default_factory=list)


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _ids(cfg: TrainConfig, phase: str) -> list[str]:
    explicit = cfg.data.train_ids if phase == "train" else cfg.data.val_ids
    if explicit is not None:
        return list(explicit)
    if cfg.data.split is None:
        from dftflow.dataset.store import Dataset

        ds = Dataset(cfg.data.dataset)
        ids = ds.ids()
        ds.close()
        return ids
    from dftflow.dataset.split import load_split, task_sets

    sets = task_sets(load_split(cfg.data.split), cfg.data.task)
    key = cfg.data.train_phase if phase == "train" else cfg.data.val_phase
    if key not in sets:
        raise ConfigError(f"data.{phase}_phase: task {cfg.data.task} has no phase {key!r} (has {sorted(sets)})")
    return sets[key]


def occupancy_layouts(dataset: str | Path, ids: list[str], kind: str = "gpaw") -> dict[str, list[int]]:
    """Per atomic number in these materials: the projectors' l_j (the occupancy head's layouts).

    ``gpaw``: of GPAW's setups; ``vasp``: of the POTCARs the harvest recorded with each material's
    augmentation blocks (every material must have them, and one element one set of channels).
    """
    from pymatgen.core import Element

    from dftflow.dataset.store import Dataset

    ds = Dataset(dataset)
    try:
        if kind == "vasp":
            return _vasp_layouts(ds, ids)
        numbers = sorted({int(z) for mid in ids for z in ds.header(mid)["numbers"]})
    finally:
        ds.close()
    from dftflow.ml.occupancy import gpaw_projector_l

    symbols = [Element.from_Z(z).symbol for z in numbers]
    return {str(z): list(lj) for z, lj in zip(numbers, gpaw_projector_l(symbols).values(), strict=True)}


def _vasp_layouts(ds: Any, ids: list[str]) -> dict[str, list[int]]:
    from pymatgen.core import Element

    found: dict[str, tuple[list[int], str]] = {}
    for mid in ids:
        meta = ds.augmentation_meta(mid)
        if not meta or "projector_l" not in meta:
            raise ConfigError(f"{ds.root}: material {mid} has no projector channels with its augmentation "
                              "occupancies (harvest it with its OUTCAR or POTCAR), or set model.occupancy")
        for symbol, lj in meta["projector_l"].items():
            z = str(Element(symbol).Z)
            if z in found and found[z][0] != list(lj):
                raise ConfigError(f"{ds.root}: {symbol} has projectors l={found[z][0]} in {found[z][1]} and "
                                  f"l={list(lj)} in {mid} (different POTCARs); one model needs one set")
            found.setdefault(z, (list(lj), mid))
    return {z: lj for z, (lj, _) in sorted(found.items(), key=lambda kv: int(kv[0]))}


def unseen_elements(dataset: str | Path, train_ids: list[str], other_ids: list[str]) -> list[str]:
    """Elements of ``other_ids`` that no material of ``train_ids`` has."""
    from ase.data import chemical_symbols

    from dftflow.dataset.store import Dataset

    ds = Dataset(dataset)
    try:
        def elements(ids: list[str]) -> set[int]:
            return {int(z) for mid in ids for z in ds.header(mid)["numbers"]}

        return [chemical_symbols[z] for z in sorted(elements(other_ids) - elements(train_ids))]
    finally:
        ds.close()


def build_model(settings: ModelConfig | dict[str, Any]) -> ChargE3Net:
    return ChargE3Net(settings if isinstance(settings, ModelConfig) else ModelConfig(**settings))


#: The loader's key of the occupancy targets, by the head's kind.
OCCUPANCY_KEYS = {"gpaw": "density_matrices", "vasp": "augmentation_occupancies"}


def occupancy_targets(numbers: np.ndarray, matrices: list[np.ndarray], head: Any) -> tuple[torch.Tensor, ...]:
    """Irreps of the occupancies (density matrices or augmentation blocks) in the head's union layout,
    and the mask of each atom's entries."""
    target = np.zeros((len(numbers), head.irreps_out.dim))
    for a, (z, D) in enumerate(zip(numbers, matrices, strict=True)):
        layout = head.layouts.get(int(z))
        if layout is None:
            raise ConfigError(f"the occupancy head has no layout for Z={int(z)}")
        try:
            target[a, head.index(int(z)).cpu().numpy()] = layout.to_irreps(D)
        except ValueError as exc:
            raise ConfigError(f"atom {a} (Z={int(z)}): {exc}") from exc
    return torch.as_tensor(target), head.mask(torch.as_tensor(np.asarray(numbers)))


def graph_batch(items: list[dict[str, Any]], cutoff: float, dtype: torch.dtype,
                saed: dict[str, Any] | None = None, head: Any = None, probes: bool = True) -> dict[str, torch.Tensor]:
    """Loader items (structure + probes) → model batch with target densities (minus the SAED, if any).

    ``head``: add the occupancy targets of that head; ``probes=False``: atoms only (head-only training).
    """
    systems = [{"cell": it["cell"].double().numpy(), "positions": it["positions"].double().numpy(),
                "numbers": it["numbers"].numpy(),
                **({"probe_positions": it["probe_positions"].double().numpy()} if probes else {})}
               for it in items]
    batch = make_batch(systems, cutoff, dtype=dtype)
    target = torch.cat([it["density"] for it in items]).to(dtype)
    if saed and probes:
        from dftflow.ml.saed import saed_at

        base = np.concatenate([saed_at(s["probe_positions"], s["cell"], s["positions"], s["numbers"], saed)
                               for s in systems])
        batch["baseline"] = torch.as_tensor(base, dtype=dtype)
        target = target - batch["baseline"]
    batch["target"] = target
    if "spin_density" in items[0]:
        batch["target_spin"] = torch.cat([it["spin_density"] for it in items]).to(dtype)
    batch["n_probes"] = torch.as_tensor([len(it["density"]) for it in items])
    scales = [max(float(it.get("density_scale", 1.0)), 1e-12) for it in items]
    batch["probe_weight"] = torch.cat([torch.full((len(it["density"]),), 1.0 / scale)
                                       for it, scale in zip(items, scales, strict=True)]).to(dtype)
    key = OCCUPANCY_KEYS[head.kind] if head is not None else None
    if key is not None and key in items[0]:
        target, mask = occupancy_targets(np.concatenate([it["numbers"].numpy() for it in items]),
                                         [D for it in items for D in it[key]], head)
        batch["target_occupancy"], batch["occupancy_mask"] = target.to(dtype), mask
    return batch


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """The batch's tensors on ``device`` (graphs are built on the CPU)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def epsilon_mae(pred: torch.Tensor, target: torch.Tensor, counts: torch.Tensor) -> list[float]:
    """Σ|ρ − ρ̂| / Σ|ρ| per structure."""
    out = []
    for p, t in zip(torch.split(pred, counts.tolist()), torch.split(target, counts.tolist())):
        out.append(float((p - t).abs().sum() / t.abs().sum()))
    return out


def _occupancy_loss(occ: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean |error| over the irreps entries that belong to each atom's species."""
    mask = batch["occupancy_mask"]
    return ((occ - batch["target_occupancy"]).abs() * mask).sum() / mask.sum().clamp(min=1)


def _loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], spin: bool,
          occupancy_weight: float = 0.0, density: bool = True, relative: bool = False) -> torch.Tensor:
    if not density:  # the density part is frozen: only the occupancy head learns, no probes needed
        raw = model.module if hasattr(model, "module") else model
        return _occupancy_loss(raw.occupancies(raw.atom_features(batch), batch["numbers"]), batch)
    if occupancy_weight:
        pred, occ = model(batch, with_occupancies=True)
        occ_loss = _occupancy_loss(occ, batch)
    else:
        pred, occ_loss = model(batch), 0.0
    if spin:
        density_loss = (pred[:, 0] - batch["target"]).abs().mean() + (pred[:, 1] - batch["target_spin"]).abs().mean()
    elif relative:
        density_loss = ((pred - batch["target"]).abs() * batch["probe_weight"]).mean()
    else:
        density_loss = (pred - batch["target"]).abs().mean()
    return density_loss + occupancy_weight * occ_loss


def occupancy_errors(model: ChargE3Net, dataset: Any, cfg: TrainConfig, dtype: torch.dtype) -> dict[str, float]:
    """Mean absolute error of the predicted occupancies (density-matrix entries or augmentation
    occupancies, in the engine's own layout), per element, over ``dataset``."""
    from collections import defaultdict

    from ase.data import chemical_symbols

    head = model.occupancy_head
    errors: dict[str, list[float]] = defaultdict(list)
    model.eval()
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            batch = to_device(graph_batch([item], cfg.model.cutoff, dtype, None, head, probes=False), cfg.device)
            occ = model.occupancies(model.atom_features(batch), batch["numbers"]).cpu()
            for a, z in enumerate(item["numbers"].tolist()):
                layout = head.layouts[z]
                D = layout.from_irreps(occ[a, head.index(z).cpu()].double().numpy())
                truth = item[OCCUPANCY_KEYS[head.kind]][a]
                errors[chemical_symbols[z]].append(float(np.abs(D - truth).mean()))
    model.train()
    return {el: float(np.mean(v)) for el, v in sorted(errors.items())}


def validate(model: ChargE3Net, dataset: Any, cfg: TrainConfig, dtype: torch.dtype,
             saed: dict[str, Any] | None = None) -> float:
    """Mean ε_mae of the full density (SAED added back) over the validation structures."""
    if len(dataset) == 0:
        return math.nan
    scores = []
    model.eval()
    with torch.no_grad():
        for i in range(len(dataset)):
            batch = to_device(graph_batch([dataset[i]], cfg.model.cutoff, dtype, saed), cfg.device)
            pred = model(batch)
            pred = pred[:, 0] if cfg.model.spin else pred
            base = batch.get("baseline", torch.zeros_like(pred))
            scores += epsilon_mae((pred + base).cpu(), (batch["target"] + base).cpu(), batch["n_probes"].cpu())
    model.train()
    return float(np.mean(scores))


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: TrainState, cfg: TrainConfig, extra: dict[str, Any] | None = None) -> None:
    raw = model.module if hasattr(model, "module") else model
    payload = {
        "model": raw.state_dict(), "model_config": raw.config.to_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "state": asdict(state), "config": cfg.model_dump(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "versions": {"torch": torch.__version__, "dftflow": _version()}, **(extra or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _version() -> str:
    from dftflow import __version__

    return __version__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"{path}: cannot load the checkpoint ({exc})") from exc
    if isinstance(ckpt.get("model_config"), dict):
        ckpt["model_config"].setdefault("scalar_readout", False)  # written before the lean last layer
    return ckpt


def model_card_fields(cfg: TrainConfig, train_set: Any) -> dict[str, Any]:
    """What a checkpoint says about its data: the target, the atomic numbers it was trained on, how many materials.

    ``train_numbers`` is what a deployed model checks a structure against: an element outside it
    gets the engine's default start (docs/accel.md), never an extrapolation.
    """
    numbers = sorted({int(z) for mid in train_set.ids for z in train_set.store.header(mid)["numbers"]})
    return {"target": cfg.data.target, "train_numbers": numbers, "train_materials": len(train_set.ids)}


def train(cfg: TrainConfig, *, resume: bool = False, progress: Any = None) -> dict[str, Any]:
    """Train (or fine-tune) per ``cfg``; returns the history and the best validation ε_mae."""
    from dftflow.dataset.loader import ProbeDataset

    rank, world = _distributed()
    dtype = {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.data.dataset is None:
        raise ConfigError("data.dataset: a dataset directory is needed")
    train_set = ProbeDataset(cfg.data.dataset, _ids(cfg, "train"), n_probes=cfg.data.n_probes, seed=cfg.seed,
                             spin=cfg.model.spin, target=cfg.data.target)
    val_ids = _ids(cfg, "val") if (cfg.data.val_ids is not None or cfg.data.split) else []
    val_set = ProbeDataset(cfg.data.dataset, val_ids, n_probes=cfg.data.val_probes or None, seed=cfg.seed + 1,
                           target=cfg.data.target)
    if cfg.data.loss == "relative_l1" and cfg.model.spin:
        raise ConfigError("data.loss relative_l1 is for one density channel (model.spin false)")
    if cfg.data.target != "total" and (cfg.delta_saed or cfg.model.spin):
        raise ConfigError(f"data.target {cfg.data.target!r} is already a difference to the engine's atomic guess: "
                          "it takes neither delta_saed nor model.spin")
    if len(train_set) == 0:
        raise ConfigError("the training set is empty")
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
        if parent.get("target", "total") != cfg.data.target:
            raise ConfigError(f"init_from {cfg.init_from}: it learnt data.target {parent.get('target', 'total')!r}, "
                              f"this run {cfg.data.target!r}; fine-tuning keeps the target")
        if parent["model_config"].get("occupancy") and not cfg.model.occupancy:
            # the parent's occupancy head, layouts and reference included: its weights must fit
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={
                k: parent["model_config"].get(k) for k in ("occupancy", "occupancy_reference", "occupancy_layout")})})
    if cfg.occupancy_weight > 0 and not cfg.model.occupancy:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={
            "occupancy": occupancy_layouts(cfg.data.dataset, train_set.ids + val_ids, cfg.model.occupancy_layout)})})
    if (cfg.occupancy_weight > 0 and cfg.occupancy_delta and cfg.model.occupancy_layout == "gpaw"
            and cfg.model.occupancy_reference is None):
        from dftflow.ml.occupancy import gpaw_atomic_reference

        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={
            "occupancy_reference": gpaw_atomic_reference(cfg.model.occupancy)})})
    train_set.occupancies = val_set.occupancies = cfg.model.occupancy_layout if cfg.occupancy_weight > 0 else False
    if cfg.freeze_density and not (cfg.init_from and cfg.occupancy_weight > 0):
        raise ConfigError("freeze_density trains only the occupancy head: it needs init_from and occupancy_weight > 0")
    model = build_model(cfg.model).to(dtype)
    saed = None
    device = torch.device(cfg.device)
    if parent is not None:
        ckpt = parent
        try:
            missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
        except RuntimeError as exc:  # shapes differ: another mul, lmax, number of layers ...
            raise ConfigError(f"init_from {cfg.init_from}: its weights do not fit model: (use the model section "
                              f"it was trained with, e.g. its ml/*.yaml): {str(exc).splitlines()[1:2]}") from exc
        if unexpected or any(not k.startswith("occupancy_head.") for k in missing):
            raise ConfigError(f"{cfg.init_from}: its model does not match model: (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
        saed = ckpt.get("saed")  # fine-tuning keeps the baseline the model learnt against
    if cfg.delta_saed and saed is None:
        from dftflow.ml.saed import fit_saed

        fit_set = ProbeDataset(cfg.data.dataset, train_set.ids, n_probes=cfg.saed_probes, seed=cfg.seed + 7)
        saed = fit_saed([{k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in fit_set[i].items()}
                         for i in range(len(fit_set))])
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
        ckpt = load_checkpoint(last)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = TrainState(**ckpt["state"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        np.random.set_state(ckpt["rng"]["numpy"])
        random.setstate(ckpt["rng"]["python"])
        if cfg.delta_saed:
            saed = ckpt.get("saed") or saed
            extra = {**extra, "saed": saed}
    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model)
    if cfg.data.batch_size % world:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} is not divisible by {world} processes")
    sampler = StepSampler(len(train_set), cfg.data.batch_size, cfg.seed)
    log_path = out / "log.csv"
    if rank == 0 and not (resume and log_path.exists()):
        log_path.write_text("step,loss,lr,steps_per_s,val_eps_mae\n")
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
        loss = _loss(ddp_model, batch, cfg.model.spin, cfg.occupancy_weight, density=not cfg.freeze_density,
                     relative=cfg.data.loss == "relative_l1")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        state.step += 1
        value = float(loss.detach())
        if world > 1:
            t = torch.tensor([value])
            torch.distributed.all_reduce(t)
            value = float(t) / world
        row = {"step": state.step, "loss": value, "lr": scheduler.get_last_lr()[0]}
        last_step = state.step == cfg.optim.max_steps or out_of_time
        if state.step % cfg.optim.val_every == 0 or last_step:
            now = time.perf_counter()
            row["steps_per_s"] = (state.step - s_last) / max(now - t_last, 1e-9)
            t_last, s_last = now, state.step
            if rank == 0 and len(val_set):
                row["val_eps_mae"] = validate(model, val_set, cfg, dtype, saed)
                if row["val_eps_mae"] < state.best_val:
                    state.best_val = row["val_eps_mae"]
                    save_checkpoint(out / "checkpoint_best.pt", model, optimizer, scheduler, state, cfg, extra)
        state.history.append(row)
        if rank == 0:
            with open(log_path, "a", newline="") as fh:
                csv.writer(fh).writerow([row["step"], f"{row['loss']:.6g}", f"{row['lr']:.6g}",
                                         f"{row.get('steps_per_s', ''):}", row.get("val_eps_mae", "")])
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
