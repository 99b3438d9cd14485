"""Model batches for training and validation: loader items → graphs with their targets.

:func:`graph_batch` turns the items of :class:`~dftflow.dataset.loader.ProbeDataset`
(a structure and its probe points) into one batch of ChargE3Net graphs with
the target densities (minus the SAED baseline of a Δ-SAED model), the weights
of the relative loss and, for a model with an occupancy head, the occupancy
targets in the head's irreps layout (:func:`occupancy_targets`). Graphs are
built on the CPU; :func:`to_device` moves a batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dftflow.errors import ConfigError
from dftflow.ml.graph import make_batch

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
