"""VASP makers and flows: relax → static (PBE+U, CHGCAR) → HSE06 static, run through custodian.

The makers are jobflow ``Maker`` dataclasses in the atomate2 style (a ``make``
method that returns a ``Job``), but resolve their inputs with
:mod:`dftflow.vasp.inputs`, so the ECD settings are exact and every result
records them. Each job runs VASP through custodian's ``VaspJob`` with the
standard handlers; when custodian gives up on SCF convergence the job climbs
the input set's fallback ladder (for HSE06: k-point spacing 0.04, then looser
EDIFF/NELM) and tries again. A ``WalltimeHandler`` stops VASP cleanly before
the allocation ends (``DFTFLOW_JOB_END``, set by the batch script). A relax
job that finds the CONTCAR of an earlier, interrupted attempt in its directory
continues from it.

The density never enters a job document: it stays in the job directory
(``CHGCAR``), and the document holds its path.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobflow import Flow, Maker, job

from dftflow.errors import DftflowError


class VaspRunError(DftflowError):
    """VASP (through custodian) did not produce a usable result; the message says why."""


def vasp_command(kind: str = "vasp_std") -> str:
    """The command that starts VASP: ``DFTFLOW_VASP_COMMANDS`` (JSON, from the cluster profile) or ``kind``."""
    commands = json.loads(os.environ.get("DFTFLOW_VASP_COMMANDS", "{}") or "{}")
    return commands.get(kind, kind)


def _remaining_walltime() -> float | None:
    end = os.environ.get("DFTFLOW_JOB_END")
    if not end:
        return None
    from dftflow.config.profile import stop_margin_s

    margin = stop_margin_s()  # DFTFLOW_STOP_MARGIN, with the one default the rocket uses too
    return float(end) - time.time() - margin


def _handlers(wall_time: float | None) -> list[Any]:
    from custodian.vasp.handlers import (
        FrozenJobErrorHandler,
        MeshSymmetryErrorHandler,
        NonConvergingErrorHandler,
        PositiveEnergyErrorHandler,
        PotimErrorHandler,
        StdErrHandler,
        UnconvergedErrorHandler,
        VaspErrorHandler,
        WalltimeHandler,
    )

    handlers = [VaspErrorHandler(), MeshSymmetryErrorHandler(), UnconvergedErrorHandler(),
                NonConvergingErrorHandler(), PotimErrorHandler(), PositiveEnergyErrorHandler(),
                FrozenJobErrorHandler(), StdErrHandler()]
    if wall_time is not None:
        # STOPCAR when the remaining time is short: VASP finishes the step and writes its outputs
        handlers.append(WalltimeHandler(wall_time=max(int(wall_time), 60), buffer_time=60))
    return handlers


def _scf_steps(directory: Path) -> list[int]:
    """SCF steps per ionic step, from OSZICAR (none if VASP wrote none)."""
    from dftflow.vasp.outputs import oszicar_steps

    path = directory / "OSZICAR"
    return oszicar_steps(path) if path.exists() else []


def parse_run(directory: Path) -> dict[str, Any]:
    """Energy, structure, convergence, magnetisation and SCF steps of a finished VASP run."""
    from pymatgen.io.vasp import Outcar, Vasprun

    vasprun_path = directory / "vasprun.xml"
    if not vasprun_path.exists():
        raise VaspRunError(f"{directory}: VASP left no vasprun.xml")
    try:
        vr = Vasprun(str(vasprun_path), parse_dos=False, parse_eigen=False, parse_potcar_file=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means the run is unusable
        raise VaspRunError(f"{vasprun_path}: cannot be parsed ({exc})") from exc
    out: dict[str, Any] = {
        "energy": float(vr.final_energy),
        "energy_per_atom": float(vr.final_energy) / len(vr.final_structure),
        "structure": vr.final_structure.as_dict(),
        "converged_electronic": bool(vr.converged_electronic),
        "converged_ionic": bool(vr.converged_ionic),
        "vasp_version": vr.vasp_version,
        "scf_steps": _scf_steps(directory),
        "ionic_steps": len(vr.ionic_steps),
        "magnetization": None,
        "magmoms": None,
    }
    out["notes"] = []
    ispin = int((vr.parameters or {}).get("ISPIN", 1) or 1)
    if ispin == 1:
        out["magnetization"] = 0.0  # no spin: nothing to read, and the next run stays unpolarised
        return out
    outcar = directory / "OUTCAR"
    reason = f"{outcar}: missing"
    if outcar.exists():
        try:
            oc = Outcar(str(outcar))
            if oc.total_mag is None:
                raise ValueError("no total magnetisation printed")
            out["magnetization"] = float(oc.total_mag)
            out["magmoms"] = [float(m.get("tot", 0.0)) for m in (oc.magnetization or [])] or None
            return out
        except Exception as exc:  # noqa: BLE001 - pymatgen raises many kinds on a damaged OUTCAR
            reason = f"{outcar}: unreadable ({type(exc).__name__}: {str(exc).strip()[:120]})"
    from dftflow.vasp.outputs import oszicar_magnetization

    oszicar = directory / "OSZICAR"
    total = None
    try:
        total = oszicar_magnetization(oszicar) if oszicar.exists() else None
    except DftflowError as exc:
        reason += f"; {exc}"
    if total is not None:
        out["magnetization"] = total
        out["notes"].append(f"magnetisation {total:.4f} μB from OSZICAR, no site moments ({reason})")
    else:
        out["notes"].append(f"magnetisation unknown ({reason}; OSZICAR has none): the next run chooses ISPIN "
                            "by the input set's rules")
    return out
    return out


@dataclass
class VaspMaker(Maker):
    """One VASP calculation of an input set (see ``inputsets/``)."""

    name: str = "vasp"
    inputset: str = "ecd-pbe-static"
    incar_overrides: list[dict[str, Any]] = field(default_factory=list)  # recipe, then user
    command: str = "vasp_std"
    copy_chgcar: bool = False  # start from the previous run's CHGCAR (ICHARG = 1)
    max_errors: int = 5
    climb_ladder: bool = True

    @job
    def make(self, structure: Any, prev_dir: str | None = None, prev_magnetization: float | None = None,
             prev_magmoms: list[float] | None = None) -> dict[str, Any]:
        return run_vasp(self, structure, prev_dir=prev_dir, prev_magnetization=prev_magnetization,
                        prev_magmoms=prev_magmoms)


def _structure(obj: Any) -> Any:
    from pymatgen.core import Structure

    return obj if isinstance(obj, Structure) else Structure.from_dict(obj)


def _start_chgcar(maker: VaspMaker, iset_name: str, prev_dir: str | None, start_chgcar: str | None) -> Path | None:
    """The CHGCAR a run starts from: an explicit file, or the previous run's when ``copy_chgcar``."""
    if start_chgcar:
        path = Path(start_chgcar)
        if not path.exists():
            raise VaspRunError(f"{iset_name}: the starting density {path} does not exist")
        return path
    if not maker.copy_chgcar:
        return None
    if not prev_dir:
        raise VaspRunError(f"{iset_name}: starts from a CHGCAR but no previous run was given")
    src = next((Path(prev_dir) / n for n in ("CHGCAR", "CHGCAR.gz") if (Path(prev_dir) / n).exists()), None)
    if src is None:
        raise VaspRunError(f"{prev_dir}: no CHGCAR to start {iset_name} from")
    return src


def run_vasp(maker: VaspMaker, structure: Any, *, prev_dir: str | None = None,
             prev_magnetization: float | None = None, prev_magmoms: list[float] | None = None,
             directory: Path | None = None, start_chgcar: str | None = None) -> dict[str, Any]:
    """Write inputs, run VASP under custodian (climbing the ladder if needed) and parse the result.

    ``start_chgcar``: a density file to start from (copied to CHGCAR; pair it with ICHARG = 1).
    """
    from custodian import Custodian
    from custodian.custodian import CustodianError
    from custodian.vasp.jobs import VaspJob
    from pymatgen.core import Structure

    from dftflow.vasp.inputs import load_vasp_inputset, resolve_inputs, write_inputs

    workdir = Path(directory or os.getcwd())
    structure = _structure(structure)
    iset = load_vasp_inputset(maker.inputset)
    notes = []
    contcar = workdir / "CONTCAR"
    if iset.calculation == "relax" and contcar.exists() and contcar.stat().st_size > 0:
        # an interrupted earlier attempt: continue from its last geometry, if it is one of this structure
        try:
            found = Structure.from_file(contcar)
        except Exception as exc:  # noqa: BLE001 - pymatgen raises many kinds on a damaged POSCAR
            found, why = None, f"unreadable ({type(exc).__name__}: {str(exc).strip()[:120]})"
        else:
            why = ("holds " + found.composition.reduced_formula + ", not " + structure.composition.reduced_formula
                   if found.composition != structure.composition else "")
        if found is not None and not why:
            structure = found
            notes.append("continued from the CONTCAR of an interrupted attempt")
        else:
            contcar.replace(workdir / "CONTCAR.rejected")  # kept for a look, out of VASP's way
            notes.append(f"the CONTCAR of an earlier attempt {why}: started over from the input structure "
                         "(the file is kept as CONTCAR.rejected)")
    previous = None
    if prev_magnetization is not None:
        previous = {"magnetization": prev_magnetization, "magmoms": prev_magmoms}
    elif prev_dir:
        notes.append(f"the magnetisation of the run in {prev_dir} is unknown (see its notes): ISPIN by the input "
                     "set's rules")
    potcar_dir = os.environ.get("DFTFLOW_POTCAR_DIR")
    history = []
    for rung in range(0, len(iset.ladder) + 1 if maker.climb_ladder else 1):
        inputs = resolve_inputs(structure, iset, rung=rung, overrides=maker.incar_overrides, previous=previous)
        for stale in ("vasprun.xml", "OUTCAR", "OSZICAR", "STOPCAR"):
            (workdir / stale).unlink(missing_ok=True)
        write_inputs(inputs, workdir, potcar_dir=Path(potcar_dir) if potcar_dir else None)
        src = _start_chgcar(maker, iset.name, prev_dir, start_chgcar)
        if src is not None:
            if src.suffix == ".gz":
                from dftflow.compression import decompress

                (workdir / "CHGCAR").write_bytes(decompress(src.read_bytes()))
            else:
                shutil.copyfile(src, workdir / "CHGCAR")
        cmd = shlex.split(vasp_command(maker.command))
        # custodian's WalltimeHandler keeps its first start time in the environment: each rung counts
        # its own remaining time from now instead
        os.environ.pop("CUSTODIAN_WALLTIME_START", None)
        t0 = time.perf_counter()
        custodian = Custodian(_handlers(_remaining_walltime()), [VaspJob(cmd, auto_npar=False, final=True)],
                              max_errors=maker.max_errors, polling_time_step=2, monitor_freq=5,
                              directory=str(workdir))
        error = None
        try:
            custodian.run()
        except (CustodianError, RuntimeError) as exc:
            error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        wall = time.perf_counter() - t0
        stderr = workdir / "std_err.txt"
        if error is None:
            result = parse_run(workdir)
            notes.extend(result.pop("notes"))
            if result["converged_electronic"] or not maker.climb_ladder:
                break
            error = "SCF not converged"
        history.append({"rung": rung, "error": error})
        tail = stderr.read_text(errors="replace").strip().splitlines()[-3:] if stderr.exists() else []
        if rung == len(iset.ladder) or not maker.climb_ladder:
            raise VaspRunError(f"{iset.name}: {error}" + (f" (stderr: {' | '.join(tail)})" if tail else ""))
        notes.append(f"rung {rung} failed ({error}); climbing to {iset.ladder[rung].name}")
    custodian_log = workdir / "custodian.json"
    runs = json.loads(custodian_log.read_text()) if custodian_log.exists() else []  # one entry per VASP run
    chgcar = workdir / "CHGCAR"
    from custodian import __version__ as custodian_version
    from pymatgen.core import __version__ as pymatgen_version

    return {
        **result,
        "engine": "vasp",
        "calculation": iset.calculation,
        "functional": "HSE06" if inputs.incar.get("LHFCALC") else ("PBE+U" if inputs.incar.get("LDAU") else "PBE"),
        "dir": str(workdir),
        "chgcar": str(chgcar) if chgcar.exists() and chgcar.stat().st_size > 0 else None,
        "outcar": str(workdir / "OUTCAR"),
        "inputset": iset.name,
        "rung": inputs.rung,
        "incar": inputs.incar,
        "kpoints": inputs.kpoints,
        "potcar_symbols": inputs.potcar_symbols,
        "corrections": [run.get("corrections", []) for run in runs],
        "ladder_history": history,
        "wall_s": round(wall, 3),
        "notes": notes + inputs.notes,
        "versions": {"vasp": result.get("vasp_version"), "custodian": custodian_version,
                     "pymatgen": pymatgen_version},
    }


def vasp_flow(structure: Any, uid: str, *, relax_set: str = "ecd-pbe-relax", static_set: str = "ecd-pbe-static",
              hse_set: str | None = None, incar_overrides: list[dict[str, Any]] | None = None) -> Flow:
    """relax → static (→ HSE06 static from the static's CHGCAR) for one structure."""
    overrides = list(incar_overrides or [])
    relax = VaspMaker(name="relax", inputset=relax_set, incar_overrides=overrides).make(structure)
    static = VaspMaker(name="static", inputset=static_set, incar_overrides=overrides).make(
        relax.output["structure"], prev_dir=relax.output["dir"], prev_magnetization=relax.output["magnetization"],
        prev_magmoms=relax.output["magmoms"])
    jobs = [relax, static]
    if hse_set:
        hse = VaspMaker(name="hse06-static", inputset=hse_set, incar_overrides=overrides, copy_chgcar=True).make(
            static.output["structure"], prev_dir=static.output["dir"],
            prev_magnetization=static.output["magnetization"], prev_magmoms=static.output["magmoms"])
        jobs.append(hse)
    return Flow(jobs, output=jobs[-1].output, name=uid)
