"""Periodic neighbour graphs for atoms and probe points, vectorised with a k-d tree.

Edges are (sender atom, receiver, integer cell shift): the sender sits at
``positions[sender] + shift @ cell``. The atoms are replicated over every
cell shift that can bring an image within ``cutoff`` of the home cell (the
number of shifts per axis comes from the cell heights, so it is right for
thin cells where the cutoff exceeds a cell height), and one k-d tree over
those images answers all receivers at once — there is no loop over probes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass(slots=True)
class Edges:
    sender: np.ndarray  # (E,) atom index
    receiver: np.ndarray  # (E,) atom or probe index
    shift: np.ndarray  # (E, 3) integer cell shift of the sender

    def __len__(self) -> int:
        return len(self.sender)


def cell_shifts(cell: np.ndarray, cutoff: float) -> np.ndarray:
    """Every integer shift (n1, n2, n3) whose image of the home cell can come within ``cutoff`` of it."""
    cell = np.asarray(cell, dtype=float)
    heights = 1.0 / np.linalg.norm(np.linalg.inv(cell).T, axis=1)  # distance between opposite faces
    reach = np.ceil(cutoff / heights).astype(int)
    axes = [np.arange(-n, n + 1) for n in reach]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def _images(frac: np.ndarray, cell: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cartesian images of the atoms (wrapped into the cell), their atom index and integer shift."""
    wrapped = frac - np.floor(frac)
    base_shift = np.rint(frac - wrapped).astype(int)  # frac = wrapped + base_shift
    shifts = cell_shifts(cell, cutoff)
    n, s = len(frac), len(shifts)
    image_frac = (wrapped[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    atom = np.tile(np.arange(n), s)
    # the shift relative to the atom's own (unwrapped) coordinates
    shift = (np.repeat(shifts, n, axis=0) - np.tile(base_shift, (s, 1)))
    return image_frac @ cell, atom, shift


def atom_edges(positions: np.ndarray, cell: np.ndarray, cutoff: float) -> Edges:
    """Atom → atom edges within ``cutoff`` (no self edge at zero shift)."""
    edges = probe_edges(positions, cell, positions, cutoff)
    keep = ~((edges.sender == edges.receiver) & (edges.shift == 0).all(axis=1))
    return Edges(edges.sender[keep], edges.receiver[keep], edges.shift[keep])


class PeriodicImages:
    """The atoms' periodic images around the home cell, with a k-d tree, reusable for many probe chunks."""

    def __init__(self, positions: np.ndarray, cell: np.ndarray, cutoff: float) -> None:
        self.cell = np.asarray(cell, dtype=float)
        self.inv = np.linalg.inv(self.cell)
        self.cutoff = cutoff
        frac = np.asarray(positions, dtype=float) @ self.inv
        self.image_pos, self.atom, self.shift = _images(frac, self.cell, cutoff)
        self.tree = cKDTree(self.image_pos) if len(self.image_pos) else None

    def edges_to(self, probes: np.ndarray) -> Edges:
        """Atom → probe edges within the cutoff; probes may lie anywhere (not only in the home cell)."""
        probes = np.asarray(probes, dtype=float).reshape(-1, 3)
        pfrac = probes @ self.inv
        pshift = np.floor(pfrac).astype(int)  # wrap into the cell, shift the edges back
        wrapped = (pfrac - pshift) @ self.cell
        if self.tree is None or len(probes) == 0:
            empty = np.zeros(0, dtype=np.int64)
            return Edges(empty, empty, np.zeros((0, 3), dtype=int))
        coo = self.tree.sparse_distance_matrix(cKDTree(wrapped), self.cutoff, output_type="coo_matrix")
        img, recv = coo.row.astype(np.int64), coo.col.astype(np.int64)
        return Edges(self.atom[img], recv, self.shift[img] + pshift[recv])


def probe_edges(positions: np.ndarray, cell: np.ndarray, probes: np.ndarray, cutoff: float) -> Edges:
    """Atom → probe edges within ``cutoff``; probes may lie anywhere (not only in the home cell)."""
    return PeriodicImages(positions, cell, cutoff).edges_to(probes)


def make_batch(systems: list[dict], cutoff: float, *, dtype=None) -> dict:
    """Tensors for :class:`dftflow.ml.model.ChargE3Net` from several structures and their probes.

    Each system is a dict with ``cell`` (3, 3), ``positions`` (N, 3) and
    ``numbers`` (N,) and optionally ``probe_positions`` (P, 3), all in Å.
    Indices of atoms and probes are offset so that the systems form one graph.
    """
    import torch

    dtype = dtype or torch.get_default_dtype()
    keys = ("numbers", "positions", "atom_graph", "atom_edge_sender", "atom_edge_receiver", "atom_edge_shift",
            "probe_positions", "probe_graph", "probe_edge_sender", "probe_edge_receiver", "probe_edge_shift")
    parts: dict[str, list] = {k: [] for k in keys}
    cells = []
    n_atoms = n_probes = 0
    for g, system in enumerate(systems):
        cell = np.asarray(system["cell"], dtype=float)
        pos = np.asarray(system["positions"], dtype=float)
        probes = np.asarray(system.get("probe_positions", np.zeros((0, 3))), dtype=float)
        ae = atom_edges(pos, cell, cutoff)
        pe = probe_edges(pos, cell, probes, cutoff)
        cells.append(cell)
        parts["numbers"].append(np.asarray(system["numbers"], dtype=np.int64))
        parts["positions"].append(pos)
        parts["atom_graph"].append(np.full(len(pos), g))
        parts["atom_edge_sender"].append(ae.sender + n_atoms)
        parts["atom_edge_receiver"].append(ae.receiver + n_atoms)
        parts["atom_edge_shift"].append(ae.shift)
        parts["probe_positions"].append(probes)
        parts["probe_graph"].append(np.full(len(probes), g))
        parts["probe_edge_sender"].append(pe.sender + n_atoms)
        parts["probe_edge_receiver"].append(pe.receiver + n_probes)
        parts["probe_edge_shift"].append(pe.shift)
        n_atoms += len(pos)
        n_probes += len(probes)
    out = {k: np.concatenate(v) for k, v in parts.items()}
    batch = {k: torch.as_tensor(v, dtype=dtype if v.dtype.kind == "f" else torch.long) for k, v in out.items()}
    batch["probe_positions"] = batch["probe_positions"].reshape(-1, 3)
    for k in ("atom_edge_shift", "probe_edge_shift"):
        batch[k] = batch[k].reshape(-1, 3)
    batch["cell"] = torch.as_tensor(np.stack(cells), dtype=dtype)
    return batch
