"""Audit finished VASP runs against an input set: what the OUTCAR printed versus what the set resolves to.

VASP 5.4 prints every parameter of a run in the "Startparameter" block of the
OUTCAR, the POTCAR TITELs at the top and the k-points it used, so an OUTCAR
alone says how a run was set up. :func:`read_outcar_inputs` reads those
fields; :func:`diff_run` compares them, field by field, with
:func:`dftflow.vasp.inputs.resolve_inputs` for the run's structure;
:func:`parity` sums many runs into matched / total and misses by field.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dftflow.errors import InputError

# VASP's values for tags an INCAR leaves out, where a set may leave them out too.
VASP_DEFAULTS: dict[str, Any] = {"LMAXMIX": 2, "ISPIN": 1, "LDAU": False, "LHFCALC": False, "AEXX": 0.0,
                                 "HFSCREEN": 0.0}
IALGO = {38: "Normal", 48: "VeryFast", 53: "Damped", 58: "All", 68: "Fast"}
INT_TAGS = ("NELM", "NELMIN", "NELMDL", "ISMEAR", "ISPIN", "ISYM", "ISTART", "ICHARG", "NSW", "IBRION", "ISIF",
            "LORBIT", "LMAXMIX")
FLOAT_TAGS = ("ENCUT", "EDIFF", "EDIFFG", "SIGMA", "POTIM", "AEXX", "HFSCREEN", "TIME", "AMIX", "BMIX", "AMIX_MAG",
              "BMIX_MAG")
BOOL_TAGS = ("LREAL", "LASPH", "LCHARG", "LWAVE", "LHFCALC", "LAECHG")
OUTCAR_NAMES = ("OUTCAR", "OUTCAR.gz", "OUTCAR.bz2", "OUTCAR.xz")


@dataclass
class FieldDiff:
    """One compared field: what the run printed, what the set gives, and whether they agree."""

    field: str
    run: Any
    inputset: Any
    match: bool
    deliberate: str = ""  # the set's documented reason when it knowingly differs

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "run": self.run, "inputset": self.inputset, "match": self.match,
                "deliberate": self.deliberate}


@dataclass
class RunDiff:
    """All compared fields of one run, with the set and rung they were compared against."""

    run: str
    inputset: str
    rung: int
    fields: list[FieldDiff] = field(default_factory=list)
    not_printed: list[str] = field(default_factory=list)

    @property
    def misses(self) -> list[FieldDiff]:
        return [f for f in self.fields if not f.match]

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run, "inputset": self.inputset, "rung": self.rung,
                "matched": sum(f.match for f in self.fields), "total": len(self.fields),
                "fields": [f.as_dict() for f in self.fields], "not_printed": self.not_printed}


def outcar_in(directory: Path) -> Path | None:
    return next((directory / n for n in OUTCAR_NAMES if (directory / n).exists()), None)


def _outcar_text(path: Path) -> str:
    from dftflow.compression import read_text

    return read_text(path)


def _tag(text: str, name: str) -> str | None:
    m = re.search(r"(?<![A-Z_])" + name + r"\s*=\s*([^\s;]+)", text)
    return m.group(1) if m else None


def _tag_list(text: str, name: str) -> list[float] | None:
    m = re.search(name + r"\s*=((?:\s+-?[0-9.]+)+)", text)
    return [float(x) for x in m.group(1).split()] if m else None


def read_outcar_inputs(path: Path) -> dict[str, Any]:
    """The input parameters an OUTCAR printed: INCAR tags, LDAU lists, POTCAR symbols, k-point mesh and count."""
    text = _outcar_text(path)
    head = text[: text.index("Iteration")] if "Iteration" in text else text
    if "Startparameter" not in head:
        raise InputError(f"{path}: no 'Startparameter' block; is this a VASP OUTCAR?")
    incar: dict[str, Any] = {}
    for key in INT_TAGS:
        if (v := _tag(head, key)) is not None:
            incar[key] = int(v)
    for key in FLOAT_TAGS:
        if (v := _tag(head, key)) is not None:
            incar[key] = float(v)
    for key in BOOL_TAGS:
        if (v := _tag(head, key)) is not None:
            incar[key] = v == "T"
    if (v := _tag(head, "PREC")) is not None:
        incar["PREC"] = v
    if (v := _tag(head, "PRECFOCK")) is not None and incar.get("LHFCALC"):
        incar["PRECFOCK"] = v
    if (v := _tag(head, "IALGO")) is not None:
        incar["ALGO"] = IALGO.get(int(v), f"IALGO {v}")
    incar["LDAU"] = "LDA+U is selected" in head
    if incar["LDAU"]:
        incar["LDAUTYPE"] = int(re.search(r"LDAUTYPE =\s*(\d+)", head).group(1))  # type: ignore[union-attr]
        incar["LDAUL"] = [int(x) for x in _tag_list(head, "LDAUL") or []]
        incar["LDAUU"] = _tag_list(head, "LDAUU") or []
        incar["LDAUJ"] = _tag_list(head, "LDAUJ") or []
    potcars = re.findall(r"TITEL\s*=\s*PAW_\w+\s+(\S+)", head)  # one per species, in POSCAR order
    kpoints = _kpoints(text)
    return {"incar": incar, "potcar_symbols": potcars, "kpoints": kpoints, "path": str(path)}


def _kpoints(text: str) -> dict[str, Any]:
    """Γ-centred mesh, inferred from the weighted irreducible k-points (their finest spacing per axis)."""
    marker = "k-points in reciprocal lattice and weights"
    if marker not in text:
        return {}
    rows = []
    for line in text[text.index(marker):].splitlines()[1:]:
        fields = line.split()
        if len(fields) != 4:
            break
        try:
            rows.append([float(x) for x in fields])
        except ValueError:
            break
    ks = np.array([r[:3] for r in rows if r[3] > 0])  # zero weight: band-path points (or tiny weights)
    m = re.search(r"NKPTS\s*=\s*(\d+)", text)
    out: dict[str, Any] = {"nkpts": int(m.group(1)) if m else len(rows)}
    if not len(ks):
        return out
    mesh = []
    for axis in range(3):
        values = np.unique(np.round(np.mod(ks[:, axis], 1), 6))
        gaps = np.diff(np.concatenate([values, [values[0] + 1]])) if len(values) > 1 else np.array([1.0])
        mesh.append(int(round(1 / gaps[gaps > 1e-5].min())))
    out["mesh"] = mesh
    return out


def outcar_structure(path: Path) -> Any:
    """The initial structure an OUTCAR printed: lattice, fractional positions, species from the TITELs."""
    from pymatgen.core import Lattice, Structure

    text = _outcar_text(path)
    try:
        species = [t.split("_")[0] for t in re.findall(r"TITEL\s*=\s*PAW_\w+\s+(\S+)", text)]
        counts = [int(x) for x in re.search(r"ions per type =\s+([\d\s]+)\n", text).group(1).split()]  # type: ignore[union-attr]
        lat_block = text[text.index("direct lattice vectors"):].splitlines()[1:4]
        lattice = [[float(x) for x in line.split()[:3]] for line in lat_block]
        pos_block = text[text.index("position of ions in fractional coordinates"):].splitlines()[1:1 + sum(counts)]
        coords = [[float(x) for x in line.split()[:3]] for line in pos_block]
    except (AttributeError, ValueError, IndexError) as exc:
        raise InputError(f"{path}: cannot read the structure from the OUTCAR ({exc})") from exc
    symbols = [s for s, n in zip(species, counts) for _ in range(n)]
    return Structure(Lattice(lattice), symbols, coords)


def guess_inputset(run: dict[str, Any]) -> str:
    """The ECD set a run belongs to: HSE06 when LHFCALC, a relaxation when ions moved, else the PBE static."""
    incar = run["incar"]
    if incar.get("LHFCALC"):
        return "ecd-hse06-static"
    if incar.get("NSW", 0) > 0 and incar.get("IBRION", -1) >= 0:
        return "ecd-pbe-relax"
    return "ecd-pbe-static"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b):
            return False
        return all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, str) and isinstance(b, str):
        a, b = a.lower(), b.lower()
        return a.startswith(b) or b.startswith(a)  # VASP prints PREC "accura"
    return a == b


def compare(run: dict[str, Any], inputs: Any, deliberate: dict[str, str] | None = None) -> tuple[
        list[FieldDiff], list[str]]:
    """Field-by-field comparison of a parsed OUTCAR with resolved inputs (``VaspInputs``)."""
    deliberate = deliberate or {}
    printed = run["incar"]
    ours = dict(inputs.incar)
    fields: list[FieldDiff] = []
    not_printed: list[str] = []
    keys = [k for k in ours if k not in ("MAGMOM",)] + [k for k in VASP_DEFAULTS if k not in ours]
    if ours.get("LDAU") or printed.get("LDAU"):
        keys += [k for k in ("LDAUTYPE", "LDAUL", "LDAUU", "LDAUJ") if k not in keys]
    for key in keys:
        if key not in printed:
            if key in ours:
                not_printed.append(key)
            continue
        want = ours.get(key, VASP_DEFAULTS.get(key))
        if want is None:  # a U tag the set does not write
            want = "(none)"
        got = printed[key]
        ok = _same(got, want)
        fields.append(FieldDiff(key, got, want, ok, "" if ok else deliberate.get(key, "")))
    if "MAGMOM" in ours:
        not_printed.append("MAGMOM")
    if run["potcar_symbols"]:
        ok = run["potcar_symbols"] == inputs.potcar_symbols
        fields.append(FieldDiff("POTCAR", run["potcar_symbols"], inputs.potcar_symbols, ok,
                                "" if ok else deliberate.get("POTCAR", "")))
    if run["kpoints"].get("mesh"):
        ok = list(run["kpoints"]["mesh"]) == list(inputs.kpoints["mesh"])
        fields.append(FieldDiff("KPOINTS", run["kpoints"]["mesh"], inputs.kpoints["mesh"], ok,
                                "" if ok else deliberate.get("KPOINTS", "")))
    return fields, not_printed


def diff_run(structure: Any, outcar: Path, inputset: str | None = None, rung: int | None = None,
             name: str | None = None) -> RunDiff:
    """Compare one run with an input set; ``rung=None`` picks the rung of the set's ladder that fits best.

    An old dataset holds runs from every rung of a fallback ladder, so the
    default compares each rung and keeps the one with fewest undocumented misses.
    """
    from dftflow.vasp.inputs import load_vasp_inputset, resolve_inputs

    run = read_outcar_inputs(outcar)
    iset = load_vasp_inputset(inputset or guess_inputset(run))
    species = [s for s, _ in _order(structure)]
    if run["potcar_symbols"] and len(run["potcar_symbols"]) != len(species):
        raise InputError(f"{outcar}: {len(run['potcar_symbols'])} POTCARs but the structure has "
                         f"{len(species)} species ({' '.join(species)}); is it the run's structure?")
    rungs = [rung] if rung is not None else list(range(len(iset.ladder) + 1))
    best: RunDiff | None = None
    for r in rungs:
        inputs = resolve_inputs(structure, iset, rung=r)
        fields, not_printed = compare(run, inputs, iset.deliberate)
        diff = RunDiff(name or str(outcar), iset.name, r, fields, not_printed)
        if best is None or _score(diff) < _score(best):
            best = diff
    assert best is not None  # rungs is never empty
    return best


def _score(diff: RunDiff) -> tuple[int, int]:
    return sum(not f.match and not f.deliberate for f in diff.fields), sum(not f.match for f in diff.fields)


def _order(structure: Any) -> list[tuple[str, int]]:
    from dftflow.vasp.inputs import _species_counts

    return _species_counts(structure)


def run_structure(directory: Path, outcar: Path) -> Any:
    """The structure of a run directory: POSCAR, then CONTCAR, then the OUTCAR's own."""
    from pymatgen.core import Structure

    for name in ("POSCAR", "CONTCAR", "POSCAR.gz", "CONTCAR.gz"):
        path = directory / name
        if path.exists() and path.stat().st_size:
            try:
                return Structure.from_file(path)
            except Exception as exc:  # noqa: BLE001 - pymatgen raises many types for unreadable files
                raise InputError(f"{path}: cannot read a structure ({exc})") from exc
    return outcar_structure(outcar)


def diff_tree(root: Path, inputset: str | None = None, rung: int | None = None) -> list[RunDiff]:
    """Every run below ``root`` (a directory with an OUTCAR, plain or compressed), compared with its set."""
    dirs = sorted({p.parent for n in OUTCAR_NAMES for p in root.rglob(n)})
    if not dirs:
        raise InputError(f"{root}: no OUTCAR (or OUTCAR.gz) in it or below it")
    out = []
    for d in dirs:
        outcar = outcar_in(d)
        assert outcar is not None  # found by the glob above
        out.append(diff_run(run_structure(d, outcar), outcar, inputset, rung,
                            name=str(d.relative_to(root)) if d != root else d.name))
    return out


def parity(diffs: list[RunDiff]) -> dict[str, Any]:
    """Fields matched over fields compared, overall and without the set's documented deviations; misses by field."""
    total = sum(len(d.fields) for d in diffs)
    matched = sum(f.match for d in diffs for f in d.fields)
    deliberate = sum(bool(f.deliberate) for d in diffs for f in d.fields)
    by_field = Counter(f.field for d in diffs for f in d.fields if not f.match)
    return {"runs": len(diffs), "matched": matched, "total": total,
            "fraction": matched / total if total else float("nan"),
            "deliberate_misses": deliberate,
            "fraction_without_deliberate": (matched / (total - deliberate)) if total > deliberate else float("nan"),
            "misses_by_field": dict(by_field.most_common())}
