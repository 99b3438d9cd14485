"""Deduplicate with pymatgen's StructureMatcher, bucketed so it scales.

Two structures can only match if they have the same reduced formula, the same
space group (at the screening ``symprec``) and the same number of sites in the
primitive cell, so matching runs only inside buckets with that key. With many
compositions the buckets are small and the cost grows about linearly with the
number of structures instead of quadratically.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dftflow.parallel import run_tasks
from dftflow.sources.records import unpack


@dataclass(slots=True, frozen=True)
class DedupItem:
    uid: str
    packed: dict[str, Any]
    reduced_formula: str
    spacegroup: int
    n_primitive: int
    priority: int = 0  # lower is preferred as the representative (e.g. database entries before generated)


def bucket_key(item: DedupItem) -> str:
    return f"{item.reduced_formula}|{item.spacegroup}|{item.n_primitive}"


def _group_bucket(task: tuple[list[DedupItem], dict[str, float]]) -> list[list[str]]:
    """Groups of matching uids inside one bucket, each ordered with its representative first."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    items, tol = task
    items = sorted(items, key=lambda it: (it.priority, -it.spacegroup, it.uid))
    matcher = StructureMatcher(ltol=tol["ltol"], stol=tol["stol"], angle_tol=tol["angle_tol"],
                               primitive_cell=True, scale=True, attempt_supercell=False)
    structures = [unpack(it.packed) for it in items]
    # Greedy clustering against each group's representative: the representative is
    # the preferred member, and every member matches it (not merely some member).
    # group_structures does exactly that (the first unmatched structure, in this
    # order, becomes a representative; each one joins the first representative
    # that fit()s it), but reduces every structure (Niggli + primitive) once,
    # where fit() on each pair would reduce both again through an LRU cache.
    index = {id(s): i for i, s in enumerate(structures)}
    groups = matcher.group_structures(structures)
    return [[items[index[id(s)]].uid for s in g] for g in groups]


def deduplicate(
    items: Iterable[DedupItem], *, ltol: float = 0.2, stol: float = 0.3, angle_tol: float = 5.0,
    workers: int = 1, timeout: float | None = None,
) -> Iterator[tuple[str, list[str] | None, str | None]]:
    """Yield ``(bucket, groups, error)`` per bucket; ``groups`` lists uids, representative first.

    Singleton buckets never reach the matcher. A bucket whose matching fails or
    overruns ``timeout`` is yielded with its error, and its members are treated
    as distinct by the caller.
    """
    buckets: dict[str, list[DedupItem]] = defaultdict(list)
    for item in items:
        buckets[bucket_key(item)].append(item)
    multi = []
    for key, members in buckets.items():
        if len(members) == 1:
            yield key, [[members[0].uid]], None
        else:
            multi.append(members)
    # Big buckets first so that the workers finish together.
    multi.sort(key=lambda m: -len(m))
    yield from deduplicate_buckets(multi, ltol=ltol, stol=stol, angle_tol=angle_tol, workers=workers,
                                   timeout=timeout)


def deduplicate_buckets(
    buckets: Iterable[list[DedupItem]], *, ltol: float = 0.2, stol: float = 0.3, angle_tol: float = 5.0,
    workers: int = 1, timeout: float | None = None,
) -> Iterator[tuple[str, list[str] | None, str | None]]:
    """:func:`deduplicate` on buckets already formed (each a list of items sharing one key).

    ``buckets`` is consumed lazily, at most a few buckets per worker ahead, so a
    generator that loads each bucket's structures only when asked keeps the
    memory to the buckets in flight, whatever their number.
    """
    tol = {"ltol": ltol, "stol": stol, "angle_tol": angle_tol}
    for out in run_tasks(_group_bucket, ((members, tol) for members in buckets), workers=workers,
                         timeout=timeout, chunk_size=1, preload=("dftflow.screening.dedup",)):
        key = bucket_key(out.task[0][0])
        if out.error is not None:
            yield key, [[it.uid] for it in out.task[0]], out.error
        else:
            yield key, out.result, None


def merge_across_buckets(
    representatives: Iterable[DedupItem], *, ltol: float = 0.2, stol: float = 0.3, angle_tol: float = 5.0,
    workers: int = 1, timeout: float | None = None,
) -> list[list[str]]:
    """Second pass: match bucket representatives that share a formula but not a bucket.

    A strongly distorted copy of a crystal can land in a lower space group (and
    so another bucket) than its parent; StructureMatcher still matches the two.
    Representatives are few per formula (the distinct polymorphs), so this pass
    is cheap. Returns the groups with more than one member, preferred first.
    """
    by_formula: dict[str, list[DedupItem]] = defaultdict(list)
    for item in representatives:
        by_formula[item.reduced_formula].append(item)
    tasks = [members for members in by_formula.values() if len({bucket_key(m) for m in members}) > 1]
    return list(merge_groups(tasks, ltol=ltol, stol=stol, angle_tol=angle_tol, workers=workers, timeout=timeout))


def merge_groups(
    formulas: Iterable[list[DedupItem]], *, ltol: float = 0.2, stol: float = 0.3, angle_tol: float = 5.0,
    workers: int = 1, timeout: float | None = None,
) -> Iterator[list[str]]:
    """:func:`merge_across_buckets` on representatives already grouped by formula, consumed lazily.

    Yields each group with more than one member, preferred first; a formula
    whose matching fails merges nothing.
    """
    tol = {"ltol": ltol, "stol": stol, "angle_tol": angle_tol}
    for out in run_tasks(_group_bucket, ((members, tol) for members in formulas), workers=workers,
                         timeout=timeout, chunk_size=1, preload=("dftflow.screening.dedup",)):
        if out.error is None:
            yield from (g for g in out.result if len(g) > 1)
