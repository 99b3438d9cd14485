"""The training loss: L1 on the densities at the probe points, plus the occupancies' L1 when they are learnt.

The density term is the mean |ρ̂ − ρ| over the batch's probes (both channels
of a spin model; with ``relative`` each probe divided by its structure's mean
|ρ|, so every structure counts by its relative error, as ε_mae does). The
occupancy term is the mean |error| over the irreps entries each atom's species
has, weighted by ``occupancy_weight``; with the density frozen it is the whole
loss and only the occupancy head runs.
"""

from __future__ import annotations

import torch


def occupancy_loss(occ: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean |error| over the irreps entries that belong to each atom's species."""
    mask = batch["occupancy_mask"]
    return ((occ - batch["target_occupancy"]).abs() * mask).sum() / mask.sum().clamp(min=1)


def training_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], spin: bool,
                  occupancy_weight: float = 0.0, density: bool = True, relative: bool = False) -> torch.Tensor:
    """The loss of ``model`` (or its DistributedDataParallel wrapper) on a :func:`~dftflow.ml.batch.graph_batch`.

    ``density=False``: the density part is frozen, only the occupancy head is evaluated (no probes needed).
    """
    if not density:
        raw = model.module if hasattr(model, "module") else model
        return occupancy_loss(raw.occupancies(raw.atom_features(batch), batch["numbers"]), batch)
    if occupancy_weight:
        pred, occ = model(batch, with_occupancies=True)
        occ_loss = occupancy_loss(occ, batch)
    else:
        pred, occ_loss = model(batch), 0.0
    if spin:
        density_loss = (pred[:, 0] - batch["target"]).abs().mean() + (pred[:, 1] - batch["target_spin"]).abs().mean()
    elif relative:
        density_loss = ((pred - batch["target"]).abs() * batch["probe_weight"]).mean()
    else:
        density_loss = (pred - batch["target"]).abs().mean()
    return density_loss + occupancy_weight * occ_loss
