"""The structure stages of ``build-dataset``: import → screen → dedup → select.

Each stage reads the catalog, does only the work that is missing, and writes
its results in transactions, so any stage can be interrupted and re-run.
Callable from Python; the CLI adds progress bars and tables.
"""

from __future__ import annotations

import json
import platform
from collections import Counter
from collections.abc import Iterable, Iterator
from importlib.metadata import version
from typing import Any, Protocol

from dftflow.catalog import Catalog
from dftflow.config.recipe import Recipe, ScreeningSettings, SelectorSettings
from dftflow.errors import DftflowError
from dftflow.parallel import run_tasks
from dftflow.screening.base import params_hash
from dftflow.screening.dedup import deduplicate_buckets, merge_groups
from dftflow.screening.dedup_store import PRIORITY, DedupWork, StreamingDigest
from dftflow.screening.pipeline import ChainTask, build_chain, chain_hash, chain_params
from dftflow.screening.select import Candidate, select_subset
from dftflow.sources.discover import ImportTask, discover, run_import_task
from dftflow.sources.records import Imported

_PRELOAD = ("dftflow.sources.discover", "dftflow.sources.cif", "dftflow.screening.pipeline")
_PRIORITY = PRIORITY  # kept for callers of the old name (bench)


class Progress(Protocol):
    """What the stages report to (the CLI shows a rich progress bar)."""

    def start(self, label: str, total: int | None) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class NoProgress:
    def start(self, label: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


def versions() -> dict[str, str]:
    """Versions of everything that can change a screening result."""
    out = {"python": platform.python_version()}
    for pkg in ("dftflow", "pymatgen", "spglib", "smact", "numpy"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # not installed as a distribution (e.g. a bare checkout)
            out[pkg] = "unknown"
    return out


# -- import -------------------------------------------------------------------
def _tasks(recipe: Recipe, done: set[str], failures: list[Imported]) -> list[ImportTask]:
    tasks = []
    for spec in recipe.sources:
        path = recipe.source_path(spec)
        label = spec.label or spec.type
        try:
            settings = spec.generate.model_dump() if spec.generate is not None else None
            for task in discover(spec.type, path, label, spec.pattern, settings):
                if task.uid not in done:
                    tasks.append(task)
        except DftflowError as exc:
            # A whole source that cannot be read is one failed entry; the others go on.
            uid = f"{label}:{path.name}!"
            if uid not in done:
                failures.append(Imported(uid, {"source": label, "file": str(path)}, error=str(exc)))
    return tasks


def run_import(catalog: Catalog, recipe: Recipe, *, workers: int = 1,
               progress: Progress | None = None) -> dict[str, Any]:
    """Import every source of ``recipe`` that is not in the catalog yet."""
    progress = progress or NoProgress()
    done = catalog.done_tasks()
    failures: list[Imported] = []
    tasks = _tasks(recipe, done, failures)
    for f in failures:
        catalog.add_imported(f.uid, [f])
    progress.start("import", len(tasks))
    ok = failed = 0
    for out in run_tasks(run_import_task, tasks, workers=workers, timeout=recipe.import_.timeout_s,
                         chunk_size=8, preload=_PRELOAD):
        task = out.task
        entries = out.result if out.error is None else [Imported(task.uid, task.provenance, error=out.error)]
        catalog.add_imported(task.uid, entries)
        ok += sum(e.ok for e in entries)
        failed += sum(not e.ok for e in entries)
        progress.advance()
    summary = {"tasks": len(tasks), "skipped_tasks": len(done), "imported": ok,
               "failed": failed + len(failures), "total_ok": catalog.count("ok"),
               "total_failed": catalog.count("failed")}
    catalog.finish_stage("import", {"recipe": recipe.name, "timeout_s": recipe.import_.timeout_s,
                                    "versions": versions()}, summary)
    return summary


# -- screen -------------------------------------------------------------------
def run_screen(catalog: Catalog, settings: ScreeningSettings, *, workers: int = 1,
               progress: Progress | None = None, page_size: int = 1000) -> dict[str, Any]:
    """Run the filter chain on every imported structure that has no complete outcome.

    Structures are read ``page_size`` at a time (in uid order) as the workers
    ask for them, and outcomes written every 500, so memory does not grow with
    the catalog.
    """
    progress = progress or NoProgress()
    chain = build_chain(settings)
    names = [f.name for f in chain]
    digest = chain_hash(chain)
    row = catalog.db.execute("SELECT value FROM meta WHERE key='screen_chain'").fetchone()
    if row is None or row[0] != digest:
        # Settings changed: outcomes of the old chain (and the dedup built on them) are void.
        with catalog.transaction() as db:
            db.execute("DELETE FROM outcomes")
            db.execute("DELETE FROM filter_params")
            db.execute("INSERT OR REPLACE INTO meta VALUES('screen_chain', ?)", (digest,))
            db.executemany("INSERT INTO filter_params VALUES(?,?,?)",
                           [(f.name, params_hash(f.params()), json.dumps(f.params(), sort_keys=True))
                            for f in chain])
    pending, skipped = _screen_counts(catalog, names)
    progress.start("screen", pending)
    task = ChainTask(chain, timeout=settings.timeout_s)
    batch: list[tuple[str, str, str, str, dict[str, Any], str]] = []
    rows = _unscreened(catalog, names, page_size)
    for out in run_tasks(task, rows, workers=workers, chunk_size=32, preload=_PRELOAD):
        uid = out.task[0]
        if out.error is not None:
            batch.append((uid, names[0], "undetermined", f"screening failed: {out.error}", {}, digest))
        else:
            batch.extend((uid, name, o.status, o.reason, o.details, digest) for name, o in out.result)
        if len(batch) >= 500:
            catalog.add_outcomes(batch)
            batch = []
        progress.advance()
    catalog.add_outcomes(batch)
    summary = {"screened": pending, "skipped": skipped}
    catalog.finish_stage("screen", {"chain": chain_params(chain), "versions": versions()}, summary)
    return summary


def _complete(names: list[str]) -> str:
    """SQL condition: structure ``s`` has a final outcome of this chain (a non-pass, or the last filter's)."""
    return (f"EXISTS (SELECT 1 FROM outcomes o WHERE o.uid = s.uid AND o.filter IN ({','.join('?' * len(names))}) "
            "AND (o.status != 'pass' OR o.filter = ?))")


def _screen_counts(catalog: Catalog, names: list[str]) -> tuple[int, int]:
    """(imported structures still to screen, structures with a final outcome)."""
    args = (*names, names[-1])
    pending = catalog.db.execute(
        f"SELECT COUNT(*) FROM structures s WHERE status='ok' AND NOT {_complete(names)}", args).fetchone()[0]
    done = catalog.db.execute(
        f"SELECT COUNT(DISTINCT uid) FROM outcomes WHERE filter IN ({','.join('?' * len(names))}) "
        "AND (status != 'pass' OR filter = ?)", args).fetchone()[0]
    return pending, done


def _unscreened(catalog: Catalog, names: list[str], page_size: int) -> Iterator[tuple[str, str, str]]:
    """(uid, data, flags) of the structures to screen, in uid order, read ``page_size`` at a time.

    Keyset pagination (``uid > last``): each page is a complete query, so the
    outcomes written between pages (all for uids already read) never disturb it.
    """
    args = (*names, names[-1])
    sql = f"SELECT uid, data, flags FROM structures s WHERE status='ok' AND NOT {_complete(names)}"
    page = catalog.db.execute(f"{sql} ORDER BY uid LIMIT ?", (*args, page_size)).fetchall()
    while page:
        yield from page
        last = page[-1][0]
        page = catalog.db.execute(f"{sql} AND uid > ? ORDER BY uid LIMIT ?", (*args, last, page_size)).fetchall()


def _screen_passed(catalog: Catalog) -> Iterator[tuple[str, str, str, str, dict[str, Any]]]:
    """(uid, data, provenance, reduced_formula, symmetry details) of structures that passed every filter."""
    yield from ((u, d, p, rf, json.loads(det)) for u, d, p, rf, det in catalog.db.execute(
        "SELECT s.uid, s.data, s.provenance, s.reduced_formula, o.details FROM structures s "
        "JOIN outcomes o ON o.uid = s.uid AND o.filter='symmetry' AND o.status='pass' ORDER BY s.uid"))


# -- dedup --------------------------------------------------------------------
def run_dedup(catalog: Catalog, settings: ScreeningSettings, *, workers: int = 1,
              progress: Progress | None = None, page_size: int = 1000) -> dict[str, Any]:
    """Group screened structures into duplicates; the preferred member of each group passes.

    The working set lives in temporary SQLite tables (:mod:`dftflow.screening.dedup_store`):
    only the buckets the workers are matching (a few per worker) and pages of
    ``page_size`` rows are in memory, whatever the number of structures.
    """
    progress = progress or NoProgress()
    cfg = settings.dedup
    params = {"ltol": cfg.ltol, "stol": cfg.stol, "angle_tol": cfg.angle_tol, "enabled": cfg.enabled,
              "pymatgen": versions()["pymatgen"]}
    tol = {"ltol": cfg.ltol, "stol": cfg.stol, "angle_tol": cfg.angle_tol}
    work = DedupWork(catalog.db, page_size)
    try:
        streaming = StreamingDigest(params)
        entered = work.load_items(streaming)
        digest = streaming.hexdigest()
        previous = catalog.stage("dedup")
        if previous is not None and previous["params"].get("digest") == digest:
            return {**previous["summary"], "skipped": True}
        errors = merged = 0
        if cfg.enabled:
            progress.start("dedup", entered)
            progress.advance(work.add_singletons())
            for bucket, found, error in deduplicate_buckets(work.buckets(), **tol, workers=workers,
                                                            timeout=settings.timeout_s * 10):
                errors += error is not None
                work.add_groups(bucket, found or [], error)
                progress.advance(sum(len(g) for g in found or []))
            for group in merge_groups(work.formulas(), **tol, workers=workers, timeout=settings.timeout_s * 10):
                work.merge(group)
                merged += len(group) - 1
        work.write_outcomes(digest, enabled=cfg.enabled)
        kept = work.n_groups() if cfg.enabled else entered
    finally:
        work.close()
    summary = {"entered": entered, "unique": kept, "duplicates": entered - kept,
               "buckets_failed": errors, "merged_across_buckets": merged}
    catalog.finish_stage("dedup", {"digest": digest, **params}, summary)
    return summary


# -- select -------------------------------------------------------------------
def pool(catalog: Catalog) -> Iterator[Candidate]:
    """Unique screened structures as selection candidates, in uid order, read from one cursor."""
    for uid, elements, nsites, sym in catalog.db.execute(
            "SELECT s.uid, s.elements, s.nsites, o.details FROM structures s "
            "JOIN outcomes o ON o.uid = s.uid AND o.filter='symmetry' AND o.status='pass' "
            "JOIN outcomes d ON d.uid = s.uid AND d.filter='dedup' AND d.status='pass' ORDER BY s.uid"):
        yield Candidate(uid, frozenset(json.loads(elements)), nsites, json.loads(sym)["crystal_system"])


def run_select(catalog: Catalog, selection: dict[str, SelectorSettings]) -> dict[str, Any]:
    """Compute every named subset of the recipe (deterministic, so simply recomputed).

    The pool is streamed from the catalog once per subset; only its eligible
    structures (few sites, few elements) are held while the subset is chosen.
    """
    summary = {}
    for name, cfg in selection.items():
        result = select_subset(pool(catalog), size=cfg.size, max_atoms=cfg.max_atoms,
                               max_elements=cfg.max_elements, cover_elements=cfg.cover_elements,
                               cover_crystal_systems=cfg.cover_crystal_systems, seed=cfg.seed)
        catalog.set_selection(name, result.uids)
        summary[name] = {**result.summary(), "pool": result.pool, "settings": cfg.model_dump()}
    catalog.finish_stage("select", {"selection": {k: v.model_dump() for k, v in selection.items()}}, summary)
    return summary


# -- funnel -------------------------------------------------------------------
def _step(step: str, rows: Iterable[tuple[str, str | None]], ok: str, bad: str, *,
          undetermined: bool) -> dict[str, Any]:
    """Counts of one funnel step from ``(status, reason)`` rows, consumed one at a time.

    The reasons counted are those of every row that did not pass when the step
    has an ``undetermined`` outcome (filters), else of the ``bad`` rows (import).
    """
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()  # ties keep first-seen order (Counter.most_common)
    for status, reason in rows:
        counts[status] += 1
        if status == bad or (undetermined and status != ok):
            reasons[(reason or "?")[:80]] += 1
    return {"step": step, "entered": sum(counts.values()), "passed": counts[ok], "failed": counts[bad],
            "undetermined": counts["undetermined"] if undetermined else 0, "reasons": reasons.most_common(3)}


def funnel(catalog: Catalog) -> list[dict[str, Any]]:
    """How many structures entered and left each step, with the most common reasons.

    Each step is counted while its rows stream from the catalog: memory grows
    with the number of distinct rejection reasons, not of structures.
    """
    rows = [_step("import", catalog.db.execute("SELECT status, reason FROM structures"), "ok", "failed",
                  undetermined=False)]
    params = catalog.filter_params()
    order = [*params.keys()]
    # filter_params is written in chain order; dedup comes last.
    for name in [*order, "dedup"]:
        step = _step(name, catalog.db.execute("SELECT status, reason FROM outcomes WHERE filter=?", (name,)),
                     "pass", "fail", undetermined=True)
        if step["entered"]:
            rows.append(step)
    for (name,) in catalog.db.execute("SELECT DISTINCT name FROM selections ORDER BY name"):
        n = len(catalog.selection(name))
        stage = catalog.stage("select") or {"summary": {}}
        info = stage["summary"].get(name, {})
        rows.append({"step": f"select:{name}", "entered": info.get("eligible", n), "passed": n,
                     "failed": info.get("eligible", n) - n, "undetermined": 0, "reasons": []})
    return rows


def _states(catalog: Catalog) -> dict[str, tuple[str, str | None]]:
    """Where each screened structure stopped: (state, reason)."""
    chain = list(catalog.filter_params().keys())
    by_uid: dict[str, dict[str, tuple[str, str | None]]] = {}
    for uid, name, status, reason in catalog.db.execute("SELECT uid, filter, status, reason FROM outcomes"):
        by_uid.setdefault(uid, {})[name] = (status, reason)
    states = {}
    for uid, outs in by_uid.items():
        state: tuple[str, str | None] = ("screened", None) if chain and chain[-1] in outs else ("screening", None)
        for name in chain:
            status, reason = outs.get(name, ("pass", None))
            if status != "pass":
                state = (f"{name}: {status}", reason)
                break
        else:
            if "dedup" in outs:
                status, reason = outs["dedup"]
                state = ("kept", None) if status == "pass" else ("duplicate", reason)
        states[uid] = state
    return states


def list_entries(catalog: Catalog, status: str = "all") -> list[dict[str, Any]]:
    """Catalog rows with the state each one reached; ``status`` filters them."""
    states = _states(catalog)
    selected: set[str] | None = None
    if status.startswith("selection:"):
        selected = set(catalog.selection(status.split(":", 1)[1]))
    out = []
    for uid, st_, reason, formula, nsites in catalog.db.execute(
            "SELECT uid, status, reason, formula, nsites FROM structures ORDER BY uid"):
        state, why = ("import failed", reason) if st_ == "failed" else states.get(uid, ("imported", None))
        keep = (status == "all" or (status == "ok" and st_ == "ok") or (status == "failed" and st_ == "failed")
                or (status == "kept" and state == "kept")
                or (status == "rejected" and st_ == "ok" and state not in ("kept", "screened", "imported"))
                or (selected is not None and uid in selected))
        if keep:
            out.append({"uid": uid, "formula": formula, "nsites": nsites, "state": state, "reason": why})
    return out


def describe(catalog: Catalog, uid: str) -> dict[str, Any]:
    """Everything the catalog holds about one entry."""
    row = catalog.get(uid)
    if row is None:
        raise DftflowError(f"{catalog.path}: no entry with uid {uid!r} (see `dftflow candidates list`)")
    outcomes = [{"filter": f, "status": s, "reason": r, "details": json.loads(d)} for f, s, r, d in catalog.db.execute(
        "SELECT filter, status, reason, details FROM outcomes WHERE uid=? ORDER BY rowid", (uid,))]
    selections = [n for (n,) in catalog.db.execute("SELECT name FROM selections WHERE uid=?", (uid,))]
    return {"uid": uid, "status": row["status"], "reason": row["reason"], "formula": row["formula"],
            "nsites": row["nsites"], "provenance": json.loads(row["provenance"]), "flags": json.loads(row["flags"]),
            "structure": json.loads(row["data"]) if row["data"] else None,
            "outcomes": outcomes, "selections": selections}
