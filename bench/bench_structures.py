#!/usr/bin/env python
"""Benchmark dftflow's structure funnel (import → screen → dedup) on synthetic CIFs.

Standalone script, not a test. It

1. writes ``--n`` CIF files (perturbed prototypes over a few thousand
   compositions, ~20 % re-generated duplicates, a few % broken files) into a
   temporary directory, seeded by ``--seed``;
2. runs ``run_import``, ``run_screen`` and ``run_dedup`` through the Python API
   on a fresh catalog with ``--workers`` processes and times each stage;
3. times the reference tools on the same data: a serial pymatgen ``CifParser``
   loop for import and ``StructureMatcher().group_structures`` for dedup (on
   subsets, extrapolated or stated as such);
4. times ``deduplicate`` alone on the screened structures of the first 10 %,
   50 % and 100 % of the files (1k/5k/10k at the default ``--n``) to show how it
   scales;
5. prints a table (and ``--json PATH`` writes every number).

Usage (see bench/README.md)::

    OMP_NUM_THREADS=1 python bench/bench_structures.py --n 10000 --workers 2 --json bench.json
"""

from __future__ import annotations

import os

# Single-threaded BLAS/OpenMP unless the caller says otherwise: the pipeline's
# parallelism is its worker processes, and threads would oversubscribe the cores.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# pymatgen warns about every odd CIF line; the workers inherit this and keep the table readable.
os.environ.setdefault("PYTHONWARNINGS", "ignore")

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

# ---------------------------------------------------------------------------
# Synthetic data set
# ---------------------------------------------------------------------------
C1 = ["Li", "Na", "K", "Rb", "Cs", "Ag", "Cu", "Tl"]
C2 = ["Be", "Mg", "Ca", "Sr", "Ba", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Cd", "Hg", "Pb", "Sn", "Eu"]
C3 = ["Sc", "Y", "La", "Ce", "Pr", "Nd", "Sm", "Gd", "Al", "Ga", "In", "Bi", "Cr"]
HAL = ["F", "Cl", "Br", "I"]
CHAL = ["O", "S", "Se", "Te"]
PNIC = ["N", "P", "As", "Sb"]


def _pairs(a: list[str], b: list[str]) -> list[tuple[str, ...]]:
    return [(x, y) for x in a for y in b if x != y]


def _compositions() -> dict[str, list[tuple[str, ...]]]:
    """Element tuples per prototype, in the prototype's site order; mostly charge-balanced."""
    comps: dict[str, list[tuple[str, ...]]] = {}
    comps["rocksalt"] = _pairs(C1, HAL) + _pairs(C2, CHAL) + _pairs(C3[:9], PNIC)
    comps["cscl"] = _pairs(["Cs", "Tl", "Rb", "K", "Ag"], ["Cl", "Br", "I"]) + _pairs(
        ["Cu", "Ni", "Fe", "Co", "Ag", "Au", "Pd", "Rh", "Ti", "Zr"],
        ["Al", "Zn", "Ga", "Ti", "Be", "Mg", "Sc", "Y", "In", "Cd"])
    tetra = (_pairs(["B", "Al", "Ga", "In"], PNIC) + _pairs(["Be", "Zn", "Cd", "Hg", "Mg", "Mn"], CHAL)
             + _pairs(["Cu", "Ag"], ["Cl", "Br", "I"]) + [("Si", "C"), ("Ge", "C"), ("Sn", "C")])
    comps["zincblende"] = tetra
    comps["wurtzite"] = tetra
    comps["fluorite"] = (_pairs(["Ca", "Sr", "Ba", "Cd", "Pb", "Hg", "Eu"], ["F"])
                         + _pairs(["Zr", "Hf", "Ce", "Th", "U", "Pr", "Tb", "Pu", "Np"], ["O"]))
    comps["antifluorite"] = _pairs(["Li", "Na", "K", "Rb"], CHAL)  # A2X: sites (X, A)
    comps["rutile"] = (_pairs(["Ti", "Sn", "Ge", "Pb", "Mn", "Ru", "Ir", "V", "Cr", "Nb", "Mo", "W", "Os",
                               "Te", "Rh", "Pt", "Re"], ["O"])
                       + _pairs(["Mg", "Fe", "Co", "Ni", "Zn", "Mn", "Pd"], ["F"]))
    per = [(a, b, "O") for a in ["La", "Pr", "Nd", "Sm", "Gd", "Y", "Bi"]
           for b in ["Al", "Ga", "Sc", "In", "Cr", "Mn", "Fe", "Co", "Ni", "V", "Ti", "Rh"]]
    per += [(a, b, "O") for a in ["Ca", "Sr", "Ba", "Pb", "Eu", "Cd"]
            for b in ["Ti", "Zr", "Hf", "Sn", "Mn", "Ru", "Ir", "Mo", "Ce", "Pr", "Tb", "Ge", "V"]]
    per += [(a, b, "O") for a in ["Li", "Na", "K", "Rb", "Ag"] for b in ["Nb", "Ta", "V", "Sb", "Bi"]]
    per += [(a, b, x) for a in ["K", "Rb", "Cs", "Tl"]
            for b in ["Pb", "Sn", "Ge", "Mg", "Ca", "Sr", "Cd", "Mn", "Fe", "Co", "Ni", "Zn", "Cu", "Eu"]
            for x in HAL]
    comps["perovskite"] = per
    dp = [(a, b, c, "O") for a in ["Ba", "Sr", "Ca"]
          for b in ["Mg", "Ca", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Cd"] for c in ["W", "Mo", "Te", "Re", "U"]]
    dp += [(a, b, c, "O") for a in ["Ba", "Sr", "Ca"]
           for b in ["Sc", "Y", "In", "Fe", "Cr", "Ga", "Al", "Mn", "Co"] for c in ["Nb", "Ta", "Sb", "Re", "Os", "Ru"]]
    dp += [(a, b, c, x) for a in ["K", "Rb", "Cs"] for b in ["Li", "Na", "K", "Ag"]
           for c in ["Al", "Ga", "In", "Sc", "Y", "La", "Bi", "Sb", "Fe", "Cr"] for x in ["F", "Cl"] if a != b]
    comps["double_perovskite"] = dp  # A2 B B' X6 (elpasolites included)
    sp = [(a, b, x) for a in ["Mg", "Zn", "Fe", "Co", "Ni", "Mn", "Cu", "Cd"]
          for b in ["Al", "Fe", "Cr", "Co", "Mn", "Ga", "V", "Rh", "In"] for x in ["O", "S", "Se"] if a != b]
    sp += [("Li", b, "O") for b in ["Mn", "Ti", "V", "Ni", "Co"]]
    comps["spinel"] = sp  # A B2 X4
    comps["heusler"] = [(x, y, z) for x in ["Co", "Ni", "Cu", "Fe", "Mn", "Pd", "Rh", "Ru", "Pt", "Au"]
                        for y in ["Ti", "V", "Cr", "Mn", "Fe", "Zr", "Hf", "Nb", "Sc"]
                        for z in ["Al", "Ga", "In", "Si", "Ge", "Sn", "Sb"] if x != y]  # X2 Y Z
    comps["half_heusler"] = [(x, y, z) for x in ["Ti", "Zr", "Hf", "V", "Nb", "Ta", "Sc", "Y", "Li", "Mg"]
                             for y in ["Ni", "Co", "Pd", "Pt", "Fe", "Rh", "Ir"]
                             for z in ["Sn", "Sb", "Bi", "Ge", "Si", "As"]]
    comps["fcc"] = [(e,) for e in ["Cu", "Ag", "Au", "Al", "Ni", "Pd", "Pt", "Pb", "Ca", "Sr", "Rh", "Ir", "Yb", "Ce"]]
    comps["bcc"] = [(e,) for e in ["Fe", "Cr", "Mo", "W", "V", "Nb", "Ta", "Li", "Na", "K", "Rb", "Cs", "Ba", "Eu"]]
    comps["diamond"] = [(e,) for e in ["C", "Si", "Ge", "Sn"]]
    comps["hcp"] = [(e,) for e in ["Mg", "Zn", "Cd", "Ti", "Zr", "Hf", "Co", "Be", "Sc", "Y", "Re", "Ru", "Os"]]
    return comps


# Relative frequency of each prototype among the original (non-duplicate) structures.
WEIGHTS = {"rocksalt": 10, "cscl": 5, "zincblende": 5, "wurtzite": 5, "fluorite": 3, "antifluorite": 2,
           "rutile": 5, "perovskite": 14, "double_perovskite": 10, "spinel": 10, "heusler": 9,
           "half_heusler": 8, "fcc": 4, "bcc": 4, "diamond": 2, "hcp": 4}


@dataclass
class Spec:
    """Everything needed to rebuild one file deterministically (in any worker)."""

    index: int
    path: str
    proto: str
    elements: tuple[str, ...]
    scale: float          # multiplies the prototype's lattice constant (±5 %)
    ca: float             # multiplies c/a of the non-cubic prototypes (±2 %)
    u: float              # shift of the free internal coordinate
    setting: str          # "conventional", "primitive" or "supercell:a,b,c"
    rattle: float         # Å, displacement of every atom
    seed: int
    symmetrized: bool     # write the asymmetric unit + space group (like ICSD/COD) or all sites in P1
    dup_of: int | None = None
    disorder: str | None = None    # element mixed 50/50 into the first site's element
    broken: str | None = None      # "truncated:<fraction>", "empty" or "html"


def _radius(symbol: str) -> float:
    from pymatgen.core import Element

    r = Element(symbol).atomic_radius
    return float(r) if r is not None else 1.6


@functools.cache
def _space_group(symbol: str):
    # pymatgen builds a SpaceGroup by closing its generators (~1 s for Fm-3m), and
    # Structure.from_spacegroup does that on every call: build each group once.
    from pymatgen.symmetry.groups import SpaceGroup

    return SpaceGroup(symbol)


@functools.cache
def _symops_xyz(symbol: str) -> tuple[str, ...]:
    return tuple(op.as_xyz_str() for op in _space_group(symbol).symmetry_ops)


SPACE_GROUPS = ("Fm-3m", "Pm-3m", "F-43m", "P6_3mc", "P4_2/mnm", "Fd-3m", "Im-3m", "P6_3/mmc")
# Conventional → primitive basis for the centred lattices used here.
_CENTRING = {"F": [[0, .5, .5], [.5, 0, .5], [.5, .5, 0]], "I": [[-.5, .5, .5], [.5, -.5, .5], [.5, .5, -.5]]}


@dataclass
class Asym:
    """A prototype instance as a crystallographer writes it: space group, cell, asymmetric unit."""

    symbol: str
    lattice: Any
    species: list[str]
    coords: list[list[float]]

    def structure(self):
        import numpy as np
        from pymatgen.core import Structure

        spg = _space_group(self.symbol)
        all_sp, all_fc = [], []
        for sp, c in zip(self.species, self.coords):
            orbit = spg.get_orbit(np.asarray(c, dtype=float), tol=1e-5)
            all_sp.extend([sp] * len(orbit))
            all_fc.extend(orbit)
        return Structure(self.lattice, all_sp, all_fc)


def describe(spec: Spec) -> Asym:
    """Space group, lattice and asymmetric unit of the prototype instance a spec names."""
    from pymatgen.core import Lattice

    e = list(spec.elements)
    r = [_radius(x) for x in e]
    p, k = spec.proto, spec.scale
    s3 = math.sqrt(3)
    if p == "rocksalt":
        return Asym("Fm-3m", Lattice.cubic(2 * (r[0] + r[1]) * k), e, [[0, 0, 0], [.5, .5, .5]])
    if p == "cscl":
        return Asym("Pm-3m", Lattice.cubic(2 * (r[0] + r[1]) / s3 * k), e, [[0, 0, 0], [.5, .5, .5]])
    if p == "zincblende":
        return Asym("F-43m", Lattice.cubic(4 * (r[0] + r[1]) / s3 * k), e, [[0, 0, 0], [.25, .25, .25]])
    if p == "wurtzite":
        a = (r[0] + r[1]) / 0.612 * k
        return Asym("P6_3mc", Lattice.hexagonal(a, a * 1.633 * spec.ca), e,
                    [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.375 + spec.u]])
    if p in ("fluorite", "antifluorite"):
        species = e if p == "fluorite" else [e[1], e[0]]
        return Asym("Fm-3m", Lattice.cubic(4 * (r[0] + r[1]) / s3 * k), species, [[0, 0, 0], [.25, .25, .25]])
    if p == "rutile":
        a = (r[0] + r[1]) / 0.43 * k
        x = 0.305 + spec.u
        return Asym("P4_2/mnm", Lattice.tetragonal(a, a * 0.645 * spec.ca), e, [[0, 0, 0], [x, x, 0]])
    if p == "perovskite":
        return Asym("Pm-3m", Lattice.cubic(2 * (r[1] + r[2]) * k), e, [[.5, .5, .5], [0, 0, 0], [.5, 0, 0]])
    if p == "double_perovskite":
        a = (2 * (r[1] + r[3]) + 2 * (r[2] + r[3])) * k
        return Asym("Fm-3m", Lattice.cubic(a), e, [[.25, .25, .25], [0, 0, 0], [.5, .5, .5], [0.25 + spec.u, 0, 0]])
    if p == "spinel":
        x = 0.3875 + spec.u  # origin choice 1 (pymatgen's Fd-3m setting)
        return Asym("Fd-3m", Lattice.cubic(8.1 * (r[1] + r[2]) / 2.0 * k), e,
                    [[0, 0, 0], [5 / 8, 5 / 8, 5 / 8], [x, x, x]])
    if p == "heusler":
        return Asym("Fm-3m", Lattice.cubic(4 * (r[0] + r[1]) / s3 * k), e, [[.25, .25, .25], [0, 0, 0], [.5, .5, .5]])
    if p == "half_heusler":
        return Asym("F-43m", Lattice.cubic(4 * (r[0] + r[1]) / s3 * k), e, [[0, 0, 0], [.25, .25, .25], [.5, .5, .5]])
    if p == "fcc":
        return Asym("Fm-3m", Lattice.cubic(2 * math.sqrt(2) * r[0] * k), e, [[0, 0, 0]])
    if p == "bcc":
        return Asym("Im-3m", Lattice.cubic(4 * r[0] / s3 * k), e, [[0, 0, 0]])
    if p == "diamond":
        return Asym("Fd-3m", Lattice.cubic(8 * r[0] / s3 * k), e, [[0, 0, 0]])
    if p == "hcp":
        a = 2 * r[0] * k
        return Asym("P6_3/mmc", Lattice.hexagonal(a, a * 1.633 * spec.ca), e, [[1 / 3, 2 / 3, 0.25]])
    raise ValueError(p)


def _primitive(s, symbol: str):
    """The primitive cell of a conventional F- or I-centred cell (P cells are returned as they are)."""
    import numpy as np
    from pymatgen.core import Lattice, Structure

    if symbol[0] not in _CENTRING:
        return s
    p = np.array(_CENTRING[symbol[0]])
    lattice = Lattice(p @ s.lattice.matrix)
    frac = np.mod(s.frac_coords @ np.linalg.inv(p), 1.0)
    keep, seen = [], set()
    for i, f in enumerate(frac):
        key = tuple(np.round(f, 4) % 1.0)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return Structure(lattice, [s.species[i] for i in keep], frac[keep])


def realise(spec: Spec):
    """Setting change, disorder and rattle applied: the structure that gets written in P1."""
    import numpy as np
    from pymatgen.core import Structure

    asym = describe(spec)
    s = asym.structure()
    rng = np.random.default_rng(spec.seed)
    if spec.setting == "primitive":
        s = _primitive(s, asym.symbol)
    elif spec.setting.startswith("supercell:"):
        s.make_supercell([int(v) for v in spec.setting.split(":")[1].split(",")])
    if spec.disorder:
        host = spec.elements[0]
        for i, site in enumerate(s):
            if site.species_string == host:
                s.replace(i, {host: 0.5, spec.disorder: 0.5})
    if spec.rattle > 0:
        v = rng.normal(size=(len(s), 3))
        v /= np.linalg.norm(v, axis=1)[:, None]
        mags = rng.uniform(spec.rattle * 0.33, spec.rattle, size=len(s))
        s = Structure(s.lattice, s.species_and_occu, s.cart_coords + v * mags[:, None],
                      coords_are_cartesian=True, to_unit_cell=True)
    return s


def symmetrized_cif(spec: Spec) -> tuple[str, int]:
    """An ICSD-style CIF: space group, its operations, and the asymmetric unit (no rattle)."""
    asym = describe(spec)
    full = asym.structure()
    a, b, c, al, be, ga = asym.lattice.parameters
    spg = _space_group(asym.symbol)
    formula = full.composition.formula
    if spec.disorder:
        formula = ""  # a disordered phase: the sum formula is fractional, leave it out
    lines = [f"data_{full.composition.reduced_formula}_{spec.index}",
             f"_symmetry_space_group_name_H-M   '{asym.symbol}'",
             f"_symmetry_Int_Tables_number   {spg.int_number}",
             f"_cell_length_a   {a:.6f}", f"_cell_length_b   {b:.6f}", f"_cell_length_c   {c:.6f}",
             f"_cell_angle_alpha   {al:.4f}", f"_cell_angle_beta   {be:.4f}", f"_cell_angle_gamma   {ga:.4f}",
             f"_cell_volume   {asym.lattice.volume:.4f}"]
    if formula:
        lines.append(f"_chemical_formula_sum   '{formula}'")
    lines += ["loop_", " _symmetry_equiv_pos_site_id", " _symmetry_equiv_pos_as_xyz"]
    lines += [f"  {i + 1}  '{op}'" for i, op in enumerate(_symops_xyz(asym.symbol))]
    lines += ["loop_", " _atom_site_label", " _atom_site_type_symbol", " _atom_site_fract_x",
              " _atom_site_fract_y", " _atom_site_fract_z", " _atom_site_occupancy"]
    for i, (sp, (x, y, z)) in enumerate(zip(asym.species, asym.coords)):
        if spec.disorder and sp == spec.elements[0]:
            lines.append(f"  {sp}{i + 1}  {sp}  {x:.6f}  {y:.6f}  {z:.6f}  0.5")
            lines.append(f"  {spec.disorder}{i + 1}  {spec.disorder}  {x:.6f}  {y:.6f}  {z:.6f}  0.5")
        else:
            lines.append(f"  {sp}{i + 1}  {sp}  {x:.6f}  {y:.6f}  {z:.6f}  1")
    return "\n".join(lines) + "\n", len(full)


def write_one(spec: Spec) -> tuple[int, int, str]:
    """Write one file; returns (index, sites in the cell, kind)."""
    from pymatgen.io.cif import CifWriter

    path = Path(spec.path)
    if spec.broken in ("empty", "html"):
        path.write_text("" if spec.broken == "empty" else
                        "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>\n")
        return spec.index, 0, "broken"
    if spec.symmetrized and spec.setting == "conventional" and spec.rattle < 0.1:
        text, nsites = symmetrized_cif(spec)
    else:
        s = realise(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            text, nsites = str(CifWriter(s)), len(s)
    if spec.broken and spec.broken.startswith("truncated:"):
        text = text[: int(len(text) * float(spec.broken.split(":")[1]))]
        kind = "broken"
    else:
        kind = "duplicate" if spec.dup_of is not None else "original"
    path.write_text(text)
    return spec.index, nsites, kind


def make_specs(n: int, seed: int, root: Path, dup_fraction: float, broken_fraction: float,
               sym_fraction: float) -> list[Spec]:
    rng = random.Random(seed)
    comps = _compositions()
    protos = list(WEIGHTS)
    weights = [WEIGHTS[p] for p in protos]
    free_u = {"wurtzite": 0.01, "rutile": 0.01, "double_perovskite": 0.01, "spinel": 0.006}
    non_cubic = {"wurtzite", "rutile", "hcp"}
    specs: list[Spec] = []
    originals: list[int] = []
    for i in range(n):
        path = str(root / f"{i // 1000:03d}" / f"s{i:06d}.cif")
        r = rng.random()
        if originals and r < dup_fraction:
            # A re-determination of an earlier structure: new rattle, maybe another cell setting.
            o = specs[rng.choice(originals)]
            setting = rng.choices(["conventional", "primitive", "supercell"], [0.4, 0.35, 0.25])[0]
            spec = replace(o, index=i, path=path, seed=rng.getrandbits(32), dup_of=o.index,
                           scale=o.scale * rng.uniform(0.995, 1.005), rattle=rng.uniform(0.01, 0.03),
                           setting=_setting(setting, o.proto, rng), symmetrized=rng.random() < sym_fraction,
                           broken=None)
        else:
            proto = rng.choices(protos, weights)[0]
            elements = rng.choice(comps[proto])
            setting = rng.choices(["conventional", "primitive", "supercell"], [0.7, 0.25, 0.05])[0]
            spec = Spec(index=i, path=path, proto=proto, elements=tuple(elements),
                        scale=rng.uniform(0.95, 1.05), ca=rng.uniform(0.98, 1.02) if proto in non_cubic else 1.0,
                        u=rng.uniform(-1, 1) * free_u.get(proto, 0.0),
                        setting=_setting(setting, proto, rng), rattle=rng.uniform(0.01, 0.03),
                        seed=rng.getrandbits(32), symmetrized=rng.random() < sym_fraction)
            x = rng.random()
            if x < 0.02:      # no symmetry left: a P1 candidate (fails the symmetry filter)
                spec.rattle, spec.symmetrized = rng.uniform(0.25, 0.4), False
            elif x < 0.04 and len(elements) > 1:  # partial occupancy (fails the order filter)
                spec.disorder = rng.choice([e for e in C2 + C3 if e not in elements])
            originals.append(i)
        if rng.random() < broken_fraction:
            spec.broken = rng.choice(["empty", "html"]) if rng.random() < 0.1 else \
                f"truncated:{rng.uniform(0.2, 0.9):.3f}"
        specs.append(spec)
    return specs


def _setting(kind: str, proto: str, rng: random.Random) -> str:
    if kind != "supercell":
        return kind
    big = proto in ("spinel", "double_perovskite", "heusler", "half_heusler")
    if big:
        return "supercell:" + rng.choice(["2,1,1", "1,2,1"])
    return "supercell:" + rng.choice(["2,1,1", "2,2,1", "2,2,2", "1,1,3"])


def generate(n: int, seed: int, root: Path, *, dup_fraction: float, broken_fraction: float,
             sym_fraction: float, workers: int) -> dict[str, Any]:
    """Write the files (in a pool) and return what was written."""
    manifest = root / "manifest.json"
    params = {"n": n, "seed": seed, "dup_fraction": dup_fraction, "broken_fraction": broken_fraction,
              "sym_fraction": sym_fraction, "version": 2}
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        if old.get("params") == params:
            return {**old, "reused": True}
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    specs = make_specs(n, seed, root, dup_fraction, broken_fraction, sym_fraction)
    for d in {Path(s.path).parent for s in specs}:
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for sg in SPACE_GROUPS:  # built once here, inherited by the forked writers
        _symops_xyz(sg)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        results = list(pool.imap_unordered(write_one, specs, chunksize=32))
    sites = {i: k for i, k, _ in results}
    kinds = Counter(k for _, _, k in results)
    info = {
        "params": params,
        "seconds": round(time.perf_counter() - t0, 2),
        "kinds": dict(kinds),
        "prototypes": dict(Counter(s.proto for s in specs)),
        "distinct_compositions": len({(s.proto, s.elements) for s in specs}),
        "symmetrized_files": sum(bool(s.symmetrized and s.setting == "conventional" and s.rattle < 0.1
                                      and not s.broken) for s in specs),
        "sites_written": {"max": max(sites.values()), "mean": round(statistics.mean(sites.values()), 1)},
        "specs": [asdict(s) for s in specs],
    }
    manifest.write_text(json.dumps(info))
    return {**info, "reused": False}


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------
def _burn(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i
    return time.perf_counter() - t0


def cpu_calibration(workers: int, n: int = 1_500_000, rounds: int = 5) -> dict[str, float]:
    """How much parallel throughput the machine gives now: a pure-Python loop in 1 vs ``workers`` processes.

    ``speedup`` is ``workers`` on idle dedicated cores; less means shared or busy
    cores (a VM's vCPUs on one physical core, other jobs), and every timing of
    the run is to be read with it. Medians of a few short rounds.
    """
    serial, par = [], []
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for _ in range(rounds):
            serial.append(_burn(n))
            par.extend(pool.map(_burn, [n] * workers, chunksize=1))
    s, p = statistics.median(serial), statistics.median(par)
    return {"serial_s": s, "parallel_s": p, "speedup": workers * s / p, "loadavg_1min": os.getloadavg()[0]}


class ProcMonitor:
    """Samples /proc for this process's descendants: CPU seconds and peak RSS (VmHWM) of each.

    The pipeline's workers are children of multiprocessing's fork server, not of
    this process, so ``getrusage(RUSAGE_CHILDREN)`` never sees them while the
    run lasts; sampling /proc does (a worker's last ≤ ``interval`` s can be missed).
    """

    def __init__(self, interval: float = 0.25) -> None:
        import threading

        self.interval = interval
        self.cpu: dict[tuple[int, int], float] = {}
        self.hwm_kb: dict[tuple[int, int], int] = {}
        self.window_worker_kb = self.window_sum_kb = 0
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = os.path.isdir("/proc/self")

    def __enter__(self) -> ProcMonitor:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        if not self.available:
            return
        me = os.getpid()
        children: dict[int, list[int]] = defaultdict(list)
        stats: dict[int, tuple[float, int]] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as fh:
                    data = fh.read()
            except OSError:
                continue
            f = data[data.rindex(")") + 2:].split()
            pid = int(d)
            children[int(f[1])].append(pid)
            stats[pid] = ((int(f[11]) + int(f[12])) / self._tick, int(f[19]))
        frontier, desc = [me], []
        while frontier:
            for c in children.get(frontier.pop(), []):
                desc.append(c)
                frontier.append(c)
        rss_sum = _status_kb(me).get("VmRSS", 0)
        for pid in desc:
            cpu, start = stats[pid]
            key = (pid, start)
            self.cpu[key] = max(cpu, self.cpu.get(key, 0.0))
            status = _status_kb(pid)
            if "VmHWM" in status:
                self.hwm_kb[key] = max(self.hwm_kb.get(key, 0), status["VmHWM"])
                self.window_worker_kb = max(self.window_worker_kb, status["VmHWM"])
            rss_sum += status.get("VmRSS", 0)
        self.window_sum_kb = max(self.window_sum_kb, rss_sum)

    def start_window(self) -> None:
        """Start a new per-stage memory window: this process's peak RSS is reset (Linux ``clear_refs``)."""
        self.window_worker_kb = self.window_sum_kb = 0
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass

    def window_mb(self) -> dict[str, float]:
        """Peak RSS in MB since :meth:`start_window`: main process, largest worker, and all together (sampled)."""
        self.sample()
        return {"main": round(_status_kb(os.getpid()).get("VmHWM", 0) / 1024, 1),
                "largest_worker": round(self.window_worker_kb / 1024, 1),
                "sum_sampled": round(self.window_sum_kb / 1024, 1)}

    def children_cpu(self) -> float:
        self.sample()
        return sum(self.cpu.values())

    def peak_child_mb(self) -> float:
        return round(max(self.hwm_kb.values(), default=0) / 1024, 1)


def _status_kb(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status that we read (VmHWM, VmRSS); empty when the process is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


class Clock:
    """Wall time, this process's CPU time and the descendants' CPU time of a block (and, with ``memory``,
    its peak RSS)."""

    def __init__(self, monitor: ProcMonitor, memory: bool = False) -> None:
        self.monitor = monitor
        self.memory = memory
        self.peak_mb: dict[str, float] = {}

    def __enter__(self) -> Clock:
        if self.memory:
            self.monitor.start_window()
        self.c0 = self.monitor.children_cpu()
        self.p0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.t0
        self.main_cpu = time.process_time() - self.p0
        self.child_cpu = self.monitor.children_cpu() - self.c0
        self.cpu = self.main_cpu + self.child_cpu
        if self.memory:
            self.peak_mb = self.monitor.window_mb()

    def as_dict(self) -> dict[str, Any]:
        return {"wall_s": self.wall, "cpu_s": self.cpu, "main_cpu_s": self.main_cpu, "workers_cpu_s": self.child_cpu,
                **({"peak_rss_mb": self.peak_mb} if self.memory else {})}


def rss_mb(monitor: ProcMonitor | None = None) -> dict[str, float]:
    """Peak RSS in MB: this process and its reaped children (getrusage), and the largest worker seen in /proc."""
    div = 1024 * 1024 if sys.platform == "darwin" else 1024
    out = {"main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / div, 1),
           "reaped_children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / div, 1)}
    if monitor is not None:
        out["largest_worker"] = monitor.peak_child_mb()
    return out


def dedup_items(catalog) -> list:
    """DedupItems exactly as ``run_dedup`` builds them."""
    from dftflow.screening.dedup import DedupItem
    from dftflow.screening.stages import _PRIORITY, _screen_passed

    items = []
    for uid, data, prov, rformula, sym in _screen_passed(catalog):
        source = json.loads(prov).get("source", "")
        items.append(DedupItem(uid, json.loads(data), rformula, int(sym["spacegroup"]),
                               int(sym["n_primitive"]), _PRIORITY.get(source, 2)))
    return items


def time_dedup(items: list, cfg, workers: int, timeout: float, monitor: ProcMonitor) -> dict[str, Any]:
    """``deduplicate`` alone, as run_dedup calls it."""
    from dftflow.screening.dedup import bucket_key, deduplicate

    _clear_matcher_cache()
    groups = errors = 0
    with Clock(monitor) as clock:
        for _, gs, err in deduplicate(items, ltol=cfg.ltol, stol=cfg.stol, angle_tol=cfg.angle_tol,
                                      workers=workers, timeout=timeout):
            groups += len(gs or [])
            errors += err is not None
    sizes = Counter(bucket_key(i) for i in items)
    return {"items": len(items), "seconds": clock.wall, "cpu_s": clock.cpu, "unique": groups,
            "bucket_errors": errors, "buckets": len(sizes), "multi_buckets": sum(v > 1 for v in sizes.values()),
            "matched_items": sum(v for v in sizes.values() if v > 1),
            "largest_bucket": max(sizes.values()) if sizes else 0}


def worst_bucket(items: list, cfg, top: int = 5) -> dict[str, Any]:
    """Serial time of the most expensive-looking buckets (size² × primitive sites)."""
    from dftflow.screening.dedup import _group_bucket, bucket_key

    buckets: dict[str, list] = defaultdict(list)
    for it in items:
        buckets[bucket_key(it)].append(it)
    cand = sorted(buckets.items(), key=lambda kv: -len(kv[1]) ** 2 * kv[1][0].n_primitive)[:top]
    tol = {"ltol": cfg.ltol, "stol": cfg.stol, "angle_tol": cfg.angle_tol}
    out = []
    for key, members in cand:
        t0 = time.perf_counter()
        groups = _group_bucket((members, tol))
        out.append({"bucket": key, "size": len(members), "groups": len(groups),
                    "seconds": round(time.perf_counter() - t0, 3)})
    return (max(out, key=lambda r: r["seconds"]) | {"examined": out}) if out else {}


def worst_structure(files: list[Path], sample: int, settings, seed: int) -> dict[str, Any]:
    """Serial import + screening time per structure on a sample (the largest files + a random sample)."""
    from dftflow.screening.pipeline import build_chain, run_chain
    from dftflow.sources.discover import ImportTask, run_import_task

    rng = random.Random(seed + 1)
    by_size = sorted(files, key=lambda p: -p.stat().st_size)
    chosen = list(dict.fromkeys(by_size[: max(1, sample // 10)] + rng.sample(files, min(sample, len(files)))))
    chain = build_chain(settings)
    times = []
    for path in chosen:
        task = ImportTask("cif_file", f"bench:{path.name}", {"source": "bench", "file": str(path)}, path=str(path))
        t0 = time.perf_counter()
        entries = run_import_task(task)
        t1 = time.perf_counter()
        last, nsites = "import failed", None
        for e in entries:
            if e.ok:
                nsites = len(e.packed["species"])
                res = run_chain(chain, (e.uid, json.dumps(e.packed), json.dumps(e.flags)), settings.timeout_s)
                last = f"{res[-1][0]}: {res[-1][1].status}"
        t2 = time.perf_counter()
        times.append((t2 - t0, t1 - t0, t2 - t1, path.name, nsites, last))
    times.sort(reverse=True)
    tot = [t[0] for t in times]
    worst = times[0]
    return {"sampled": len(chosen), "median_s": statistics.median(tot),
            "p99_s": statistics.quantiles(tot, n=100)[98] if len(tot) > 1 else tot[0],
            "max_s": worst[0], "max_import_s": worst[1], "max_screen_s": worst[2], "file": worst[3],
            "nsites": worst[4], "stopped_at": worst[5]}


_NO_SYMOPS_CIF = """data_NaCl_no_symops
_symmetry_space_group_name_H-M   'F m -3 m'
_symmetry_Int_Tables_number   225
_cell_length_a   5.64
_cell_length_b   5.64
_cell_length_c   5.64
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   90
loop_
 _atom_site_label
 _atom_site_type_symbol
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Na1  Na  0  0  0  1
  Cl1  Cl  0.5  0.5  0.5  1
"""


def no_symops_probe(repeat: int = 3) -> dict[str, float]:
    """Import time of a CIF that names its space group (Fm-3m) but lists no symmetry operations.

    Not in the generated set (ICSD/COD exports and CifWriter list the operations).
    pymatgen then builds the group from its symbol; its SpaceGroup cache is weak,
    so a worker rebuilds it for every such file. Measured in a fresh interpreter,
    as in a worker (this process keeps SpaceGroups alive, which hides the cost).
    """
    import subprocess

    code = ("import json, time, warnings; warnings.simplefilter('ignore')\n"
            "from dftflow.sources.cif import parse_cif_text\n"
            f"text = {_NO_SYMOPS_CIF!r}\n"
            "parse_cif_text(text, 'warm-up', {})\n"
            "out = []\n"
            f"for _ in range({repeat}):\n"
            "    t0 = time.perf_counter(); e = parse_cif_text(text, 'probe', {})\n"
            "    out.append(time.perf_counter() - t0)\n"
            "    assert e[0].ok, e[0].error\n"
            "print(json.dumps(sorted(out)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    times = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"median_s": statistics.median(times)}


def reference_import(files: list[Path], limit: int, seed: int) -> dict[str, Any]:
    """Serial pymatgen CifParser loop (on a random sample if ``limit`` < number of files)."""
    from pymatgen.io.cif import CifParser

    sample = files if limit >= len(files) else sorted(random.Random(seed + 2).sample(files, limit))
    ok = failed = 0
    t0 = time.perf_counter()
    for path in sample:
        try:
            structures = CifParser(path).parse_structures(primitive=False)
            ok += bool(structures)
            failed += not structures
        except Exception:
            failed += 1
    dt = time.perf_counter() - t0
    return {"files": len(sample), "seconds": dt, "ok": ok, "failed": failed, "per_s": len(sample) / dt,
            "extrapolated_s": dt / len(sample) * len(files), "sample": [str(p) for p in sample]}


def dftflow_import_serial(sample: list[str]) -> dict[str, Any]:
    """dftflow's per-file import function, serially in this process, on the reference's files."""
    from dftflow.sources.discover import ImportTask, run_import_task

    t0 = time.perf_counter()
    for p in sample:
        run_import_task(ImportTask("cif_file", f"bench:{p}", {"source": "bench", "file": p}, path=p))
    dt = time.perf_counter() - t0
    return {"files": len(sample), "seconds": dt, "per_s": len(sample) / dt}


def reference_dedup(items: list, cfg, limit: int, workers: int, timeout: float,
                    monitor: ProcMonitor) -> dict[str, Any]:
    """pymatgen group_structures vs dftflow deduplicate on the first ``limit`` screened structures."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from dftflow.sources.records import unpack

    subset = items[:limit]
    serial = time_dedup(subset, cfg, 1, timeout, monitor)
    parallel = time_dedup(subset, cfg, workers, timeout, monitor) if workers > 1 else serial
    _clear_matcher_cache()
    structures = [unpack(it.packed) for it in sorted(subset, key=lambda it: (it.priority, it.uid))]
    t0 = time.perf_counter()
    groups = StructureMatcher(ltol=cfg.ltol, stol=cfg.stol, angle_tol=cfg.angle_tol).group_structures(structures)
    dt = time.perf_counter() - t0
    _clear_matcher_cache()
    return {"items": len(subset), "of": len(items), "pymatgen_seconds": dt, "pymatgen_unique": len(groups),
            "dftflow_serial": serial, "dftflow_parallel": parallel}


def _clear_matcher_cache() -> None:
    # StructureMatcher keeps reduced structures in a process-wide LRU cache: start each measurement cold.
    try:
        from pymatgen.core.structure_matcher import StructureMatcher

        StructureMatcher._get_reduced_istructure.cache_clear()
    except (ImportError, AttributeError):
        pass


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def fmt_s(x: float) -> str:
    return f"{x:.2f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="number of CIF files (default 10000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="dftflow worker processes (default 2)")
    ap.add_argument("--json", type=Path, help="write all results to this file")
    ap.add_argument("--data-dir", type=Path,
                    help="where to write the CIFs (kept, and reused when --n/--seed/fractions match); "
                         "default: inside the temp dir")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (catalog, and CIFs without --data-dir)")
    ap.add_argument("--dup-fraction", type=float, default=0.2, help="re-generated copies of earlier structures")
    ap.add_argument("--broken-fraction", type=float, default=0.03, help="truncated, empty or non-CIF files")
    ap.add_argument("--sym-fraction", type=float, default=0.5,
                    help="fraction written symmetrized (space group + operations + asymmetric unit) "
                         "where the cell setting allows; the rest all sites in P1")
    ap.add_argument("--ref-import-max", type=int, default=2000,
                    help="files in the serial pymatgen import reference (extrapolated to --n)")
    ap.add_argument("--ref-dedup-max", type=int, default=2000,
                    help="screened structures in the group_structures reference")
    ap.add_argument("--worst-sample", type=int, default=300,
                    help="structures re-imported and re-screened serially for the per-structure worst case")
    ap.add_argument("--no-reference", action="store_true", help="skip the pymatgen reference measurements")
    ap.add_argument("--no-scaling", action="store_true", help="skip the dedup scaling measurements")
    ap.add_argument("--memory", action="store_true",
                    help="report the peak RSS of each stage: main process (reset per stage), largest worker, and "
                         "all processes together (sampled every 0.25 s)")
    args = ap.parse_args(argv)

    argv_shown = sys.argv if argv is None else ["bench/bench_structures.py", *argv]
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ)
    command = " ".join([env, Path(sys.executable).name, *map(shlex.quote, argv_shown)]).strip()
    print(f"command: {command}")
    print(f"machine: {os.cpu_count()} cpus, python {platform.python_version()}, {platform.platform()}")

    from dftflow.catalog import Catalog
    from dftflow.config.recipe import Recipe, SourceSpec
    from dftflow.screening import stages as st

    warnings.simplefilter("ignore")
    vers = st.versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    calib = cpu_calibration(args.workers)
    print(f"cpu check: {args.workers} processes give {calib['speedup']:.2f}x the throughput of 1 "
          f"(ideal {args.workers:.2f}); load average {calib['loadavg_1min']:.2f}")
    results: dict[str, Any] = {"command": command, "args": {k: str(v) for k, v in vars(args).items()},
                               "versions": vers, "cpus": os.cpu_count(), "cpu_check": calib}

    tmp = Path(tempfile.mkdtemp(prefix="dftflow-bench-"))
    data_dir = (args.data_dir or tmp / "cifs").resolve()
    monitor = ProcMonitor()
    try:
        with monitor:
            _run(args, results, tmp, data_dir, monitor, Catalog, Recipe, SourceSpec, st)
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"results written to {args.json}")
    return 0


def _run(args, results, tmp, data_dir, monitor, Catalog, Recipe, SourceSpec, st) -> None:  # noqa: N803, PLR0915
    # -- data -------------------------------------------------------------------
    gen = generate(args.n, args.seed, data_dir, dup_fraction=args.dup_fraction,
                   broken_fraction=args.broken_fraction, sym_fraction=args.sym_fraction,
                   workers=os.cpu_count() or 1)
    how = "reused" if gen["reused"] else f"written in {gen['seconds']} s, not timed below"
    print(f"\ndata: {args.n} CIFs in {data_dir} ({how})")
    print(f"  {gen['kinds']}; {gen['symmetrized_files']} symmetrized (space group + operations + asymmetric "
          f"unit), the rest all sites in P1; {gen['distinct_compositions']} prototype×composition pairs; "
          f"sites per cell mean {gen['sites_written']['mean']}, max {gen['sites_written']['max']}")
    results["data"] = {k: v for k, v in gen.items() if k != "specs"}
    files = sorted(data_dir.rglob("*.cif"))

    # -- the dftflow funnel -----------------------------------------------------------
    recipe = Recipe(name="bench", workers=args.workers,
                    sources=[SourceSpec(type="cif", path=str(data_dir), label="bench")])
    catalog = Catalog(tmp / "project" / "catalog.sqlite")
    clocks: dict[str, Clock] = {}
    with Clock(monitor) as total:
        with Clock(monitor, args.memory) as clocks["import"]:
            imp = st.run_import(catalog, recipe, workers=args.workers)
        with Clock(monitor, args.memory) as clocks["screen"]:
            scr = st.run_screen(catalog, recipe.screening, workers=args.workers)
        with Clock(monitor, args.memory) as clocks["dedup"]:
            ded = st.run_dedup(catalog, recipe.screening, workers=args.workers)
    funnel = st.funnel(catalog)
    entered = {"import": imp["tasks"], "screen": scr["screened"], "dedup": ded["entered"]}
    left = {"import": imp["imported"], "screen": ded["entered"], "dedup": ded["unique"]}
    results["pipeline"] = {"import": imp, "screen": scr, "dedup": ded, "funnel": funnel,
                           "clocks": {k: c.as_dict() for k, c in clocks.items()}, "total": total.as_dict()}
    results["rss_after_pipeline_mb"] = rss_mb(monitor)

    w = args.workers
    print(f"\n== dftflow funnel: run_import, run_screen, run_dedup with {w} workers ==")
    print(f"{'stage':<7} {'in':>6} {'out':>6} {'wall':>9} {'struct/s':>9} {'cpu':>9} {'cpu ms/struct':>14} "
          f"{'cpu/' + str(w):>9}")
    for s, c in clocks.items():
        print(f"{s:<7} {entered[s]:>6} {left[s]:>6} {fmt_s(c.wall):>9} {entered[s] / c.wall:>9.1f} "
              f"{fmt_s(c.cpu):>9} {c.cpu / max(entered[s], 1) * 1e3:>14.1f} {fmt_s(c.cpu / w):>9}")
    print(f"{'total':<7} {args.n:>6} {ded['unique']:>6} {fmt_s(total.wall):>9} {args.n / total.wall:>9.1f} "
          f"{fmt_s(total.cpu):>9} {total.cpu / args.n * 1e3:>14.1f} {fmt_s(total.cpu / w):>9}")
    scale = 10_000 / args.n
    print(f"target: 10,000 structures < 300 s on 2 cores. Measured wall {total.wall * scale:.0f} s"
          f"{' (scaled from ' + str(args.n) + ')' if args.n != 10_000 else ''}; CPU/{w} = "
          f"{total.cpu / w * scale:.0f} s if the CPU work were spread evenly over {w} cores at the speed seen "
          f"(cpu check: {results['cpu_check']['speedup']:.2f}x of ideal {w})")
    print("funnel: " + "; ".join(f"{r['step']} {r['passed']}/{r['entered']}" for r in funnel))
    for r in funnel:
        if r["reasons"]:
            print(f"  {r['step']} rejects: " + ", ".join(f"{why} ×{k}" for why, k in r["reasons"]))
    if args.memory:
        print("peak RSS per stage (MB): " + "; ".join(
            f"{k} main {c.peak_mb['main']}, largest worker {c.peak_mb['largest_worker']}, all processes "
            f"{c.peak_mb['sum_sampled']}" for k, c in clocks.items()))
    rss = results["rss_after_pipeline_mb"]
    print(f"peak RSS: main {rss['main']} MB, largest worker {rss['largest_worker']} MB "
          f"(getrusage children: {rss['reaped_children']} MB, sees only reaped children, not fork-server workers)")

    # -- worst single structure ----------------------------------------------------
    items = dedup_items(catalog)
    worst = worst_structure(files, args.worst_sample, recipe.screening, args.seed)
    wb = worst_bucket(items, recipe.screening.dedup)
    probe = no_symops_probe()
    results.update(worst_structure=worst, worst_bucket=wb, no_symops_probe=probe)
    print("\n== worst case (serial, 1 process) ==")
    print(f"import+screen of {worst['sampled']} files (the {max(1, args.worst_sample // 10)} largest + a random "
          f"sample): median {worst['median_s'] * 1e3:.1f} ms, p99 {worst['p99_s'] * 1e3:.1f} ms, max "
          f"{worst['max_s']:.3f} s ({worst['file']}, {worst['nsites']} sites: import {worst['max_import_s']:.3f} s "
          f"+ screen {worst['max_screen_s']:.3f} s, last step {worst['stopped_at']})")
    if wb:
        print(f"slowest dedup bucket of the {len(wb['examined'])} largest: {wb['bucket']}, {wb['size']} structures "
              f"→ {wb['groups']} groups in {wb['seconds']:.3f} s")
    print(f"not in the data set: a CIF naming Fm-3m without listing its symmetry operations takes "
          f"{probe['median_s']:.2f} s to import (pymatgen rebuilds the space group for each such file)")

    # -- reference tools -------------------------------------------------------------
    timeout = recipe.screening.timeout_s * 10
    if not args.no_reference:
        ref_imp = reference_import(files, args.ref_import_max, args.seed)
        dfs = dftflow_import_serial(ref_imp.pop("sample"))
        ref_ded = reference_dedup(items, recipe.screening.dedup, args.ref_dedup_max, w, timeout, monitor)
        results["reference"] = {"import": ref_imp, "dftflow_import_serial_same_files": dfs, "dedup": ref_ded}
        imp_rate = entered["import"] / clocks["import"].wall
        part = "all files" if ref_imp["files"] == len(files) else \
            f"{ref_imp['files']} of {len(files)} files, extrapolated"
        print("\n== reference tools, serial (1 process) ==")
        print(f"{'':<58} {'dftflow':>10} {'reference':>10} {'dftflow/ref':>12}")
        print(f"{'import files/s: dftflow ' + str(w) + ' workers vs CifParser loop':<58} {imp_rate:>10.1f} "
              f"{ref_imp['per_s']:>10.1f} {imp_rate / ref_imp['per_s']:>11.2f}x")
        print(f"{'import files/s: both serial, same files':<58} {dfs['per_s']:>10.1f} {ref_imp['per_s']:>10.1f} "
              f"{dfs['per_s'] / ref_imp['per_s']:>11.2f}x")
        print(f"{'import time, all ' + str(len(files)) + ' files (reference: see below)':<58} "
              f"{fmt_s(clocks['import'].wall):>10} {fmt_s(ref_imp['extrapolated_s']):>10} "
              f"{ref_imp['extrapolated_s'] / clocks['import'].wall:>11.2f}x")
        n_sub = ref_ded["items"]
        sub = f"all {n_sub}" if n_sub == ref_ded["of"] else f"first {n_sub} of {ref_ded['of']}"
        ser, par = ref_ded["dftflow_serial"], ref_ded["dftflow_parallel"]
        pm = ref_ded["pymatgen_seconds"]
        print(f"{'dedup structures/s, ' + sub + ' screened: dftflow 1 worker':<58} {n_sub / ser['seconds']:>10.1f} "
              f"{n_sub / pm:>10.1f} {pm / ser['seconds']:>11.2f}x")
        print(f"{'dedup structures/s, same: dftflow ' + str(w) + ' workers':<58} {n_sub / par['seconds']:>10.1f} "
              f"{n_sub / pm:>10.1f} {pm / par['seconds']:>11.2f}x")
        print(f"{'dedup unique structures found':<58} {ser['unique']:>10} {ref_ded['pymatgen_unique']:>10}")
        print(f"  import reference: {part}; dedup: {sub} screened structures, {ser['buckets']} dftflow buckets "
              f"({ser['multi_buckets']} with >1 member, largest {ser['largest_bucket']}); ratios > 1: dftflow faster")

    # -- dedup scaling -------------------------------------------------------------
    if not args.no_scaling:
        idx_of = {f"bench:{p.relative_to(data_dir).as_posix()}": i for i, p in enumerate(files)}
        scaling = []
        for frac in (0.1, 0.5, 1.0):
            k = max(1, round(args.n * frac))
            sub_items = [it for it in items if idx_of.get(it.uid, 0) < k]
            scaling.append({"files": k, **time_dedup(sub_items, recipe.screening.dedup, w, timeout, monitor)})
        base = scaling[0]
        for r in scaling:
            r["time_vs_linear"] = (r["seconds"] / base["seconds"]) / (r["items"] / base["items"])
            r["ms_per_matched"] = r["cpu_s"] / max(r["matched_items"], 1) * 1e3
        results["dedup_scaling"] = scaling
        print(f"\n== dedup scaling: deduplicate() alone on the screened structures of the first N files, "
              f"{w} workers ==")
        print(f"{'N files':>8} {'screened':>9} {'buckets':>8} {'matched':>8} {'largest':>8} {'unique':>7} "
              f"{'wall':>9} {'cpu':>9} {'wall/linear':>12} {'cpu ms/matched':>15}")
        for r in scaling:
            print(f"{r['files']:>8} {r['items']:>9} {r['buckets']:>8} {r['matched_items']:>8} "
                  f"{r['largest_bucket']:>8} {r['unique']:>7} {fmt_s(r['seconds']):>9} {fmt_s(r['cpu_s']):>9} "
                  f"{r['time_vs_linear']:>11.2f}x {r['ms_per_matched']:>15.1f}")
        print("  matched = structures in buckets with more than one member (singletons never reach the matcher);\n"
              "  wall/linear = (t_N / t_first) / (screened_N / screened_first)")

    results["rss_end_mb"] = rss_mb(monitor)
    results["cpu_check_end"] = cpu_calibration(args.workers)
    print(f"\ncpu check at the end: {results['cpu_check_end']['speedup']:.2f}x of ideal {args.workers}; "
          f"peak RSS overall: main {results['rss_end_mb']['main']} MB, largest worker "
          f"{results['rss_end_mb']['largest_worker']} MB")
    catalog.close()


if __name__ == "__main__":
    sys.exit(main())
