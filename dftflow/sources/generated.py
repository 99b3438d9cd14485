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


def _array(data: dict[str, Any], key: str, path: Path, ndims: tuple[int, ...], last: int | None = None) -> np.ndarray:
    """``data[key]`` as a numeric array with one of ``ndims`` dimensions (and ``last`` values along the last)."""
    value = data[key]
    try:
        array = _np(value)
    except (TypeError, ValueError, RuntimeError) as exc:  # ragged lists, tensors numpy cannot take
        raise InputError(f"{path}: {key!r} is not an array ({type(exc).__name__}: {exc})") from None
    if array.dtype.kind not in "biuf":
        raise InputError(f"{path}: {key!r} is not a numeric array (got {_describe(value)})")
    if array.ndim not in ndims or (last is not None and array.shape[-1] != last):
        want = " or ".join(f"{n}-D" for n in ndims) + ("" if last is None else f" with {last} values per row")
        raise InputError(f"{path}: {key!r} has shape {tuple(array.shape)}, expected {want}")
    return array


def _integers(array: np.ndarray, key: str, path: Path) -> np.ndarray:
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise InputError(f"{path}: {key!r} holds values that are not whole numbers")
    return array.astype(np.int64)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


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
    frac = _array(data, "frac_coords", path, (2, 3), last=3).astype(float)
    samples = frac.ndim == 3  # a leading samples dimension
    num_atoms = _integers(_array(data, "num_atoms", path, (2,) if samples else (1,)), "num_atoms", path)
    types = _array(data, "atom_types", path, (frac.ndim - 1, frac.ndim))
    if not samples:
        frac, num_atoms, types = frac[None], num_atoms[None], types[None]
    n_samples = frac.shape[0]
    if types.ndim == frac.ndim:  # per-type scores: (S, N, K) -> atomic numbers
        if not np.isfinite(types).all():
            raise InputError(f"{path}: 'atom_types' scores are not all finite")
        types = types.argmax(axis=-1) + 1
    types = _integers(types, "atom_types", path)
    if (num_atoms < 0).any():
        raise InputError(f"{path}: 'num_atoms' holds negative counts")

    if "lattices" in data:
        lattices = _array(data, "lattices", path, (3, 4) if samples else (3,), last=3).astype(float)
        if lattices.ndim == 3:
            lattices = lattices[None]
        if lattices.shape[-2] != 3:
            raise InputError(f"{path}: 'lattices' has shape {tuple(lattices.shape)}, expected 3x3 matrices")
    elif "lengths" in data and "angles" in data:
        ndims = (3,) if samples else (2,)
        lengths = _array(data, "lengths", path, ndims, last=3).astype(float)
        angles = _array(data, "angles", path, ndims, last=3).astype(float)
        if lengths.shape != angles.shape:
            raise InputError(f"{path}: 'lengths' has shape {tuple(lengths.shape)}, 'angles' {tuple(angles.shape)}")
        if lengths.ndim == 2:
            lengths, angles = lengths[None], angles[None]
        lattices = np.array([[lattice_from_parameters(lens, angs) for lens, angs in zip(ls, as_)]
                             for ls, as_ in zip(lengths, angles)]).reshape(*lengths.shape[:2], 3, 3)
    else:
        raise InputError(f"{path}: needs 'lattices' or 'lengths' and 'angles'")

    if not (num_atoms.shape[0] == types.shape[0] == lattices.shape[0] == n_samples):
        raise InputError(f"{path}: inconsistent samples dimension across keys")
    if types.shape[1] != frac.shape[1]:
        raise InputError(f"{path}: 'atom_types' has {types.shape[1]} atoms per sample, 'frac_coords' {frac.shape[1]}")
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
