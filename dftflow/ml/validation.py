"""Validation during training: ε_mae of the density and the occupancies' error on the validation materials.

ε_mae = Σ|ρ − ρ̂| / Σ|ρ| per structure (the SAED baseline of a Δ-SAED model
added back to both), averaged over the structures: the number ``log.csv``'s
``val_eps_mae`` column and ``checkpoint_best.pt`` go by. The occupancy error
is the mean absolute error of the predicted density matrices or augmentation
occupancies per element, in the engine's own layout.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from dftflow.ml.batch import OCCUPANCY_KEYS, graph_batch, to_device
from dftflow.ml.config import TrainConfig
from dftflow.ml.model import ChargE3Net


def epsilon_mae(pred: torch.Tensor, target: torch.Tensor, counts: torch.Tensor) -> list[float]:
    """Σ|ρ − ρ̂| / Σ|ρ| per structure."""
    out = []
    for p, t in zip(torch.split(pred, counts.tolist()), torch.split(target, counts.tolist())):
        out.append(float((p - t).abs().sum() / t.abs().sum()))
    return out


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
