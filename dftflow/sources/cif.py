"""Parse CIF text (ICSD, COD, Pauling-file and generated CIFs) into :class:`Imported` entries.

Each data block that holds atom sites becomes one entry; blocks without atoms
(a global block, a powder pattern) are skipped. A file none of whose blocks
holds a structure is one failed entry with the reason. The parse runs with
``primitive=False`` and ``check_occu=False`` so partially occupied sites are
kept as they are written and the screening decides about them.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

from pymatgen.core import Composition, DummySpecies, Element
from pymatgen.io.cif import CifBlock, CifFile

from dftflow.sources.cif_expand import ExpandingCifParser
from dftflow.sources.records import Imported, check_geometry, pack

_ID_TAGS = {
    "_database_code_icsd": "icsd",
    "_cod_database_code": "cod",
    "_database_code_depnum_ccdc_archive": "ccdc",
}
_PAULING = re.compile(r"sm_isp_(SD\d+)", re.IGNORECASE)
# A type symbol like 'NH3', 'OH' or 'CH2' is a group with its hydrogens left implicit
# (pymatgen would read 'NH3' as nihonium).
_H_GROUP = re.compile(r"^([A-Z][a-z]?)H\d*[+-]?$")
# A type symbol proper: an element symbol, optionally with a charge ('Fe', 'Fe3+', 'O2-',
# 'Fe2.5+', 'Li1+', 'C0+', 'O-2'; upper case as some programs write it: 'FE', 'CL').
_TYPE_SYMBOL = re.compile(r"^([A-Za-z]{1,2})(?:\d+(?:\.\d+)?[+-]?|[+-]\d*(?:\.\d+)?)?$")
# A Pauling-file mixed site: fractions and elements joined by '+' ('0.8Nb + 0.2Zr').
_MIXED = re.compile(r"^\s*\d*\.?\d+\s*[A-Z][a-z]?(?:\s*\+\s*\d*\.?\d+\s*[A-Z][a-z]?)+\s*$")
_MIXED_PART = re.compile(r"(\d*\.?\d+)\s*([A-Z][a-z]?)")
# Aliases pymatgen's parser maps to an element on purpose (water and its atoms).
_TYPE_ALIASES = {"Hw", "Ow", "Wat", "wat"}
# Declared and parsed amounts agree within this (formula tags are rounded).
_FORMULA_RTOL, _FORMULA_ATOL = 0.02, 0.01
_SYMOP_TAGS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz")
_HM_TAGS = ("_symmetry_space_group_name_h-m", "_space_group_name_h-m_alt", "_symmetry_space_group_name_h_m")
_NUMBER_TAGS = ("_space_group_it_number", "_symmetry_int_tables_number")


def database_ids(block: CifBlock, name: str) -> dict[str, str]:
    """Database identifiers written in a block (ICSD, COD, CCDC, Pauling file)."""
    ids = {}
    lowered = {k.lower(): v for k, v in block.data.items()}
    for tag, db in _ID_TAGS.items():
        value = lowered.get(tag)
        if isinstance(value, str) and value.strip() not in ("", "?", "."):
            ids[db] = value.strip()
    if m := _PAULING.search(name):
        ids["pauling"] = m.group(1)
    return ids


def _has_atoms(block: CifBlock) -> bool:
    keys = {k.lower() for k in block.data}
    return bool(keys & {"_atom_site_fract_x", "_atom_site_cartn_x"})


def _mixed_parts(symbol: str) -> list[tuple[str, float]] | None:
    """The (type symbol, fraction) parts of a Pauling-file mixed site ('0.8Nb + 0.2Zr'), or None."""
    sym = symbol.strip("'\" ")
    if "+" not in sym.replace(" ", "").rstrip("+") or not _MIXED.match(sym):
        return None
    return [(el, float(frac)) for frac, el in _MIXED_PART.findall(sym)]


def _split_mixed_sites(block: CifBlock) -> int:
    """Rewrite each mixed-site row ('0.8Nb + 0.2Zr') of the atom-site loop as one row per element.

    The rows share the position and carry occupancy = fraction × the written
    occupancy, so pymatgen builds one partially occupied site, which the
    screening then treats as any other disordered site. Returns the rows split.
    """
    keys = {k.lower(): k for k in block.data}
    type_key = keys.get("_atom_site_type_symbol")
    if type_key is None or isinstance(block.data[type_key], str):
        return 0
    loop = next((cols for cols in block.loops if type_key in cols), None)
    if loop is None:
        return 0
    types = block.data[type_key]
    parts = [_mixed_parts(t) for t in types]
    if not any(parts):
        return 0
    occ_key = keys.get("_atom_site_occupancy")
    if occ_key is None:
        occ_key = "_atom_site_occupancy"
        block.data[occ_key] = ["1.0"] * len(types)
        loop.append(occ_key)
    label_key = keys.get("_atom_site_label")
    new: dict[str, list[str]] = {k: [] for k in loop}
    for i, split in enumerate(parts):
        for element, fraction in split or [(None, 1.0)]:
            for k in loop:
                value = block.data[k][i]
                if element is not None:
                    if k == type_key:
                        value = element
                    elif k == occ_key:
                        written = re.sub(r"\(\d+\)$", "", value)  # '0.95(2)' -> '0.95'
                        base = float(written) if written not in ("?", ".") else 1.0
                        value = f"{base * fraction:.6g}"
                    elif k == label_key:
                        value = f"{value}_{element}"
                new[k].append(value)
    block.data.update(new)
    return sum(1 for p in parts if p)


def _unknown_type_symbols(block: CifBlock) -> list[str]:
    """Written type symbols that name no element.

    pymatgen reads what it can from such a symbol ('Bb' as boron, 'Uuo' as uranium,
    'Xx' as a dummy species) or drops the site ('?'), so they are caught here.
    """
    lowered = {k.lower(): v for k, v in block.data.items()}
    types = lowered.get("_atom_site_type_symbol")
    if types is None:
        return []
    bad = set()
    for raw in [types] if isinstance(types, str) else types:
        sym = raw.strip("'\" ")
        if sym in _TYPE_ALIASES or _H_GROUP.match(sym):  # aliases; H groups are flagged instead
            continue
        m = _TYPE_SYMBOL.match(sym)
        if m is None or not Element.is_valid_symbol(m.group(1).title()):
            bad.add(sym)
    return sorted(bad)


def _short_elements(declared: Composition, composition: Composition) -> list[str]:
    """Declared elements of which the sites hold less than the declared formula's proportion."""
    have = composition.element_composition
    ratios = {el.symbol: have[el] / declared[el] for el in declared.elements if declared[el] > 0}
    if not ratios:
        return []
    top = max(ratios.values())
    if top <= 0:
        return sorted(ratios)
    return sorted(sym for sym, r in ratios.items()
                  if (top - r) * declared[sym] > max(_FORMULA_RTOL * top * declared[sym], _FORMULA_ATOL))


def _setting_problem(block: CifBlock, parser_warnings: list[str]) -> str | None:
    """Why the symmetry pymatgen applied cannot be the written one, or None.

    Without a list of symmetry operations pymatgen expands the atoms with the written
    Hermann-Mauguin symbol; a symbol it does not know (a non-standard setting, such as
    the Pauling file's 'F4/mmm') it replaces, silently, by the space-group number in
    its standard setting (I4/mmm), or by P1. Atoms are then misplaced or missing.
    """
    lowered = {k.lower().rstrip("_"): v for k, v in block.data.items()}
    if any(t in lowered for t in _SYMOP_TAGS) or any("Spacegroup from" in w for w in parser_warnings):
        return None
    symbol = next((lowered[t].strip("'\" ") for t in _HM_TAGS if isinstance(lowered.get(t), str)), "")
    compact = re.sub(r"[\s_]", "", symbol)
    if compact in ("", "?", ".") or compact.upper() == "P1":
        return None
    if any("Defaulting to P1" in w for w in parser_warnings):
        return f"space group {symbol!r} is not known to pymatgen (the atoms would be expanded as P1)"
    from pymatgen.symmetry.groups import SpaceGroup

    try:
        number = int(float(next(str(lowered[t]) for t in _NUMBER_TAGS if t in lowered)))
        standard = SpaceGroup.from_int_number(number).symbol
    except (StopIteration, ValueError, OverflowError):  # no usable number: nothing to compare with
        return None
    if compact[0].upper() != standard[0]:
        return (f"space group {symbol!r} is a setting pymatgen does not know; space group {number} "
                f"in its standard setting ({standard}) would misplace the atoms")
    return None


def _declared_formula(block: CifBlock) -> tuple[Composition | None, str | None]:
    """The composition of ``_chemical_formula_sum`` (None when the tag is absent), or why it cannot be read.

    The formula is what atoms missing from the sites are found with (an atom loop
    cut short, hydrogens left out), so a formula that is written but unreadable is
    a reason to refuse the entry, not to skip that check.
    """
    lowered = {k.lower(): v for k, v in block.data.items()}
    formula = lowered.get("_chemical_formula_sum")
    if formula is None or (isinstance(formula, str) and formula.strip() in ("", "?", ".")):
        return None, None
    unchecked = "so atoms missing from the sites cannot be ruled out"
    if not isinstance(formula, str):
        return None, f"_chemical_formula_sum is a loop of {len(formula)} values, not one formula, {unchecked}"
    try:
        declared = Composition(formula.replace("'", "").strip()).element_composition
    except (ValueError, OverflowError) as exc:  # pymatgen's errors for an unparsable formula or amount
        return None, f"_chemical_formula_sum {formula!r} cannot be read ({str(exc).strip()}), {unchecked}"
    if not all(math.isfinite(amount) for amount in declared.values()):
        return None, f"_chemical_formula_sum {formula!r} has an amount that is not a finite number, {unchecked}"
    return declared, None


def _occupancy_problem(structure: Any) -> str | None:
    """Why the sites' occupancies cannot be kept, or None.

    With ``check_occu=False`` pymatgen keeps what the file says, also an occupancy
    above 1 or a site written twice (merged into one site holding both), which no
    structure can be rebuilt from later.
    """
    for i, site in enumerate(structure):
        total = sum(site.species.values())
        if not (math.isfinite(total) and total <= 1 + Composition.amount_tolerance):
            return (f"site {i + 1} ({', '.join(map(str, site.species))}) has a total occupancy of {total:g}, more "
                    "than 1 or not a number (an occupancy misprinted, or an atom written twice)")
    return None


def _flags(block: CifBlock, composition: Composition, declared: Composition | None) -> list[str]:
    """Properties of the written structure that screening must know about."""
    flags = []
    lowered = {k.lower(): v for k, v in block.data.items()}
    types = lowered.get("_atom_site_type_symbol")
    if isinstance(types, list) and any(_H_GROUP.match(t.strip("'\" ")) for t in types):
        flags.append("implicit_hydrogens")
    attached = lowered.get("_atom_site_attached_hydrogens")
    if isinstance(attached, list) and any(v.strip() not in ("0", ".", "?") for v in attached):
        if "implicit_hydrogens" not in flags:
            flags.append("implicit_hydrogens")
    if declared is not None:
        # Elements absent from the sites, or present in a smaller proportion than the
        # formula declares (e.g. an atom loop cut short by a truncated file).
        missing = _short_elements(declared, composition)
        if missing:
            flags.append("missing_atoms:" + ",".join(missing))
    return flags


def parse_cif_text(text: str, uid: str, provenance: dict[str, Any]) -> list[Imported]:
    """All structures in one CIF file's text.

    Parameters
    ----------
    text
        The file's contents.
    uid
        Stable identifier of the file; blocks get ``uid#block`` when a file has several.
    provenance
        Recorded with every entry (source, file, database); block names and
        database ids found in the file are added.
    """
    try:
        cif = CifFile.from_str(text)
    except Exception as exc:
        return [Imported(uid, provenance, error=f"unreadable CIF: {exc}")]
    blocks = [(name, block) for name, block in cif.data.items() if _has_atoms(block)]
    if not blocks:
        return [Imported(uid, provenance, error="no atom sites in any data block")]

    entries = []
    for name, block in blocks:
        entry_uid = uid if len(blocks) == 1 else f"{uid}#{name}"
        prov = {**provenance, "block": name, **{f"{k}_id": v for k, v in database_ids(block, name).items()}}
        entries.append(_parse_block(block, entry_uid, prov))
    return entries


def _parse_block(block: CifBlock, uid: str, provenance: dict[str, Any]) -> Imported:
    _split_mixed_sites(block)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parser = ExpandingCifParser.from_str(str(block), occupancy_tolerance=1.0, site_tolerance=1e-4)
            structures = parser.parse_structures(primitive=False, check_occu=False, on_error="raise")
        except Exception as exc:
            reason = str(exc).strip().splitlines()
            detail = "; ".join(w.strip() for w in getattr(parser, "warnings", [])[:2]) if "parser" in locals() else ""
            msg = reason[0] if reason else type(exc).__name__
            return Imported(uid, provenance, error=f"pymatgen could not build a structure: {msg}"
                            + (f" ({detail})" if detail else ""))
    if not structures:
        return Imported(uid, provenance, error="no structure in block")
    if (problem := _setting_problem(block, parser.warnings)) is not None:
        return Imported(uid, provenance, error=problem)
    structure = structures[0]
    # pymatgen turns a symbol it cannot read into a DummySpecies ('Xx' -> Xx0+), whose
    # Z is not 0, so the symbol itself is checked.
    unknown = _unknown_type_symbols(block) or sorted(
        {getattr(sp, "symbol", str(sp)) for sp in structure.composition
         if isinstance(sp, DummySpecies) or not Element.is_valid_symbol(getattr(sp, "symbol", ""))})
    if unknown:
        return Imported(uid, provenance, error=f"unknown element symbol(s): {', '.join(unknown)}")
    if (problem := check_geometry(structure.lattice.matrix, structure.frac_coords)) is not None:
        return Imported(uid, provenance, error=problem)
    if (problem := _occupancy_problem(structure)) is not None:
        return Imported(uid, provenance, error=problem)
    declared, problem = _declared_formula(block)
    if problem is not None:
        return Imported(uid, provenance, error=problem)
    return Imported(uid, provenance, packed=pack(structure), flags=_flags(block, structure.composition, declared))
