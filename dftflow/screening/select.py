"""Choose a small, diverse subset of the pool (the ECD HSE06 rule, made configurable).

Eligible: at most ``max_atoms`` sites and ``max_elements`` elements. The subset
first covers every element and every crystal system present among the eligible
structures (greedy set cover, largest gain first), then grows by adding the
structure that brings the subset's element distribution closest to the pool's
(total variation distance). The result carries the distance next to that of a
seeded random subset of the same size, so the gain is visible.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True, frozen=True)
class Candidate:
    uid: str
    elements: frozenset[str]
    nsites: int
    crystal_system: str


@dataclass(slots=True)
class Selection:
    uids: list[str]
    eligible: int
    tv_distance: float
    tv_distance_random: float
    uncovered_elements: list[str] = field(default_factory=list)
    uncovered_systems: list[str] = field(default_factory=list)
    pool: int = 0  # candidates offered, eligible or not

    def summary(self) -> dict[str, Any]:
        return {"size": len(self.uids), "eligible": self.eligible,
                "tv_distance": round(self.tv_distance, 4),
                "tv_distance_random": round(self.tv_distance_random, 4),
                "uncovered_elements": self.uncovered_elements,
                "uncovered_systems": self.uncovered_systems}


def element_distribution(members: list[Candidate], vocab: list[str]) -> np.ndarray:
    """Share of each element in the element occurrences of ``members`` (sums to 1)."""
    index = {e: i for i, e in enumerate(vocab)}
    counts = np.zeros(len(vocab))
    for c in members:
        for e in c.elements:
            counts[index[e]] += 1
    total = counts.sum()
    return counts / total if total else counts


def tv_distance(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


def select_subset(
    pool: Iterable[Candidate], *, size: int, max_atoms: int | None = 19, max_elements: int | None = 3,
    cover_elements: bool = True, cover_crystal_systems: bool = True, seed: int = 0,
    batch: int = 4096,
) -> Selection:
    """Pick ``size`` uids from ``pool``; deterministic for a given pool order and seed.

    ``pool`` is read once (it may be a stream from the catalog): only the
    eligible candidates and the element counts of the whole pool are kept.
    """
    rng = np.random.default_rng(seed)
    eligible = []
    occurrences: Counter[str] = Counter()
    offered = 0
    for c in pool:
        offered += 1
        occurrences.update(c.elements)
        if (max_atoms is None or c.nsites <= max_atoms) and (max_elements is None or len(c.elements) <= max_elements):
            eligible.append(c)
    eligible.sort(key=lambda c: c.uid)
    vocab = sorted(occurrences)
    if not eligible or not vocab:
        return Selection([], len(eligible), 1.0, 1.0, pool=offered)
    size = min(size, len(eligible))
    index = {e: i for i, e in enumerate(vocab)}
    onehot = np.zeros((len(eligible), len(vocab)))
    for i, c in enumerate(eligible):
        onehot[i, [index[e] for e in c.elements]] = 1.0
    counts_all = np.array([occurrences[e] for e in vocab], dtype=float)
    target = counts_all / counts_all.sum()  # element_distribution of the whole pool

    chosen: list[int] = []
    taken = np.zeros(len(eligible), dtype=bool)
    counts = np.zeros(len(vocab))

    def take(i: int) -> None:
        chosen.append(i)
        taken[i] = True
        counts[:] += onehot[i]

    # 1) cover elements and crystal systems: largest gain first, ties broken by
    #    closeness to the target distribution, then by uid.
    systems = sorted({c.crystal_system for c in eligible})
    cs_index = np.array([systems.index(c.crystal_system) for c in eligible])
    need_el = np.zeros(len(vocab), dtype=bool)
    need_cs = np.zeros(len(systems), dtype=bool)
    if cover_elements:
        need_el[onehot.any(axis=0)] = True
    if cover_crystal_systems:
        need_cs[:] = True
    while (need_el.any() or need_cs.any()) and len(chosen) < size:
        gain = onehot[:, need_el].sum(axis=1) + need_cs[cs_index]
        gain[taken] = 0
        top = np.flatnonzero(gain == gain.max()) if gain.max() > 0 else np.array([], dtype=int)
        if len(top) == 0:
            break
        new = counts[None, :] + onehot[top]
        dist = 0.5 * np.abs(new / new.sum(axis=1, keepdims=True) - target[None, :]).sum(axis=1)
        best = int(top[int(np.argmin(dist))])  # argmin takes the first, i.e. the smallest uid
        take(best)
        need_el &= onehot[best] == 0
        need_cs[cs_index[best]] = False

    # 2) fill towards the pool's element distribution (vectorised over a candidate batch).
    while len(chosen) < size:
        free = np.flatnonzero(~taken)
        if len(free) > batch:
            free = rng.choice(free, size=batch, replace=False)
        new = counts[None, :] + onehot[free]
        dist = 0.5 * np.abs(new / new.sum(axis=1, keepdims=True) - target[None, :]).sum(axis=1)
        take(int(free[int(np.argmin(dist))]))

    subset = [eligible[i] for i in chosen]
    random_idx = rng.choice(len(eligible), size=size, replace=False)
    random_subset = [eligible[i] for i in random_idx]
    covered_el = {e for c in subset for e in c.elements}
    covered_cs = {c.crystal_system for c in subset}
    return Selection(
        uids=[c.uid for c in subset],
        eligible=len(eligible),
        tv_distance=tv_distance(element_distribution(subset, vocab), target),
        tv_distance_random=tv_distance(element_distribution(random_subset, vocab), target),
        uncovered_elements=sorted({e for c in eligible for e in c.elements} - covered_el) if cover_elements else [],
        uncovered_systems=sorted({c.crystal_system for c in eligible} - covered_cs) if cover_crystal_systems else [],
        pool=offered,
    )
