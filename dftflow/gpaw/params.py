"""GPAW parameters from a structure and an input set; what gets recorded with each result."""

from __future__ import annotations

import functools
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


@functools.cache
def has_bound_shell(symbol: str, shell: str, xc: str = "PBE") -> bool:
    """Whether GPAW's PAW setup of ``symbol`` holds a bound partial wave of ``shell`` (s, p, d, f).

    DFT+U acts on the bound partial waves of the shell; a setup that keeps the
    shell in the core (gpaw-data 1.2.1: Ga, whose 3d VASP's Ga_d POTCAR holds
    in the valence) has none, and GPAW refuses U there.
    """
    from gpaw.setup import create_setup
    from gpaw.xc import XC

    setup = create_setup(symbol, XC(xc))
    ell = "spdf".index(shell)
    return any(lj == ell and nj != -1 for lj, nj in zip(setup.l_j, setup.n_j, strict=True))


def hubbard_setups(symbols: list[str], inputset: InputSet) -> tuple[dict[str, str], dict[str, str]]:
    """GPAW ``setups`` strings for the set's U on these elements, and the elements whose U the
    setups cannot carry, with the reason (they run without U)."""
    u = inputset.hubbard_shells()
    setups, skipped = {}, {}
    for symbol in sorted(set(symbols)):
        if symbol not in u:
            continue
        shell, value = u[symbol]
        if has_bound_shell(symbol, shell, inputset.xc if inputset.xc.upper() == "PBE" else "PBE"):
            setups[symbol] = f":{shell},{value}"
        else:
            skipped[symbol] = f"GPAW's {symbol} setup holds no bound {shell} partial wave: run without U ({value} eV)"
    return setups, skipped


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
    if any(s in u for s in symbols):
        if inputset.xc.upper() != "PBE":
            raise EngineError(f"input set {inputset.name!r}: Hubbard U is only used with PBE, not {inputset.xc}")
        setups, _ = hubbard_setups(symbols, inputset)
        if setups:
            params["setups"] = setups
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
