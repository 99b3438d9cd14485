"""GPAW calculations in a directory: static (optionally from a supplied density) and relax.

Every calculation writes into its directory:

* ``gpaw.txt`` — GPAW's log;
* ``CHGCAR`` — pseudo density plus compensation charges on the cell grid,
  ρ·V with x fastest (the VASP convention, so the rest of dftflow is
  engine-agnostic); spin-polarised runs add the magnetisation block;
* ``density.npz`` — GPAW's own ``nt_sR`` and atomic density matrices, for exact restarts;
* ``guess.npz`` — the same for the density the SCF started from (GPAW's
  superposition of atoms for a default start): the baseline a model learns
  corrections to;
* ``result.json`` — energy, forces, stress, SCF iterations, electron count,
  and every setting and version that produced them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from dftflow.gpaw import check_version
from dftflow.gpaw.params import (
    EngineError,
    available_setups,
    gpaw_parameters,
    hubbard_setups,
    params_hash,
    to_atoms,
    versions,
)
from dftflow.gpaw.restart import DensityState, scf_from_density, state_of
from dftflow.inputsets import InputSet
from dftflow.sources.records import pack


def _prepare(structure: Structure, inputset: InputSet, workdir: Path) -> tuple[Any, dict[str, Any]]:
    check_version()
    workdir.mkdir(parents=True, exist_ok=True)
    atoms = to_atoms(structure, inputset)
    missing = available_setups(atoms.get_chemical_symbols(), inputset.xc)
    if missing:
        raise EngineError(f"GPAW has no PAW setup for {', '.join(missing)} ({inputset.xc}); "
                          "add one to GPAW_SETUP_PATH or drop the structure")
    return atoms, gpaw_parameters(atoms, inputset)


def write_chgcar(dft: Any, path: Path) -> dict[str, Any]:
    """Write the density as a CHGCAR (ρ·V, x fastest) and return its electron count and grid."""
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.vasp import Chgcar, Poscar

    calc = dft.ase_calculator()
    atoms = dft.atoms
    volume = atoms.get_volume()
    if dft.density.ncomponents == 2:
        up, down = calc.get_pseudo_density(spin=0), calc.get_pseudo_density(spin=1)
        data = {"total": (up + down) * volume, "diff": (up - down) * volume}
    else:
        data = {"total": calc.get_pseudo_density() * volume}
    structure = AseAtomsAdaptor.get_structure(atoms)
    Chgcar(Poscar(structure), data).write_file(str(path))
    total = data["total"]
    return {"grid": list(total.shape), "integrated_electrons": float(total.sum() / total.size)}


def run_static(structure: Structure, inputset: InputSet, workdir: Path | str, *,
               start: DensityState | None = None, nfixed: int = 0) -> dict[str, Any]:
    """Run (or restart) a static SCF in ``workdir`` and write its outputs.

    ``start`` replaces GPAW's atomic guess with a supplied density;
    ``nfixed`` fixed-density steps then come before the SCF.
    """
    workdir = Path(workdir)
    atoms, params = _prepare(structure, inputset, workdir)
    from gpaw.new.scf import KohnShamConvergenceError

    t0 = time.perf_counter()
    try:
        run = scf_from_density(atoms, params, start, nfixed=nfixed, txt=str(workdir / "gpaw.txt"))
    except KohnShamConvergenceError as exc:
        raise EngineError(f"SCF did not converge in {inputset.maxiter} iterations ({exc}); "
                          f"see {workdir / 'gpaw.txt'}") from exc
    dft = run["dft"]
    state = state_of(dft)
    state.save(workdir / "density.npz")
    run["initial"].save(workdir / "guess.npz")
    density_info = write_chgcar(dft, workdir / "CHGCAR")
    magmom, magmoms = 0.0, [0.0] * len(atoms)
    if params["spinpol"]:
        mm_v, mm_av = dft.magmoms()
        magmom, magmoms = float(mm_v[2]), [float(m) for m in mm_av[:, 2]]
    result = {
        "calculation": "static",
        "energy": run["energy"],
        "energy_per_atom": run["energy"] / len(atoms),
        "converged": True,  # an unconverged SCF raised above
        "n_scf": run["n_scf"],
        "n_fixed": run["n_fixed"],
        "start": "supplied" if start is not None else "atomic",
        "magmom": magmom,
        "magmoms": magmoms,
        "nvalence": float(dft.density.nvalence),
        **density_info,
        "wall_s": round(time.perf_counter() - t0, 3),
        "structure": pack(structure),
        "inputset": inputset.name,
        "parameters": params,
        "parameters_hash": params_hash(params),
        "hubbard_not_applied": hubbard_setups(atoms.get_chemical_symbols(), inputset)[1],
        "versions": versions(),
        "files": {"chgcar": "CHGCAR", "density": "density.npz", "guess": "guess.npz", "log": "gpaw.txt"},
    }
    (workdir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def run_relax(structure: Structure, inputset: InputSet, workdir: Path | str) -> dict[str, Any]:
    """Relax positions (and the cell) with ASE's BFGS; returns the relaxed structure."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS
    from gpaw import GPAW
    from pymatgen.io.ase import AseAtomsAdaptor

    workdir = Path(workdir)
    settings = inputset.relax
    if settings is None:
        raise EngineError(f"input set {inputset.name!r} has no relax: section")
    atoms, params = _prepare(structure, inputset, workdir)
    t0 = time.perf_counter()
    atoms.calc = GPAW(**params, txt=str(workdir / "gpaw.txt"))
    target = FrechetCellFilter(atoms) if settings.cell else atoms
    opt = BFGS(target, logfile=str(workdir / "relax.log"), trajectory=str(workdir / "relax.traj"))
    converged = bool(opt.run(fmax=settings.fmax, steps=settings.max_steps))
    relaxed = AseAtomsAdaptor.get_structure(atoms)
    forces = atoms.get_forces()
    result = {
        "calculation": "relax",
        "energy": float(atoms.get_potential_energy()),
        "converged": converged,
        "ionic_steps": int(opt.get_number_of_steps()),
        "max_force": float(np.linalg.norm(forces, axis=1).max()),
        "structure": pack(relaxed),
        "initial_structure": pack(structure),
        "wall_s": round(time.perf_counter() - t0, 3),
        "inputset": inputset.name,
        "parameters": params,
        "parameters_hash": params_hash(params),
        "versions": versions(),
    }
    (workdir / "result.json").write_text(json.dumps(result, indent=2))
    if not converged:
        raise EngineError(f"relaxation did not reach fmax {settings.fmax} eV/Å in {settings.max_steps} steps "
                          f"(max force {result['max_force']:.3f} eV/Å); see {workdir / 'relax.log'}")
    return result


def run(structure: Structure, inputset: InputSet, workdir: Path | str) -> dict[str, Any]:
    """Run what the input set asks for (``calculation: static`` or ``relax``)."""
    if inputset.calculation == "relax":
        return run_relax(structure, inputset, workdir)
    return run_static(structure, inputset, workdir)
