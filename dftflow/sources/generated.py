"""Generated candidates: DiffCSP / DiffCSP++ / CDVAE ``.pt`` files and MatterGen extxyz.

The ``.pt`` files are pickles. They are read with a restricted unpickler that
rebuilds tensors and plain containers and nothing else: any other class in
the file (an ``argparse.Namespace`` of evaluation settings, a torch-geometric
``Batch`` of inputs) becomes an inert placeholder whose code is never imported
or run.

Schema (DiffCSP ``scripts/evaluate.py`` / ``generation.py`` and CDVAE): a dict with
``frac_coords`` (N, 3), ``num_atoms`` (B,), ``atom_types`` (N,) as atomic
numbers or (N, K) per-type scores, ``lengths`` (B, 3) and ``angles`` (B, 3) in
Å/degrees, optionally ``lattices`` (B, 3, 3); each may carry a leading samples
dimension S (``num_evals``), giving S × B structures.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from dftflow.errors import InputError

_ALLOWED = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Size"),
    ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "device"),
    ("torch", "float32"), ("torch", "float64"), ("torch", "int64"), ("torch", "int32"), ("torch", "long"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
}


class Opaque:
    """Stand-in for a class the restricted unpickler refuses to import."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<opaque {self.qualname}>"


def _opaque(module: str, name: str) -> type:
    return type(name, (Opaque,), {"qualname": f"{module}.{name}"})


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        return _opaque(module, name)


class _RestrictedPickleModule:
    """The ``pickle_module`` handed to ``torch.load``."""

    Unpickler = _RestrictedUnpickler
    load = staticmethod(lambda f, **kw: _RestrictedUnpickler(f, **kw).load())
    __name__ = "dftflow_restricted_pickle"


def load_pt(path: Path) -> dict[str, Any]:
    """Load a DiffCSP/CDVAE ``.pt`` file with the restricted unpickler."""
    try:
        import torch
    except ImportError as exc:
        raise InputError(f"{path}: reading .pt files needs torch (pip install 'dftflow[ml]')") from exc
    try:
        data = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except Exception as exc:
        raise InputError(f"{path}: not a readable torch file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
    return data


def _np(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def lattice_from_parameters(lengths: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Lattice rows from (a, b, c) in Å and (α, β, γ) in degrees; NaN rows if impossible."""
    from pymatgen.core import Lattice

    with np.errstate(all="ignore"):
        try:
            return Lattice.from_parameters(*lengths, *angles).matrix
        except Exception:  # impossible angle sets are reported per structure later
            return np.full((3, 3), np.nan)


def split_generated(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """Per-structure arrays (``lattice``, ``numbers``, ``frac_coords``, ``sample``, ``index``)."""
    missing = [k for k in ("frac_coords", "num_atoms", "atom_types") if k not in data]
    if missing:
        raise InputError(f"{path}: missing key(s) {', '.join(missing)} (found: {', '.join(map(str, data))})")
    frac = _np(data["frac_coords"]).astype(float)
    num_atoms = _np(data["num_atoms"]).astype(int)
    types = _np(data["atom_types"])
    if frac.ndim == 2:  # no samples dimension
        frac, num_atoms, types = frac[None], num_atoms[None], types[None]
    n_samples = frac.shape[0]
    if types.ndim == frac.ndim:  # per-type scores: (S, N, K) -> atomic numbers
        types = types.argmax(axis=-1) + 1
    types = types.astype(int)

    if "lattices" in data:
        lattices = _np(data["lattices"]).astype(float)
        if lattices.ndim == 3:
            lattices = lattices[None]
    elif "lengths" in data and "angles" in data:
        lengths, angles = _np(data["lengths"]).astype(float), _np(data["angles"]).astype(float)
        if lengths.ndim == 2:
            lengths, angles = lengths[None], angles[None]
        lattices = np.array([[lattice_from_parameters(lens, angs) for lens, angs in zip(ls, as_)]
                             for ls, as_ in zip(lengths, angles)])
    else:
        raise InputError(f"{path}: needs 'lattices' or 'lengths' and 'angles'")

    if not (num_atoms.shape[0] == types.shape[0] == lattices.shape[0] == n_samples):
        raise InputError(f"{path}: inconsistent samples dimension across keys")
    out = []
    for s in range(n_samples):
        counts = num_atoms[s]
        if counts.sum() != frac.shape[1] or counts.sum() != types.shape[1]:
            raise InputError(f"{path}: sample {s}: num_atoms sums to {counts.sum()} "
                             f"but frac_coords has {frac.shape[1]} rows")
        if lattices.shape[1] != counts.shape[0]:
            raise InputError(f"{path}: sample {s}: {lattices.shape[1]} lattices for {counts.shape[0]} structures")
        offsets = np.concatenate([[0], np.cumsum(counts)])
        for i in range(counts.shape[0]):
            lo, hi = offsets[i], offsets[i + 1]
            out.append({
                "lattice": lattices[s, i].tolist(),
                "numbers": types[s, lo:hi].tolist(),
                "frac_coords": frac[s, lo:hi].tolist(),
                "sample": s,
                "index": i,
            })
    return out


def read_extxyz(path: Path | str, data: bytes | None = None) -> list[dict[str, Any]]:
    """Frames of a (MatterGen) extxyz file as per-structure arrays."""
    from ase.io import read

    source: Any = io.StringIO(data.decode()) if data is not None else str(path)
    try:
        frames = read(source, index=":", format="extxyz")
    except Exception as exc:
        raise InputError(f"{path}: not a readable extxyz file ({type(exc).__name__}: {exc})") from exc
    out = []
    for i, atoms in enumerate(frames):
        cell = np.asarray(atoms.cell.array, dtype=float)
        with np.errstate(all="ignore"):
            frac = np.linalg.solve(cell.T, atoms.positions.T).T if abs(np.linalg.det(cell)) > 1e-12 \
                else np.full_like(atoms.positions, np.nan)
        out.append({"lattice": cell.tolist(), "numbers": atoms.numbers.tolist(),
                    "frac_coords": frac.tolist(), "index": i})
    return out
