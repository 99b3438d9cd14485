"""VASP input sets: the ECD family, reproduced from the ECD OUTCARs, and the MP-compatible family.

An input set (``inputsets/<name>.yaml``) resolves, for one structure, to the
full INCAR, the k-point mesh and the POTCAR symbols, without POTCAR files:
``dftflow inputs show`` prints exactly what a job will write.

Precedence, lowest first: the input set (plus the rung of its fallback ladder
in use) < the recipe's overrides < the user's overrides. An override of
``None`` removes a tag.

The ECD family is documented value by value, with the OUTCAR line each value
was read from, in ``docs/inputsets.md``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field
from pymatgen.core import Element, Structure

from dftflow.config.base import StrictModel, load_yaml_model
from dftflow.errors import ConfigError
from dftflow.resources import resolve

F_BLOCK = frozenset(el.symbol for el in Element if el.is_lanthanoid or el.is_actinoid)


class KpointSettings(StrictModel):
    """Γ-centred meshes. ``length``: VASP's fully automatic rule n_i = max(1, int(length·|b_i| + 0.5));
    ``spacing``: n_i = max(1, round(|b_i| / spacing)), |b_i| in 1/Å without 2π."""

    style: Literal["length", "spacing"] = "length"
    length: float | None = Field(default=None, gt=0, description="Å (VASP's Rk)")
    spacing: float | None = Field(default=None, gt=0, description="1/Å, reciprocal length per division")

    def mesh(self, lattice: np.ndarray) -> tuple[int, int, int]:
        b = np.linalg.norm(np.linalg.inv(np.asarray(lattice, dtype=float)).T, axis=1)
        if self.style == "length":
            if self.length is None:
                raise ConfigError("kpoints: style 'length' needs 'length'")
            return tuple(max(1, int(math.floor(self.length * x + 0.5))) for x in b)  # type: ignore[return-value]
        if self.spacing is None:
            raise ConfigError("kpoints: style 'spacing' needs 'spacing'")
        return tuple(max(1, int(round(x / self.spacing))) for x in b)  # type: ignore[return-value]


class HubbardSettings(StrictModel):
    """Where the U table applies. ``always``: whenever an element of the table is present
    (AFLOW, ECD's PBE+U); ``oxides-fluorides``: only with O or F (Materials Project);
    ``spin-polarised``: only in a spin-polarised run (ECD's HSE06 statics, docs/inputsets.md)."""

    table: str = Field(description="U table file, relative to the input set")
    ldautype: int = 2
    applies: Literal["always", "oxides-fluorides", "spin-polarised"] = "always"


class SpinSettings(StrictModel):
    """``auto``: spin-polarised when an element of ``magnetic`` is present or the cell has an odd
    number of valence electrons; ``on``/``off`` force it."""

    mode: Literal["auto", "on", "off"] = "auto"
    magnetic: list[str] = Field(default_factory=list, description="elements that switch ISPIN=2 on")
    magmom: dict[str, float] = Field(default_factory=lambda: {"default": 0.6})


class Rung(StrictModel):
    """One step of the fallback ladder: changes to the INCAR and k-points, applied in order."""

    name: str
    incar: dict[str, Any] = Field(default_factory=dict)
    kpoints: KpointSettings | None = None
    hubbard: Literal["off"] | None = Field(default=None, description="'off': this rung drops +U (and LMAXMIX)")
    reason: str = ""


class VaspInputSet(StrictModel):
    name: str
    engine: Literal["vasp"] = "vasp"
    family: Literal["ecd", "mp"]
    calculation: Literal["relax", "static", "hse06-static"]
    description: str = ""
    incar: dict[str, Any] = Field(default_factory=dict)
    kpoints: KpointSettings | None = None
    potcars: str | None = Field(default=None, description="element → POTCAR symbol table, relative to this set")
    hubbard: HubbardSettings | None = None
    lmaxmix: dict[str, int] = Field(default_factory=dict,
                                    description="LMAXMIX by the highest shell that gets U (d: 4, f: 6)")
    spin: SpinSettings = Field(default_factory=SpinSettings)
    ladder: list[Rung] = Field(default_factory=list)
    deliberate: dict[str, str] = Field(default_factory=dict,
                                       description="fields where the set knowingly differs from some runs it "
                                                   "reproduces, with the reason (reported by `inputs diff`)")
    pymatgen_set: str | None = Field(default=None, description="mp family: MPRelaxSet or MPStaticSet")
    reciprocal_density: int | None = Field(default=None, gt=0, description="mp family: k-points per Å⁻³")

    base_dir: Path = Field(default=Path("."), exclude=True)

    def table(self, rel: str) -> Path:
        path = Path(rel)
        return path if path.is_absolute() else self.base_dir / path


class PotcarTable(StrictModel):
    source: str = ""
    functional: str = Field(default="PBE", description="pymatgen's name of the POTCAR library (ZVAL source)")
    symbols: dict[str, str]


@dataclass
class VaspInputs:
    """What a VASP job writes: INCAR tags, the k-point mesh and the POTCAR symbols (in POSCAR order)."""

    incar: dict[str, Any]
    kpoints: dict[str, Any]
    potcar_symbols: list[str]
    structure: Structure
    inputset: str
    rung: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"incar": self.incar, "kpoints": self.kpoints, "potcar_symbols": self.potcar_symbols,
                "inputset": self.inputset, "rung": self.rung, "notes": self.notes,
                "species": [s for s, _ in _species_counts(self.structure)]}


def load_vasp_inputset(name_or_path: str | Path) -> VaspInputSet:
    path = resolve("inputsets", name_or_path)
    inputset = load_yaml_model(path, VaspInputSet)
    inputset.base_dir = path.parent
    return inputset


def _species_counts(structure: Structure) -> list[tuple[str, int]]:
    """Species in POSCAR order (consecutive runs, as pymatgen's Poscar writes them)."""
    out: list[tuple[str, int]] = []
    for site in structure:
        sym = site.specie.symbol
        if out and out[-1][0] == sym:
            out[-1] = (sym, out[-1][1] + 1)
        else:
            out.append((sym, 1))
    return out


def _merge(incar: dict[str, Any], layer: dict[str, Any] | None) -> None:
    for key, value in (layer or {}).items():
        key = key.upper()
        if value is None:
            incar.pop(key, None)
        else:
            incar[key] = value


def resolve_inputs(
    structure: Structure, inputset: VaspInputSet | str | Path, *, rung: int = 0,
    overrides: list[dict[str, Any] | None] | None = None, previous: dict[str, Any] | None = None,
) -> VaspInputs:
    """Resolve ``inputset`` for ``structure``; ``overrides`` are the recipe then user INCAR layers.

    ``previous`` carries what the run before this one found (``magnetization``
    per cell, ``magmoms`` per site): a static after a relax inherits the relaxed
    moments and switches ISPIN off when the relaxed cell is not magnetic
    (|m| < 0.02 μB per atom, as atomate2 does).
    """
    iset = inputset if isinstance(inputset, VaspInputSet) else load_vasp_inputset(inputset)
    if rung < 0 or rung > len(iset.ladder):
        raise ConfigError(f"{iset.name}: rung {rung} does not exist (the ladder has {len(iset.ladder)} rungs)")
    if iset.family == "mp":
        return _resolve_mp(structure, iset, rung=rung, overrides=overrides)
    species = _species_counts(structure)
    symbols = [s for s, _ in species]
    incar: dict[str, Any] = {}
    _merge(incar, iset.incar)
    kpoints = iset.kpoints
    notes: list[str] = []
    hubbard_on = iset.hubbard is not None
    for step in iset.ladder[:rung]:
        _merge(incar, step.incar)
        kpoints = step.kpoints or kpoints
        hubbard_on = hubbard_on and step.hubbard != "off"
        notes.append(f"rung {step.name}: {step.reason}")
    # PAW datasets
    potcar_of = _potcar_table(iset, symbols)
    potcar_symbols = [potcar_of[s] for s in symbols] if potcar_of else []
    # spin (before U: the HSE06 set keeps U only in spin-polarised runs)
    if "ISPIN" not in incar:
        incar.update(_spin(structure, iset.spin, potcar_of, previous, notes, potcar_functional(iset)))
    if incar.get("ISPIN") == 1:
        incar.pop("MAGMOM", None)
    # Hubbard U, and LMAXMIX by the shell that gets it
    if hubbard_on and iset.hubbard is not None:
        incar.update(_hubbard(iset, iset.hubbard, symbols, spin_polarised=incar.get("ISPIN") == 2))
    for layer in overrides or []:
        _merge(incar, layer)
    if kpoints is None:
        raise ConfigError(f"{iset.name}: no k-point settings")
    mesh = kpoints.mesh(structure.lattice.matrix)
    kp = {"mesh": list(mesh), "style": "Gamma", "rule": kpoints.style,
          kpoints.style: kpoints.length if kpoints.style == "length" else kpoints.spacing}
    return VaspInputs(dict(sorted(incar.items())), kp, potcar_symbols, structure, iset.name, rung, notes)


def _hubbard(iset: VaspInputSet, hubbard: HubbardSettings, symbols: list[str], *,
             spin_polarised: bool) -> dict[str, Any]:
    """LDAU tags (and LMAXMIX) for these species, or nothing when the set's rule leaves U out.

    Only elements with U > 0 get a shell (LDAUL 2 for d, 3 for f); the others get -1, as
    the ECD OUTCARs print them (Pb in PbTiO3). LMAXMIX is twice the highest l that gets U
    (4 for d, 6 for f, from the set's ``lmaxmix``); without U it is left to VASP (2).
    """
    from dftflow.inputsets import HubbardTable

    rule = hubbard.applies
    if rule == "oxides-fluorides" and not any(s in ("O", "F") for s in symbols):
        return {}
    if rule == "spin-polarised" and not spin_polarised:
        return {}
    table = load_yaml_model(iset.table(hubbard.table), HubbardTable)
    with_u = [s for s in symbols if s in table.values and table.values[s].U > 0]
    if not with_u:
        return {}
    shell = {s: {"d": 2, "f": 3}[table.shell(s)] if s in with_u else -1 for s in symbols}
    out: dict[str, Any] = {
        "LDAU": True, "LDAUTYPE": hubbard.ldautype, "LDAUL": [shell[s] for s in symbols],
        "LDAUU": [table.values[s].U if s in with_u else 0.0 for s in symbols],
        "LDAUJ": [table.values[s].J if s in with_u else 0.0 for s in symbols],
    }
    top = "f" if any(shell[s] == 3 for s in symbols) else "d"
    if top in iset.lmaxmix:
        out["LMAXMIX"] = iset.lmaxmix[top]
    return out


@functools.cache
def _zval_table(functional: str) -> dict[str, int]:
    """POTCAR symbol → ZVAL of one of pymatgen's POTCAR libraries (its POTCAR summary data, no POTCAR files)."""
    from pymatgen.io.vasp.inputs import _load_potcar_summary_stats

    stats = _load_potcar_summary_stats()
    if functional not in stats:
        raise ConfigError(f"POTCAR functional {functional!r}: unknown (pymatgen knows {', '.join(sorted(stats))})")
    return {entry["symbol"]: int(round(entry["ZVAL"])) for titles in stats[functional].values() for entry in titles}


def zval(potcar: str, functional: str = "PBE") -> int:
    """Valence electrons (ZVAL) of the PAW dataset ``potcar`` (e.g. ``Fe_pv``) of the library ``functional``.

    ``functional`` is pymatgen's name of the POTCAR library: ``PBE`` (the
    PAW_PBE datasets the ECD runs used), ``PBE_54``, ``PBE_64``, ``LDA_54``, ...
    """
    table = _zval_table(functional)
    if potcar not in table:
        element = potcar.split("_")[0]
        near = sorted(s for s in table if s.split("_")[0] == element)
        raise ConfigError(f"POTCAR {potcar!r}: not in the {functional} library"
                          + (f" (it has {', '.join(near)})" if near else ""))
    return table[potcar]


def potcar_functional(iset: VaspInputSet) -> str:
    """The POTCAR library of an input set: PAW_PBE for the ECD family, the pymatgen set's own for MP sets."""
    if iset.family == "mp":
        from pymatgen.io.vasp import sets

        return getattr(sets, iset.pymatgen_set or "", sets.MPRelaxSet).CONFIG.get("POTCAR_FUNCTIONAL", "PBE")
    if not iset.potcars:
        return "PBE"
    return _load_potcar_table(iset.table(iset.potcars)).functional


@functools.cache
def _load_potcar_table(path: Path) -> PotcarTable:
    return load_yaml_model(path, PotcarTable)


def _potcar_table(iset: VaspInputSet, symbols: list[str]) -> dict[str, str]:
    """Element → POTCAR symbol of the set, for these elements (empty when the set names no table)."""
    if not iset.potcars:
        return {}
    table = _load_potcar_table(iset.table(iset.potcars)).symbols
    for s in symbols:
        if s not in table:
            raise ConfigError(f"{iset.table(iset.potcars)}: no POTCAR for element {s}")
    return {s: table[s] for s in symbols}


def valence_electrons(structure: Structure, inputset: VaspInputSet | str | Path = "ecd-pbe-static") -> int:
    """Valence electrons of ``structure`` with the PAW datasets of ``inputset`` (without POTCAR files)."""
    iset = inputset if isinstance(inputset, VaspInputSet) else load_vasp_inputset(inputset)
    symbols = [site.specie.symbol for site in structure]
    if iset.family == "mp":
        from pymatgen.io.vasp import sets

        table = getattr(sets, iset.pymatgen_set or "", sets.MPRelaxSet).CONFIG.get("POTCAR", {})
        potcar_of = {s: table.get(s, s) for s in set(symbols)}
    else:
        potcar_of = _potcar_table(iset, sorted(set(symbols)))
    return _electrons(symbols, potcar_of, potcar_functional(iset))


def _electrons(symbols: list[str], potcar_of: dict[str, str], functional: str = "PBE") -> int:
    return sum(zval(potcar_of.get(s, s), functional) for s in symbols)


def _spin(structure: Structure, spin: SpinSettings, potcar_of: dict[str, str], previous: dict[str, Any] | None,
          notes: list[str], functional: str = "PBE") -> dict[str, Any]:
    symbols = [site.specie.symbol for site in structure]
    if spin.mode == "off":
        return {"ISPIN": 1}
    if previous and previous.get("magnetization") is not None and spin.mode == "auto":
        per_atom = abs(float(previous["magnetization"])) / len(structure)
        if per_atom < 0.02:
            notes.append(f"ISPIN=1: the previous run's magnetisation is {per_atom:.3f} μB/atom (< 0.02)")
            return {"ISPIN": 1}
        magmoms = previous.get("magmoms") or [spin.magmom.get(s, spin.magmom.get("default", 0.6)) for s in symbols]
        return {"ISPIN": 2, "MAGMOM": [round(float(m), 3) for m in magmoms]}
    electrons = _electrons(symbols, potcar_of, functional)
    magnetic = any(s in spin.magnetic for s in symbols)
    if spin.mode == "on" or magnetic or electrons % 2:
        if spin.mode == "auto":
            notes.append("ISPIN=2: " + ("a magnetic element is present" if magnetic
                                         else f"odd number of valence electrons ({electrons})"))
        return {"ISPIN": 2, "MAGMOM": [spin.magmom.get(s, spin.magmom.get("default", 0.6)) for s in symbols]}
    return {"ISPIN": 1}


def _resolve_mp(structure: Structure, iset: VaspInputSet, *, rung: int,
                overrides: list[dict[str, Any] | None] | None) -> VaspInputs:
    """The Materials Project sets, through pymatgen (which needs no POTCAR files for this)."""
    import warnings

    from pymatgen.io.vasp import sets

    cls = getattr(sets, iset.pymatgen_set or "", None)
    if cls is None:
        raise ConfigError(f"{iset.name}: pymatgen has no input set {iset.pymatgen_set!r}")
    user: dict[str, Any] = {}
    _merge(user, iset.incar)
    for step in iset.ladder[:rung]:
        _merge(user, step.incar)
    for layer in overrides or []:
        _merge(user, layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs: dict[str, Any] = {}
        if iset.reciprocal_density:
            kwargs["user_kpoints_settings"] = {"reciprocal_density": iset.reciprocal_density}
        vis = cls(structure, user_incar_settings=user, **kwargs)
        incar = {k: v for k, v in dict(vis.incar).items()}
        kp = vis.kpoints
        symbols = list(vis.potcar_symbols)
        ordered = vis.structure  # pymatgen sorts by electronegativity: POSCAR, POTCAR and LDAU lists agree
    mesh = [int(x) for x in kp.kpts[0]]
    return VaspInputs(dict(sorted(incar.items())), {"mesh": mesh, "style": str(kp.style.name), "rule": "pymatgen",
                                                    "comment": kp.comment}, symbols, ordered, iset.name, rung)


def write_inputs(inputs: VaspInputs, directory: Path, *, potcar_dir: Path | None = None) -> None:
    """Write INCAR, KPOINTS, POSCAR and POTCAR (or POTCAR.spec when no POTCAR library is given)."""
    from pymatgen.io.vasp import Incar, Kpoints, Poscar

    directory.mkdir(parents=True, exist_ok=True)
    Incar(inputs.incar).write_file(directory / "INCAR")
    Kpoints.gamma_automatic(tuple(inputs.kpoints["mesh"])).write_file(directory / "KPOINTS")
    Poscar(inputs.structure).write_file(directory / "POSCAR")
    if potcar_dir is None:
        (directory / "POTCAR.spec").write_text("\n".join(inputs.potcar_symbols) + "\n")
        return
    parts = []
    for symbol in inputs.potcar_symbols:
        path = next((p for p in (potcar_dir / symbol / "POTCAR", potcar_dir / f"POTCAR.{symbol}",
                                 potcar_dir / symbol / "POTCAR.gz") if p.exists()), None)
        if path is None:
            raise ConfigError(f"{potcar_dir}: no POTCAR for {symbol} (looked for {symbol}/POTCAR)")
        from dftflow.compression import decompress

        parts.append(decompress(path.read_bytes()).decode())
    (directory / "POTCAR").write_text("".join(parts))
