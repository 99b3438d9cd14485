"""Train/validation/test splits for the ECD tasks, seeded and duplicate-aware.

The ECD benchmark defines four tasks on two functionals (the HSE06 materials are
a subset of the PBE ones, same relaxed structures):

* ``pbe-id``         train, validate and test on PBE densities;
* ``hse-id``         the same on HSE06 densities;
* ``pbe-to-hse``     train on PBE, test on HSE06 (the functional shift);
* ``pbe+hse-tuning`` pretrain on PBE, fine-tune and test on HSE06.

Every density in the dataset belongs to a *group*: the densities of one crystal
structure, whatever the functional, plus any duplicate of it (StructureMatcher,
the tolerances of the screening dedup). A group has one role — train,
validation or test — so no task ever tests on a crystal whose density, in any
functional, was trained on. The rarest functional is assigned first, so its
requested sizes are met exactly; the others fill up to theirs around it.

With ``cover_elements`` (the default) a group is held out for validation or
test only if each of its elements stays in some training group of the same
functional, so that no held-out density has an element the model never saw.
This only bites in small datasets. When it cannot meet a requested size, it
holds out groups anyway and records the elements that training lacks
(``uncovered``).

The split is a pure function of the dataset's contents, the sizes and the seed.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from dftflow.errors import InputError

ROLES = ("train", "val", "test")
SPLIT_SCHEMA = "dftflow-split/1"

TASKS: dict[str, dict[str, str]] = {
    "pbe-id": {"train": "pbe_train", "val": "pbe_val", "test": "pbe_test"},
    "hse-id": {"train": "hse_train", "val": "hse_val", "test": "hse_test"},
    "pbe-to-hse": {"train": "pbe_train", "val": "pbe_val", "test": "hse_test"},
    "pbe+hse-tuning": {"pretrain": "pbe_train", "pretrain_val": "pbe_val",
                       "train": "hse_train", "val": "hse_val", "test": "hse_test"},
}


def family(functional: str | None) -> str:
    """``hse`` for hybrid (HSE06) densities, ``pbe`` for PBE and PBE+U, else the name in lower case."""
    name = (functional or "").upper()
    if "HSE" in name:
        return "hse"
    if name.startswith("PBE") or not name:
        return "pbe"
    return name.lower()


def _count(size: float, total: int, what: str) -> int:
    """A size given as a fraction (< 1) of ``total`` or as a count (>= 1)."""
    if size < 0 or (size >= 1 and size != int(size)):
        raise InputError(f"{what}: a size is a fraction below 1 or a whole count (got {size})")
    return round(size * total) if size < 1 else int(size)


def _groups(entries: list[dict[str, Any]], *, ltol: float, stol: float, angle_tol: float,
            workers: int) -> list[list[str]]:
    """Union of structure matches and shared provenance uids; each group sorted, groups sorted."""
    from dftflow.screening.dedup import DedupItem, deduplicate
    from dftflow.sources.records import pack

    parent = {e["material_id"]: e["material_id"] for e in entries}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    by_uid: dict[str, str] = {}
    for e in entries:  # the densities of one project structure (PBE and HSE of one flow)
        uid = e.get("uid")
        if uid:
            if uid in by_uid:
                union(by_uid[uid], e["material_id"])
            else:
                by_uid[uid] = e["material_id"]
    # spacegroup/n_primitive 0: bucket by reduced formula only, so that a
    # density of a slightly different relaxation still meets its twin.
    items = [DedupItem(e["material_id"], pack(e["structure"]), e["formula"], 0, 0) for e in entries]
    for _, groups, _error in deduplicate(items, ltol=ltol, stol=stol, angle_tol=angle_tol, workers=workers):
        for g in groups or []:
            for other in g[1:]:
                union(g[0], other)
    members: dict[str, list[str]] = defaultdict(list)
    for mid in parent:
        members[find(mid)].append(mid)
    return sorted(sorted(g) for g in members.values())


def read_entries(root: Path | str) -> list[dict[str, Any]]:
    """id, functional, formula, structure and project uid of every stored material."""
    from pymatgen.core import Lattice, Structure

    from dftflow.dataset.store import Dataset

    ds = Dataset(root)
    try:
        entries = []
        for mid in ds.ids():
            h = ds.header(mid)
            structure = Structure(Lattice(h["lattice"]), [int(z) for z in h["numbers"]], h["frac_coords"])
            entries.append({"material_id": mid, "functional": str(h.get("functional", "")),
                            "formula": structure.composition.reduced_formula, "structure": structure,
                            "uid": h["provenance"].get("uid")})
        return entries
    finally:
        ds.close()


def make_split(
    entries: list[dict[str, Any]], *, seed: int = 0, test: float = 0.1, val: float = 0.05,
    sizes: dict[str, dict[str, float]] | None = None, ltol: float = 0.2, stol: float = 0.3,
    angle_tol: float = 5.0, workers: int = 1, cover_elements: bool = True,
) -> dict[str, Any]:
    """Assign every entry to ``<family>_<role>``; see the module docstring.

    ``test`` and ``val`` apply to every functional family; ``sizes`` overrides
    them per family, e.g. ``{"hse": {"test": 0.2, "val": 0.1}}``.
    """
    if not entries:
        raise InputError("the dataset holds no materials to split")
    fam = {e["material_id"]: family(e["functional"]) for e in entries}
    totals = Counter(fam.values())
    groups = _groups(entries, ltol=ltol, stol=stol, angle_tol=angle_tol, workers=workers)
    order = np.random.default_rng(seed).permutation(len(groups))
    elements = {e["material_id"]: {el.symbol for el in e["structure"].composition.elements} for e in entries}
    # per family and element: the groups not held out that have a density of that family with that element
    in_train: dict[str, Counter] = defaultdict(Counter)
    for members in groups:
        for f in {fam[m] for m in members}:
            in_train[f].update(set().union(*(elements[m] for m in members if fam[m] == f)))

    def keeps_coverage(gi: int) -> bool:
        return all(in_train[fam[m]][el] > 1 for m in groups[gi] for el in elements[m])

    def hold_out(gi: int, r: str) -> None:
        role[gi] = r
        for f in {fam[m] for m in groups[gi]}:
            in_train[f].subtract(set().union(*(elements[m] for m in groups[gi] if fam[m] == f)))

    role: dict[int, str] = {}
    targets: dict[str, dict[str, int]] = {}
    # The rarest family first: its sizes are met exactly, the others fill around it.
    for f in sorted(totals, key=lambda f: (totals[f], f)):
        want = {"test": test, "val": val, **(sizes or {}).get(f, {})}
        targets[f] = {r: _count(float(want[r]), totals[f], f"{f} {r}") for r in ("test", "val")}
        if targets[f]["test"] + targets[f]["val"] > totals[f]:
            raise InputError(f"{f}: test + validation ({targets[f]['test']} + {targets[f]['val']}) exceed the "
                             f"{totals[f]} densities there are")
        have = Counter()
        for gi, r in role.items():
            have[r] += sum(fam[m] == f for m in groups[gi])
        # held out in seed order, first among the groups that keep every element in training (if asked)
        for strict in ((True, False) if cover_elements else (False,)):
            for gi in order:
                n = sum(fam[m] == f for m in groups[gi])
                if n == 0 or gi in role or (strict and not keeps_coverage(gi)):
                    continue
                if have["test"] < targets[f]["test"]:
                    hold_out(gi, "test")
                elif have["val"] < targets[f]["val"]:
                    hold_out(gi, "val")
                else:
                    continue
                have[role[gi]] += n
        for gi in order:
            if gi not in role and any(fam[m] == f for m in groups[gi]):
                role[gi] = "train"
    sets: dict[str, list[str]] = defaultdict(list)
    group_of = {}
    for gi, members in enumerate(groups):
        for m in members:
            sets[f"{fam[m]}_{role[gi]}"].append(m)
            group_of[m] = gi
    for f in totals:
        for r in ROLES:
            sets.setdefault(f"{f}_{r}", [])
    trained = {f: set().union(*(elements[m] for m in sets[f"{f}_train"])) for f in totals}
    uncovered = {name: sorted(set().union(*(elements[m] for m in members)) - trained[name.split("_")[0]])
                 for name, members in sets.items() if not name.endswith("_train")}
    from dftflow import __version__

    return {
        "schema": SPLIT_SCHEMA,
        "seed": seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dftflow_version": __version__,
        "settings": {"test": test, "val": val, "sizes": sizes or {}, "targets": targets,
                     "cover_elements": cover_elements,
                     "matcher": {"ltol": ltol, "stol": stol, "angle_tol": angle_tol, "primitive_cell": True,
                                 "scale": True}},
        "groups": {"count": len(groups), "with_duplicates": sum(
            len({fam[m] for m in g}) < len(g) for g in groups)},
        "sets": {k: sorted(v) for k, v in sorted(sets.items())},
        "uncovered": {k: v for k, v in sorted(uncovered.items()) if v},
        "tasks": {name: sets_ for name, sets_ in TASKS.items()
                  if all(s in sets and sets[s] for s in sets_.values() if s.endswith(("_train", "_test")))},
        "group_of": group_of,
    }


def split_dataset(root: Path | str, **kwargs: Any) -> dict[str, Any]:
    """:func:`make_split` on a dataset directory, with the dataset's path recorded."""
    out = make_split(read_entries(root), **kwargs)
    out["dataset"] = str(Path(root).resolve())
    return out


def load_split(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the split file ({exc})") from exc
    if data.get("schema") != SPLIT_SCHEMA:
        raise InputError(f"{path}: not a dftflow split file (schema {data.get('schema')!r}, "
                         f"expected {SPLIT_SCHEMA!r})")
    return data


def task_sets(split: dict[str, Any], task: str) -> dict[str, list[str]]:
    """The ids of each phase of ``task`` (``train``, ``val``, ``test``, and ``pretrain`` for tuning)."""
    if task not in split["tasks"]:
        have = ", ".join(split["tasks"]) or "none (a functional is missing)"
        raise InputError(f"task {task!r} is not available in this split; available: {have}")
    return {phase: split["sets"][name] for phase, name in split["tasks"][task].items()}


def default_sizes(hse_test: float | None, hse_val: float | None) -> dict[str, dict[str, float]]:
    sizes: dict[str, dict[str, float]] = {}
    if hse_test is not None:
        sizes.setdefault("hse", {})["test"] = hse_test
    if hse_val is not None:
        sizes.setdefault("hse", {})["val"] = hse_val
    return sizes

