"""Candidate crystals by decorating prototype structures with elements.

Each prototype is a small primitive cell whose sites carry roles (A, B, X).
Ionic prototypes take cations on the ``+`` roles and anions on the ``-`` roles
in charge-balanced combinations of common oxidation states (pymatgen's, kept
only where SMACT's icsd24 set agrees, with the Pauling electronegativity order,
so every decoration passes the electroneutrality filter); intermetallic
prototypes take any metals, elemental ones any solid element.

Lattices follow from bond lengths: Shannon radii for ionic pairs, metallic
radii for metals, ASE covalent radii (x1.03) for tetrahedral/covalent
prototypes and wherever the others are missing. The cell is scaled so that no
bonded pair is shorter than its bond length and no pair at all closer than
0.8 x the sum of covalent radii.

All decorations are enumerated, shuffled per prototype with the seed, and
interleaved prototype by prototype, preferring elements seen least so far:
any prefix of the order is a diverse sample (``limit: N`` keeps the first N).
"""

from __future__ import annotations

import itertools
import random
import warnings
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

from dftflow.errors import InputError

GENERATOR = "dftflow-prototypes"
VERSION = "1"
COVALENT_FACTOR = 1.03   # bond length / sum of covalent radii in tetrahedral (sp3) solids
IONIC_FALLBACK = 1.04    # the same for ionic pairs without Shannon radii
MIN_FACTOR = 0.8         # no two atoms closer than this x the sum of covalent radii
LOOKAHEAD = 16           # candidates of a prototype's queue compared for element coverage

_NOBLE = {"He", "Ne", "Ar", "Kr", "Xe", "Rn"}
# f-block elements have PAW setups but converge poorly with the cheap pretraining settings.
_F_BLOCK = {"Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu"}
_GASES = {"H", "N", "O", "F", "Cl"} | _NOBLE  # never an elemental crystal
FALLBACK_ELEMENTS = (
    "Ag Al As Au B Ba Be Bi Br C Ca Cd Cl Co Cr Cs Cu F Fe Ga Ge Hf Hg I In Ir K La Li Mg Mn Mo N Na Nb "
    "Ni O Os P Pb Pd Pt Rb Re Rh Ru S Sb Sc Se Si Sn Sr Ta Te Ti Tl V W Y Zn Zr").split()

Site = tuple[int, tuple[float, float, float]]


@dataclass(frozen=True, kw_only=True)
class Prototype:
    """A structure type: space group, cell shape and the asymmetric sites with their roles.

    ``ionic`` gives each role's sign (``"+-"``: cation, anion); ``metal`` allows
    all-metal decorations; ``equivalent`` lists role pairs that symmetry swaps (their
    elements are kept in sorted order so a structure is generated once).
    """

    name: str
    spacegroup: int
    sites: tuple[Site, ...]
    shape: str = "cubic"            # cubic, hexagonal or tetragonal
    c_over_a: float = 1.0
    ionic: str = ""
    metal: bool = False
    element: bool = False
    covalent: bool = False          # covalent radii for the bonds (tetrahedral/low coordination)
    equivalent: tuple[tuple[int, int], ...] = ()
    weight: float = 1.0             # share of the interleaved order

    @property
    def nroles(self) -> int:
        return 1 + max(role for role, _ in self.sites)


def _p(name: str, sg: int, *sites: Site, **kw: Any) -> Prototype:
    return Prototype(name=name, spacegroup=sg, sites=sites, **kw)


_H, _Q, _T = 0.5, 0.25, 1 / 3
PROTOTYPES: tuple[Prototype, ...] = (
    _p("rocksalt", 225, (0, (0, 0, 0)), (1, (_H, _H, _H)), ionic="+-"),
    _p("cscl", 221, (0, (0, 0, 0)), (1, (_H, _H, _H)), metal=True, equivalent=((0, 1),)),
    _p("zincblende", 216, (0, (0, 0, 0)), (1, (_Q, _Q, _Q)), ionic="+-", covalent=True),
    _p("wurtzite", 186, (0, (_T, 2 * _T, 0)), (1, (_T, 2 * _T, 0.375)), shape="hexagonal", c_over_a=1.633,
       ionic="+-", covalent=True),
    _p("nias", 194, (0, (0, 0, 0)), (1, (_T, 2 * _T, _Q)), shape="hexagonal", c_over_a=1.39, ionic="+-"),
    _p("fluorite", 225, (0, (0, 0, 0)), (1, (_Q, _Q, _Q)), ionic="+-"),
    _p("antifluorite", 225, (0, (_Q, _Q, _Q)), (1, (0, 0, 0)), ionic="+-"),
    _p("rutile", 136, (0, (0, 0, 0)), (1, (0.305, 0.305, 0)), shape="tetragonal", c_over_a=0.644, ionic="+-"),
    _p("cdi2", 164, (0, (0, 0, 0)), (1, (_T, 2 * _T, _Q)), shape="hexagonal", c_over_a=1.61, ionic="+-"),
    _p("alb2", 191, (0, (0, 0, 0)), (1, (_T, 2 * _T, _H)), shape="hexagonal", c_over_a=1.08, ionic="+-",
       metal=True),
    _p("mos2_2h", 194, (0, (_T, 2 * _T, _Q)), (1, (_T, 2 * _T, 0.621)), shape="hexagonal", c_over_a=3.89,
       ionic="+-"),
    _p("hbn", 194, (0, (_T, 2 * _T, _Q)), (1, (_T, 2 * _T, 0.75)), shape="hexagonal", c_over_a=2.66,
       ionic="+-", covalent=True),
    _p("perovskite", 221, (0, (_H, _H, _H)), (1, (0, 0, 0)), (2, (_H, 0, 0)), ionic="++-"),
    _p("cuprite", 224, (0, (_Q, _Q, _Q)), (1, (0, 0, 0)), ionic="+-", covalent=True),
    _p("heusler", 225, (0, (_Q, _Q, _Q)), (1, (0, 0, 0)), (2, (_H, _H, _H)), metal=True, equivalent=((1, 2),)),
    _p("half_heusler", 216, (0, (_Q, _Q, _Q)), (1, (0, 0, 0)), (2, (_H, _H, _H)), metal=True,
       equivalent=((1, 2),)),
    _p("l12", 221, (0, (0, 0, 0)), (1, (0, _H, _H)), metal=True),
    _p("l10", 123, (0, (0, 0, 0)), (1, (_H, _H, _H)), shape="tetragonal", c_over_a=1.34, metal=True,
       equivalent=((0, 1),)),
    _p("fcc", 225, (0, (0, 0, 0)), element=True, weight=0.3),
    _p("bcc", 229, (0, (0, 0, 0)), element=True, weight=0.3),
    _p("hcp", 194, (0, (_T, 2 * _T, _Q)), shape="hexagonal", c_over_a=1.633, element=True, weight=0.3),
    _p("diamond", 227, (0, (0, 0, 0)), element=True, covalent=True, weight=0.3),
    _p("sc", 221, (0, (0, 0, 0)), element=True, weight=0.3),
    _p("spinel", 227, (0, (0, 0, 0)), (1, (0.625, 0.625, 0.625)), (2, (0.387, 0.387, 0.387)), ionic="++-"),
)
BY_NAME = {p.name: p for p in PROTOTYPES}


@dataclass(frozen=True, slots=True)
class Candidate:
    """One decorated prototype; ``rank`` is its position in the seeded order."""

    rank: int
    prototype: str
    elements: tuple[str, ...]            # one per role
    lattice: np.ndarray                  # (3, 3) rows, Å
    numbers: list[int]                   # atomic number per site
    frac_coords: np.ndarray              # (nsites, 3)
    oxidation_states: tuple[int, ...] | None = field(default=None)

    def uid(self, label: str) -> str:
        return f"{label}:{self.rank:06d}:{self.prototype}:{'-'.join(self.elements)}"

    def structure(self) -> Any:
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.lattice), self.numbers, self.frac_coords)


# -- unit cells ------------------------------------------------------------------
@cache
def unit_cell(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Primitive cell of a prototype at a = 1: lattice, roles per site, fractional coordinates."""
    from pymatgen.core import Lattice, Structure

    proto = BY_NAME[name]
    lattice = {"cubic": Lattice.cubic(1.0), "hexagonal": Lattice.hexagonal(1.0, proto.c_over_a),
               "tetragonal": Lattice.tetragonal(1.0, proto.c_over_a)}[proto.shape]
    # Role r is marked by the element with Z = r + 1; the roles never merge in the primitive cell.
    conv = Structure.from_spacegroup(proto.spacegroup, lattice, [role + 1 for role, _ in proto.sites],
                                     [xyz for _, xyz in proto.sites])
    prim = conv.get_primitive_structure(tolerance=0.01).get_reduced_structure()
    roles = np.array([site.specie.Z - 1 for site in prim])
    return prim.lattice.matrix, roles, prim.frac_coords % 1.0


def _pair_distances(lattice: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Shortest periodic distance between every pair of sites (self-images included)."""
    shifts = np.array(list(itertools.product(range(-2, 3), repeat=3)), dtype=float)
    diff = frac[None, :, None, :] - frac[:, None, None, :] + shifts[None, None, :, :]
    dist = np.linalg.norm(diff @ lattice, axis=-1)
    dist[dist < 1e-8] = np.inf
    return dist.min(axis=-1)


# -- radii and bond lengths --------------------------------------------------------
@cache
def _radius(symbol: str, kind: str, ox: int = 0) -> float | None:
    from ase.data import atomic_numbers, covalent_radii
    from pymatgen.core import Element, Species

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for every missing radius
        if kind == "ionic":
            r = Species(symbol, ox).ionic_radius
        elif kind == "metallic":
            r = Element(symbol).metallic_radius
        else:
            r = covalent_radii[atomic_numbers[symbol]]
    return float(r) if r else None


def _bond(proto: Prototype, a: str, b: str, ox: tuple[int, int] | None) -> float:
    cov = _radius(a, "covalent") + _radius(b, "covalent")  # type: ignore[operator]
    if proto.covalent:
        return COVALENT_FACTOR * cov
    if ox is not None:
        ra, rb = _radius(a, "ionic", ox[0]), _radius(b, "ionic", ox[1])
        return ra + rb if ra and rb else IONIC_FALLBACK * cov
    ra, rb = _radius(a, "metallic"), _radius(b, "metallic")
    return ra + rb if ra and rb else cov


def build(proto: Prototype, elements: Sequence[str], ox: Sequence[int] | None = None,
          rank: int = 0) -> Candidate:
    """The decorated cell, scaled to the bond lengths of its elements."""
    from ase.data import atomic_numbers

    lattice, roles, frac = unit_cell(proto.name)
    dist = _pair_distances(lattice, frac)
    scale = 0.0
    for i, j in itertools.combinations_with_replacement(range(len(roles)), 2):
        ri, rj = roles[i], roles[j]
        a, b = elements[ri], elements[rj]
        floor = MIN_FACTOR * (_radius(a, "covalent") + _radius(b, "covalent"))  # type: ignore[operator]
        bonded = ox is None or ox[ri] * ox[rj] < 0
        target = _bond(proto, a, b, None if ox is None else (ox[ri], ox[rj])) if bonded else 0.0
        scale = max(scale, max(floor, target) / dist[i, j])
    return Candidate(rank, proto.name, tuple(elements), lattice * scale,
                     [atomic_numbers[elements[r]] for r in roles], frac.copy(),
                     None if ox is None else tuple(ox))


# -- element pools and decorations -------------------------------------------------
def default_elements() -> list[str]:
    """Elements with a GPAW PBE setup (``Fe.PBE.gz``), less H, noble gases and the f block."""
    try:
        import gpaw

        found = {p.name.split(".")[0] for d in gpaw.setup_paths for p in Path(d).glob("*.PBE*")
                 if p.name.split(".")[1] == "PBE"}
    except ImportError:
        found = set(FALLBACK_ELEMENTS)
    return sorted(found - _NOBLE - _F_BLOCK - {"H"})


@cache
def _states(symbol: str) -> tuple[tuple[int, ...], tuple[int, ...], float | None]:
    """(cation states, anion states, Pauling electronegativity) agreed by pymatgen and icsd24."""
    import smact
    from pymatgen.core import Element

    from dftflow.screening.charge import _oxidation_states

    icsd = set(_oxidation_states((symbol,), "icsd24")[0] or ())
    common = [s for s in Element(symbol).common_oxidation_states if s in icsd]
    el = Element(symbol)
    cations = tuple(s for s in common if s > 0) if (el.is_metal or el.is_metalloid) else ()
    anions = tuple(s for s in common if s < 0) if not el.is_metal else ()
    return cations, anions, smact.Element(symbol).pauling_eneg


def _counts(proto: Prototype) -> list[int]:
    roles = unit_cell(proto.name)[1]
    counts = [int((roles == r).sum()) for r in range(proto.nroles)]
    g = gcd(*counts)
    return [c // g for c in counts]


def _ionic(proto: Prototype, elements: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], tuple[int, ...]]]:
    counts = _counts(proto)
    pools = [[e for e in elements if _states(e)[0 if sign == "+" else 1] and _states(e)[2]]
             for sign in proto.ionic]
    for combo in itertools.product(*pools):
        if len(set(combo)) < len(combo) or any(combo[i] > combo[j] for i, j in proto.equivalent):
            continue
        eneg = [_states(e)[2] for e in combo]
        cat = [x for x, s in zip(eneg, proto.ionic) if s == "+"]
        an = [x for x, s in zip(eneg, proto.ionic) if s == "-"]
        if max(cat) >= min(an):  # type: ignore[type-var]
            continue
        choices = [_states(e)[0 if s == "+" else 1] for e, s in zip(combo, proto.ionic)]
        for ox in itertools.product(*choices):
            if sum(n * q for n, q in zip(counts, ox)) == 0:
                yield combo, ox
                break


Decoration = tuple[tuple[str, ...], tuple[int, ...] | None]


def decorations(proto: Prototype, elements: Sequence[str]) -> list[Decoration]:
    """Every decoration of ``proto`` with ``elements``, sorted; (elements per role, oxidation states)."""
    return list(_decorations(proto, tuple(sorted(set(elements)))))


@cache
def _decorations(proto: Prototype, elements: tuple[str, ...]) -> tuple[Decoration, ...]:
    from smact import metals

    out: list[Decoration] = []
    if proto.ionic:
        out.extend(_ionic(proto, elements))
    if proto.metal:
        pool = [e for e in elements if e in metals]
        out.extend((c, None) for c in itertools.permutations(pool, proto.nroles)
                   if all(c[i] < c[j] for i, j in proto.equivalent))
    if proto.element:
        out.extend(((e,), None) for e in elements if e not in _GASES)
    return tuple(sorted(out, key=lambda d: d[0]))


# -- the seeded, interleaved order ---------------------------------------------------
def select_prototypes(names: Sequence[str] | None, max_atoms: int | None) -> list[Prototype]:
    unknown = sorted(set(names or ()) - set(BY_NAME))
    if unknown:
        raise InputError(f"unknown prototype(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    chosen = [BY_NAME[n] for n in names] if names else list(PROTOTYPES)
    return [p for p in chosen if max_atoms is None or len(unit_cell(p.name)[1]) <= max_atoms]


def select_elements(symbols: Sequence[str] | None) -> list[str]:
    from ase.data import atomic_numbers

    if symbols is None:
        return default_elements()
    unknown = sorted(s for s in symbols if s not in atomic_numbers or s == "X")
    if unknown:
        raise InputError(f"unknown element(s): {', '.join(unknown)}")
    return sorted(set(symbols))


def generate(prototypes: Sequence[str] | None = None, elements: Sequence[str] | None = None,
             max_atoms: int | None = 8, seed: int = 0, limit: int | None = None,
             per_prototype: int | None = None) -> Iterator[Candidate]:
    """Decorated prototypes in a seeded order of which any prefix is diverse.

    Parameters
    ----------
    prototypes
        Names from :data:`PROTOTYPES` (default: all).
    elements
        Allow-list of element symbols (default: :func:`default_elements`).
    max_atoms
        Skip prototypes whose primitive cell has more sites.
    seed
        Seeds the order; the same arguments always give the same sequence.
    limit
        Stop after this many candidates (a prefix of the unlimited order).
    per_prototype
        At most this many decorations of each prototype.
    """
    pool = select_elements(elements)
    queues: dict[str, deque[Any]] = {}
    for proto in select_prototypes(prototypes, max_atoms):
        items = decorations(proto, pool)
        random.Random(f"{seed}:{proto.name}").shuffle(items)
        if items:
            queues[proto.name] = deque(items[:per_prototype] if per_prototype is not None else items)
    order = list(queues)
    random.Random(seed).shuffle(order)
    tiebreak = {name: i for i, name in enumerate(order)}
    taken = Counter[str]()
    used = Counter[str]()
    rank = 0
    while queues and (limit is None or rank < limit):
        # Stride scheduling: the prototype furthest behind its weighted share goes next.
        name = min(queues, key=lambda n: ((taken[n] + 1) / BY_NAME[n].weight, tiebreak[n]))
        queue = queues[name]
        best = min(range(min(LOOKAHEAD, len(queue))), key=lambda i: (sum(used[e] for e in set(queue[i][0])), i))
        elems, ox = queue[best]
        del queue[best]
        if not queue:
            del queues[name]
        taken[name] += 1
        used.update(set(elems))
        yield build(BY_NAME[name], elems, ox, rank)
        rank += 1


def write_cifs(out: Path, candidates: Iterator[Candidate]) -> dict[str, Any]:
    """One CIF per candidate in ``out`` (``000042_rocksalt_Na-Cl.cif``); files already there are kept."""
    from pymatgen.io.cif import CifWriter

    out.mkdir(parents=True, exist_ok=True)
    per_prototype = Counter[str]()
    elements: set[str] = set()
    written = kept = 0
    for c in candidates:
        per_prototype[c.prototype] += 1
        elements.update(c.elements)
        path = out / f"{c.rank:06d}_{c.prototype}_{'-'.join(c.elements)}.cif"
        if path.exists():
            kept += 1
            continue
        tmp = path.with_suffix(".cif.part")
        CifWriter(c.structure()).write_file(tmp)
        tmp.replace(path)  # a complete file or none: an interrupted run resumes cleanly
        written += 1
    return {"generated": sum(per_prototype.values()), "written": written, "kept": kept,
            "elements": sorted(elements), "per_prototype": dict(per_prototype)}
