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
from dftflow.screening.dedup import DedupItem, deduplicate, merge_across_buckets
from dftflow.screening.pipeline import ChainTask, build_chain, chain_hash, chain_params
from dftflow.screening.select import Candidate, select_subset
from dftflow.sources.discover import ImportTask, discover, run_import_task
from dftflow.sources.records import Imported

_PRELOAD = ("dftflow.sources.discover", "dftflow.sources.cif", "dftflow.screening.pipeline")
_PRIORITY = {"icsd": 0, "cod": 1}


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
               progress: Progress | None = None) -> dict[str, Any]:
    """Run the filter chain on every imported structure that has no complete outcome."""
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
    placeholders = ",".join("?" * len(names))
    complete = {r[0] for r in catalog.db.execute(
        f"SELECT uid FROM outcomes WHERE filter IN ({placeholders}) AND (status != 'pass' OR filter = ?)",
        (*names, names[-1]))}
    rows = [(u, d, fl) for u, d, fl in catalog.db.execute(
        "SELECT uid, data, flags FROM structures WHERE status='ok' ORDER BY uid") if u not in complete]
    progress.start("screen", len(rows))
    task = ChainTask(chain, timeout=settings.timeout_s)
    batch: list[tuple[str, str, str, str, dict[str, Any], str]] = []
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
    summary = {"screened": len(rows), "skipped": len(complete)}
    catalog.finish_stage("screen", {"chain": chain_params(chain), "versions": versions()}, summary)
    return summary


def _screen_passed(catalog: Catalog) -> Iterator[tuple[str, str, str, str, dict[str, Any]]]:
    """(uid, data, provenance, reduced_formula, symmetry details) of structures that passed every filter."""
    yield from ((u, d, p, rf, json.loads(det)) for u, d, p, rf, det in catalog.db.execute(
        "SELECT s.uid, s.data, s.provenance, s.reduced_formula, o.details FROM structures s "
        "JOIN outcomes o ON o.uid = s.uid AND o.filter='symmetry' AND o.status='pass' ORDER BY s.uid"))


# -- dedup --------------------------------------------------------------------
def run_dedup(catalog: Catalog, settings: ScreeningSettings, *, workers: int = 1,
              progress: Progress | None = None) -> dict[str, Any]:
    """Group screened structures into duplicates; the preferred member of each group passes."""
    progress = progress or NoProgress()
    cfg = settings.dedup
    items = []
    for uid, data, prov, rformula, sym in _screen_passed(catalog):
        source = json.loads(prov).get("source", "")
        items.append(DedupItem(uid, json.loads(data), rformula, int(sym["spacegroup"]),
                               int(sym["n_primitive"]), _PRIORITY.get(source, 2)))
    params = {"ltol": cfg.ltol, "stol": cfg.stol, "angle_tol": cfg.angle_tol, "enabled": cfg.enabled,
              "pymatgen": versions()["pymatgen"]}
    digest = params_hash({"params": params, "uids": sorted(i.uid for i in items)})
    previous = catalog.stage("dedup")
    if previous is not None and previous["params"].get("digest") == digest:
        return {**previous["summary"], "skipped": True}

    rows: list[tuple[str, str, str, str, dict[str, Any], str]] = []
    errors = merged = 0
    if not cfg.enabled:
        rows = [(i.uid, "dedup", "pass", "", {"disabled": True}, digest) for i in items]
    else:
        progress.start("dedup", len(items))
        groups: dict[str, tuple[str, list[str], str | None]] = {}  # representative -> (bucket, duplicates, error)
        for bucket, found, error in deduplicate(items, ltol=cfg.ltol, stol=cfg.stol, angle_tol=cfg.angle_tol,
                                                workers=workers, timeout=settings.timeout_s * 10):
            errors += error is not None
            for group in found or []:
                groups[group[0]] = (bucket, group[1:], error)
                progress.advance(len(group))
        by_uid = {i.uid: i for i in items}
        for group in merge_across_buckets([by_uid[r] for r in groups], ltol=cfg.ltol, stol=cfg.stol,
                                          angle_tol=cfg.angle_tol, workers=workers,
                                          timeout=settings.timeout_s * 10):
            keep = group[0]
            for other in group[1:]:
                _, dups, _ = groups.pop(other)
                bucket, kept_dups, error = groups[keep]
                groups[keep] = (bucket, kept_dups + [other, *dups], error)
                merged += 1
        for rep, (bucket, dups, error) in groups.items():
            details: dict[str, Any] = {"bucket": bucket, "duplicates": dups}
            if error:
                details["matcher_error"] = error
            rows.append((rep, "dedup", "pass", "", details, digest))
            rows.extend((d, "dedup", "fail", "duplicate", {"representative": rep, "bucket": bucket}, digest)
                        for d in dups)
    catalog.clear_outcomes("dedup")
    catalog.add_outcomes(rows)
    kept = sum(r[2] == "pass" for r in rows)
    summary = {"entered": len(items), "unique": kept, "duplicates": len(items) - kept,
               "buckets_failed": errors, "merged_across_buckets": merged}
    catalog.finish_stage("dedup", {"digest": digest, **params}, summary)
    return summary


# -- select -------------------------------------------------------------------
def pool(catalog: Catalog) -> list[Candidate]:
    """Unique screened structures as selection candidates."""
    unique = {u for u, s in catalog.db.execute(
        "SELECT uid, status FROM outcomes WHERE filter='dedup'") if s == "pass"}
    out = []
    for uid, _, _, _, sym in _screen_passed(catalog):
        if uid in unique:
            row = catalog.get(uid)
            out.append(Candidate(uid, frozenset(json.loads(row["elements"])), row["nsites"], sym["crystal_system"]))
    return out


def run_select(catalog: Catalog, selection: dict[str, SelectorSettings]) -> dict[str, Any]:
    """Compute every named subset of the recipe (deterministic, so simply recomputed)."""
    candidates = pool(catalog)
    summary = {}
    for name, cfg in selection.items():
        result = select_subset(candidates, size=cfg.size, max_atoms=cfg.max_atoms,
                               max_elements=cfg.max_elements, cover_elements=cfg.cover_elements,
                               cover_crystal_systems=cfg.cover_crystal_systems, seed=cfg.seed)
        catalog.set_selection(name, result.uids)
        summary[name] = {**result.summary(), "pool": len(candidates), "settings": cfg.model_dump()}
    catalog.finish_stage("select", {"selection": {k: v.model_dump() for k, v in selection.items()}}, summary)
    return summary


# -- funnel -------------------------------------------------------------------
def _top(reasons: Iterable[str | None], n: int = 3) -> list[tuple[str, int]]:
    short = Counter((r or "?")[:80] for r in reasons)
    return short.most_common(n)


def funnel(catalog: Catalog) -> list[dict[str, Any]]:
    """How many structures entered and left each step, with the most common reasons."""
    rows = []
    imp = list(catalog.db.execute("SELECT status, reason FROM structures"))
    rows.append({"step": "import", "entered": len(imp), "passed": sum(s == "ok" for s, _ in imp),
                 "failed": sum(s == "failed" for s, _ in imp), "undetermined": 0,
                 "reasons": _top(r for s, r in imp if s == "failed")})
    params = catalog.filter_params()
    order = [*params.keys()]
    # filter_params is written in chain order; dedup comes last.
    for name in [*order, "dedup"]:
        outs = list(catalog.db.execute("SELECT status, reason FROM outcomes WHERE filter=?", (name,)))
        if not outs:
            continue
        rows.append({"step": name, "entered": len(outs), "passed": sum(s == "pass" for s, _ in outs),
                     "failed": sum(s == "fail" for s, _ in outs),
                     "undetermined": sum(s == "undetermined" for s, _ in outs),
                     "reasons": _top(r for s, r in outs if s != "pass")})
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
