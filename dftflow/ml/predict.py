"""Full-grid density prediction for any structure, in chunks of probe points with bounded memory.

The atoms' features are computed once; the grid is then walked in chunks of
``chunk`` points, each with its own atom → probe graph (from one cached set
of periodic images), so the peak memory is that of one chunk plus the output
grid. No density file is needed: only the structure and the grid shape (by
default the grid VASP would use at ``grid_spacing``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dftflow.ml.graph import PeriodicImages, make_batch
from dftflow.ml.model import ChargE3Net
from dftflow.ml.symmetry import SYMPREC, grid_orbits

#: atom → probe edges per chunk of a full-grid prediction (keeps the per-edge intermediates near cache size;
#: 8,000 was the fastest of 1,400–22,000 at mul 40 and mul 500 on one core)
EDGES_PER_CHUNK = 8_000


def load_model(checkpoint: str | Path, *, dtype: torch.dtype = torch.float32) -> tuple[ChargE3Net, dict[str, Any]]:
    """The model of ``checkpoint`` (eval mode) and the checkpoint dict; a bad file is a
    :class:`~dftflow.ml.checkpoint.CheckpointError` naming it."""
    from dftflow.ml.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    return model_from_checkpoint(ckpt, checkpoint, dtype=dtype), ckpt


def default_grid(lattice: np.ndarray, spacing: float = 0.1) -> tuple[int, int, int]:
    """A grid with at most ``spacing`` Å between points along each axis, rounded up to even sizes."""
    lengths = np.linalg.norm(np.asarray(lattice, dtype=float), axis=1)
    return tuple(int(2 * math.ceil(n / (2 * spacing))) for n in lengths)  # type: ignore[return-value]


def predict_grid(model: ChargE3Net, structure: Any, grid: tuple[int, int, int], *, chunk: int | None = None,
                 symmetry: bool = True, dtype: torch.dtype = torch.float32, progress: Any = None,
                 kernel: bool = True) -> dict[str, Any]:
    """ρ (e/Å³) on ``grid`` for ``structure`` (a pymatgen Structure); also timings and chunk sizes.

    With ``symmetry`` only one point per space-group orbit of the grid is
    evaluated (:mod:`dftflow.ml.symmetry`) and copied to the others. Chunks
    hold ``chunk`` points, by default as many as give about
    :data:`EDGES_PER_CHUNK` atom → probe edges (or the probe kernel's own choice; measured on the first chunk):
    small enough for the intermediates to stay in cache-sized memory.
    ``kernel``: evaluate the probes with :class:`dftflow.ml.probe_kernel.ProbeKernel`
    (the same function, faster); false calls ``model.probe_density`` (the definition).
    """
    cell = structure.lattice.matrix
    positions = structure.cart_coords
    numbers = [site.specie.Z for site in structure]
    cutoff = model.config.cutoff
    t0 = time.perf_counter()
    atoms = make_batch([{"cell": cell, "positions": positions, "numbers": numbers}], cutoff, dtype=dtype)
    with torch.no_grad():
        features = model.atom_features(atoms)
    if kernel:
        from dftflow.ml.probe_kernel import ProbeKernel

        evaluate = ProbeKernel(model, features)
        edges_per_chunk = evaluate.edges_per_chunk or EDGES_PER_CHUNK
    else:
        edges_per_chunk = EDGES_PER_CHUNK

        def evaluate(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return model.probe_density(batch, features)
    images = PeriodicImages(positions, cell, cutoff)
    nx, ny, nz = grid
    n = nx * ny * nz
    orbits = grid_orbits(structure, grid) if symmetry else None
    points = orbits.representatives if orbits is not None else None
    n_eval = len(points) if points is not None else n
    out = np.empty((n_eval, 2) if model.config.spin else n_eval, dtype=np.float32)
    t_atoms = time.perf_counter() - t0
    if progress is not None:
        progress.start("predict", n_eval)
    max_edges, start, size = 0, 0, chunk or 256
    while start < n_eval:
        stop = min(n_eval, start + size)
        idx = points[start:stop] if points is not None else np.arange(start, stop)
        frac = np.stack(np.unravel_index(idx, (nx, ny, nz)), axis=-1) / np.array([nx, ny, nz], dtype=float)
        probes = frac @ cell
        edges = images.edges_to(probes)
        max_edges = max(max_edges, len(edges))
        batch = dict(atoms)
        batch["probe_positions"] = torch.as_tensor(probes, dtype=dtype)
        batch["probe_graph"] = torch.zeros(len(probes), dtype=torch.long)
        batch["probe_edge_sender"] = torch.as_tensor(edges.sender, dtype=torch.long)
        batch["probe_edge_receiver"] = torch.as_tensor(edges.receiver, dtype=torch.long)
        batch["probe_edge_shift"] = torch.as_tensor(edges.shift, dtype=torch.long).reshape(-1, 3)
        with torch.no_grad():
            out[start:stop] = evaluate(batch).cpu().numpy()
        if progress is not None:
            progress.advance(stop - start)
        if chunk is None:
            size = int(np.clip(edges_per_chunk * (stop - start) / max(1, len(edges)), 64, 100_000))
        start = stop
    if orbits is not None:
        out = out[orbits.inverse]
    shape = (nx, ny, nz, 2) if model.config.spin else (nx, ny, nz)
    rho = out.reshape(shape)
    return {"rho": rho, "grid": (nx, ny, nz), "seconds": time.perf_counter() - t0, "seconds_atoms": t_atoms,
            "max_chunk_edges": max_edges, "points_evaluated": n_eval,
            "symmetry": None if orbits is None else {"spacegroup": orbits.spacegroup, "operations": orbits.operations,
                                                     "symprec": SYMPREC}}


def predict_density(model: ChargE3Net, ckpt: dict[str, Any], structure: Any, grid: tuple[int, int, int], *,
                    nelect: float | None = None, chunk: int | None = None, symmetry: bool = True,
                    progress: Any = None) -> dict[str, Any]:
    """What a user runs: the model's grid, the SAED added back for Δ-SAED models, rescaled to ``nelect``.

    Returns ``rho`` (e/Å³), ``diff`` (the magnetisation for spin models, else None),
    ``electrons_predicted`` (before rescaling), ``scale``, ``seconds`` (all of it),
    ``points_evaluated`` and ``symmetry`` (see :func:`predict_grid`).
    """
    from dftflow.ml.saed import add_saed

    t0 = time.perf_counter()
    result = predict_grid(model, structure, grid, chunk=chunk, symmetry=symmetry, progress=progress)
    rho = result["rho"][..., 0] if model.config.spin else result["rho"]
    rho = add_saed(rho, structure, ckpt.get("saed"))
    electrons = float(rho.sum(dtype=np.float64) * structure.volume / rho.size)
    factor = 1.0
    if nelect is not None:
        rho, factor = rescale(rho, structure.volume, nelect)
    return {"rho": rho, "diff": result["rho"][..., 1] if model.config.spin else None, "grid": tuple(grid),
            "electrons_predicted": electrons, "scale": factor, "seconds": time.perf_counter() - t0,
            "points_evaluated": result["points_evaluated"], "symmetry": result["symmetry"]}


def is_correction_model(ckpt: dict[str, Any]) -> bool:
    """Whether the checkpoint predicts a correction to GPAW's atomic guess (``data.target: smooth_delta``)."""
    return ckpt.get("target") == "smooth_delta"


def unseen_elements(ckpt: dict[str, Any], structure: Any) -> list[str]:
    """Elements of ``structure`` that the model's training data did not have (empty when not recorded)."""
    known = ckpt.get("train_numbers")
    if known is None:
        return []
    return sorted({site.specie.symbol for site in structure if site.specie.Z not in set(known)})


def predict_correction(model: ChargE3Net, ckpt: dict[str, Any], structure: Any, grid: tuple[int, int, int], *,
                       chunk: int | None = None, symmetry: bool = True) -> dict[str, Any]:
    """A correction model's change to GPAW's atomic guess on the calculation's grid.

    Returns ``delta`` (e/Å³, spin summed: add to GPAW's superposition-of-atoms
    smooth density), ``delta_D`` (one spin-summed (ni, ni) change of each atom's
    density matrix from the free atom's, GPAW's basis, zeros for an element the
    head never saw; None without a GPAW occupancy head), ``seconds`` and
    ``points_evaluated``. Nothing is rescaled: the atomic
    guess already holds the valence electrons, and GPAW renormalises the sum.
    """
    if not is_correction_model(ckpt):
        raise ValueError("this checkpoint predicts densities, not corrections to GPAW's atomic guess")
    t0 = time.perf_counter()
    result = predict_grid(model, structure, grid, chunk=chunk, symmetry=symmetry)
    head = model.occupancy_head
    delta_D = None
    if head is not None and head.kind == "gpaw":
        from dftflow.ml.occupancy import gpaw_atomic_density_matrix

        # the change from the free atom (GPAW's own guess), one setup per element; an element the head
        # never saw keeps the guess (no change)
        free = {el.symbol: gpaw_atomic_density_matrix(el.symbol) for el in structure.composition.elements}
        predicted = predict_occupancies(model, structure, unknown=free.__getitem__)
        delta_D = [D - free[site.specie.symbol] for site, D in zip(structure, predicted, strict=True)]
    return {"delta": result["rho"], "delta_D": delta_D, "seconds": time.perf_counter() - t0,
            "points_evaluated": result["points_evaluated"], "symmetry": result["symmetry"]}


def predict_occupancies(model: ChargE3Net, structure: Any, *, dtype: torch.dtype = torch.float32,
                        unknown: Callable[[str], np.ndarray] | None = None) -> list[np.ndarray]:
    """The occupancy head's prediction for every atom, in the engine's own layout.

    GPAW heads: spin-summed density matrices (GPAW's basis, one (ni, ni) array per atom);
    VASP heads: the augmentation occupancies of the total density (one flat block per atom, as in a CHGCAR).
    An element the head never saw is an error, or, with ``unknown``, gets ``unknown(symbol)``
    (e.g. the free atom's density matrix).
    """
    if model.occupancy_head is None:
        raise ValueError("this model predicts no occupancies (it was trained without occupancy_weight)")
    head = model.occupancy_head
    numbers = [site.specie.Z for site in structure]
    missing = sorted({z for z in numbers if z not in head.layouts})
    if missing and unknown is None:
        from dftflow.errors import InputError

        raise InputError(f"the occupancy head has no layout for Z={missing} (not in its training data)")
    batch = make_batch([{"cell": structure.lattice.matrix, "positions": structure.cart_coords, "numbers": numbers}],
                       model.config.cutoff, dtype=dtype)
    with torch.no_grad():
        occ = model.occupancies(model.atom_features(batch), batch["numbers"]).double().numpy()
    return [head.layouts[z].from_irreps(occ[a, head.index(z).numpy()]) if z in head.layouts
            else np.asarray(unknown(site.specie.symbol), dtype=float)
            for a, (z, site) in enumerate(zip(numbers, structure, strict=True))]


def save_density_matrices(model: ChargE3Net, structure: Any, path: Path) -> list[str]:
    """A GPAW head's spin-summed density matrices of every atom → ``path`` (npz: ``D_<a>`` in GPAW's basis,
    ``symbols``), the occupancies of a GPAW restart (``dftflow.gpaw.restart.GridConverter.state``).

    An element the head never saw gets the free atom's matrix (GPAW's atomic guess); returns those elements.
    """
    from dftflow.ml.occupancy import gpaw_atomic_density_matrix

    head = model.occupancy_head
    if head is None or head.kind != "gpaw":
        raise ValueError("this model has no GPAW occupancy head")
    matrices = predict_occupancies(model, structure, unknown=gpaw_atomic_density_matrix)
    symbols = [site.specie.symbol for site in structure]
    np.savez(path, symbols=np.array(symbols), **{f"D_{a}": D for a, D in enumerate(matrices)})
    return sorted({site.specie.symbol for site in structure if site.specie.Z not in head.layouts})


def predicted_augmentation(model: ChargE3Net, structure: Any, *, spin: bool = False,
                           sizes: list[int] | None = None) -> tuple[dict[str, list[np.ndarray]] | None, str]:
    """CHGCAR augmentation blocks from a VASP occupancy head, and a note of where they came from.

    Returns ``(None, reason)`` when the model has no VASP head, the head never saw an element of
    ``structure``, or its blocks do not have the per-atom ``sizes`` of a reference CHGCAR (other
    POTCARs). ``spin``: the magnetisation block (``diff``) is written as zeros — it is not predicted.
    """
    head = model.occupancy_head
    if head is None or head.kind != "vasp":
        return None, "none (the model has no VASP occupancy head)"
    missing = sorted({site.specie.Z for site in structure} - set(head.layouts))
    if missing:
        return None, f"none (the occupancy head never saw Z={missing})"
    total = predict_occupancies(model, structure)
    if sizes is not None and [len(v) for v in total] != list(sizes):
        return None, (f"none (the head's blocks have {sorted({len(v) for v in total})} values, the reference "
                      f"CHGCAR {sorted(set(sizes))}: other POTCARs)")
    blocks = {"total": total}
    if spin:
        blocks["diff"] = [np.zeros_like(v) for v in total]
    return blocks, "predicted"


def rescale(rho: np.ndarray, volume: float, nelect: float) -> tuple[np.ndarray, float]:
    """Scale ρ so that it integrates to ``nelect``; returns the grid and the factor applied."""
    electrons = float(np.sum(rho, dtype=np.float64) * volume / rho.size)
    if electrons <= 1e-3 * nelect:
        from dftflow.errors import DensityError

        raise DensityError(f"the predicted density integrates to {electrons:.4g} electrons, not about {nelect:g}; "
                           "refusing to rescale it (the model does not describe this structure)")
    factor = nelect / electrons
    return rho * factor, factor


def write_prediction_chgcar(structure: Any, rho: np.ndarray, path: str | Path, *, diff: np.ndarray | None = None,
                            augmentation: dict | None = None) -> None:
    """A CHGCAR (ρ·V, VASP's layout) of a predicted density; augmentation blocks when given."""
    from dftflow.density.chgcar import write_chgcar
    from dftflow.density.model import Density

    volume = structure.volume
    density = Density(structure, np.asarray(rho, dtype=np.float64) * volume,
                      diff=None if diff is None else np.asarray(diff, dtype=np.float64) * volume,
                      augmentation=augmentation, source="dftflow predict")
    write_chgcar(density, path)
