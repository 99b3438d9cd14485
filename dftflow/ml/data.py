"""What a training run draws from its dataset: the materials of each phase and the structures of each step.

The material ids come from the config (explicit ids, a split file's phase, or
the whole dataset); :class:`StepSampler` picks each step's structures as a
function of (seed, step) only, so a resumed or data-parallel run sees the same
data. The elements and PAW projector layouts those materials hold decide the
occupancy head's layouts (:func:`occupancy_layouts`) and which validation
materials a run cannot speak for (:func:`unseen_elements`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dftflow.errors import ConfigError
from dftflow.ml.config import TrainConfig


class StepSampler:
    """Structure indices of each step: a function of (seed, step) only."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def indices(self, step: int) -> list[int]:
        rng = np.random.default_rng([self.seed, step])
        return [int(i) for i in rng.integers(0, self.n, self.batch_size)]


def phase_ids(cfg: TrainConfig, phase: str) -> list[str]:
    """The material ids of ``phase`` (train or val): ``data.*_ids``, else the split's phase, else every material."""
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
