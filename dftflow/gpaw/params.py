"""GPAW parameters from a structure and an input set; what gets recorded with each result."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ase import Atoms
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from dftflow.errors import DftflowError
from dftflow.inputsets import InputSet, kpoint_mesh


class EngineError(DftflowError):
    """A calculation that cannot run or did not succeed, with the reason."""


def to_atoms(structure: Structure, inputset: InputSet) -> Atoms:
    """ASE atoms with the input set's initial magnetic moments (when spin-polarised)."""
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.info.clear()
    symbols = atoms.get_chemical_symbols()
    if inputset.spin_polarized(symbols):
        atoms.set_initial_magnetic_moments(inputset.initial_magmoms(symbols))
    else:
        atoms.set_initial_magnetic_moments(None)
    return atoms


def available_setups(symbols: list[str], xc: str) -> list[str]:
    """Elements of ``symbols`` that have no PAW dataset for ``xc`` on GPAW's setup paths."""
    from pathlib import Path

    import gpaw

    family = "PBE" if xc.upper() in ("PBE", "HSE06", "PBE0") else xc.upper()
    missing = []
    for symbol in sorted(set(symbols)):
        found = any(list(Path(p).glob(f"{symbol}.{family}*")) or list(Path(p).glob(f"{symbol}.*.{family}*"))
                    for p in gpaw.setup_paths)
        if not found:
            missing.append(symbol)
    return missing


def gpaw_parameters(atoms: Atoms, inputset: InputSet) -> dict[str, Any]:
    """Plain, JSON-ready GPAW parameters (recorded verbatim with the result)."""
    if inputset.engine != "gpaw":
        raise EngineError(f"input set {inputset.name!r} is for {inputset.engine}, not gpaw")
    symbols = atoms.get_chemical_symbols()
    mesh = kpoint_mesh(atoms.cell.array, inputset.kpoint_density)
    params: dict[str, Any] = {
        "mode": {"name": "pw", "ecut": inputset.ecut},
        "xc": inputset.xc,
        "kpts": {"size": list(mesh), "gamma": True},
        "occupations": {"name": inputset.smearing.name, "width": inputset.smearing.width},
        "convergence": dict(inputset.convergence),
        "maxiter": inputset.maxiter,
        "spinpol": inputset.spin_polarized(symbols),
    }
    u = inputset.hubbard_shells()
    present = {s: u[s] for s in sorted(set(symbols)) if s in u}
    if present:
        if inputset.xc.upper() != "PBE":
            raise EngineError(f"input set {inputset.name!r}: Hubbard U is only used with PBE, not {inputset.xc}")
        params["setups"] = {s: f":{shell},{value}" for s, (shell, value) in present.items()}
    return params


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def versions() -> dict[str, str]:
    import ase
    import gpaw

    out = {"gpaw": gpaw.__version__, "ase": ase.__version__}
    try:
        import gpaw_data

        out["gpaw_data"] = getattr(gpaw_data, "__version__", "unknown")
    except ImportError:
        out["gpaw_data"] = "not installed"
    return out
