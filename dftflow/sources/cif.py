"""Parse CIF text (ICSD, COD, Pauling-file and generated CIFs) into :class:`Imported` entries.

Each data block that holds atom sites becomes one entry; blocks without atoms
(a global block, a powder pattern) are skipped. A file none of whose blocks
holds a structure is one failed entry with the reason. The parse runs with
``primitive=False`` and ``check_occu=False`` so partially occupied sites are
kept as they are written and the screening decides about them.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from pymatgen.core import Composition
from pymatgen.io.cif import CifBlock, CifFile, CifParser

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


def _flags(block: CifBlock, composition: Composition) -> list[str]:
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
    formula = lowered.get("_chemical_formula_sum")
    if isinstance(formula, str) and formula.strip() not in ("", "?", "."):
        try:
            declared = Composition(formula.replace("'", "").strip())
        except Exception:  # an unparsable formula tag says nothing about missing atoms
            declared = None
        if declared is not None:
            missing = sorted(
                {el.symbol for el in declared.elements} - {el.symbol for el in composition.elements}
            )
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parser = CifParser.from_str(str(block), occupancy_tolerance=1.0, site_tolerance=1e-4)
            structures = parser.parse_structures(primitive=False, check_occu=False, on_error="raise")
        except Exception as exc:
            reason = str(exc).strip().splitlines()
            detail = "; ".join(w.strip() for w in getattr(parser, "warnings", [])[:2]) if "parser" in locals() else ""
            msg = reason[0] if reason else type(exc).__name__
            return Imported(uid, provenance, error=f"pymatgen could not build a structure: {msg}"
                            + (f" ({detail})" if detail else ""))
    if not structures:
        return Imported(uid, provenance, error="no structure in block")
    structure = structures[0]
    unknown = sorted({str(sp) for sp in structure.composition if getattr(sp, "Z", 0) == 0})
    if unknown:
        return Imported(uid, provenance, error=f"unknown element symbol(s): {', '.join(unknown)}")
    if (problem := check_geometry(structure.lattice.matrix, structure.frac_coords)) is not None:
        return Imported(uid, provenance, error=problem)
    return Imported(uid, provenance, packed=pack(structure), flags=_flags(block, structure.composition))
