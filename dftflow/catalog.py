"""The candidate catalog: a SQLite file in the project directory.

Why SQLite (docs/decisions.md): one file, transactions, crash safety (WAL),
indexed queries over 10^5–10^6 rows, and nothing to install or start. Only
the main process writes; workers return results to it. Every stage writes in
transactions keyed by stable uids, so an interrupted stage resumes where it
stopped and a re-run skips finished work.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from dftflow.sources.records import Imported
from dftflow.sqlitetx import transaction as sql_transaction

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks(
    task_uid TEXT PRIMARY KEY, n_entries INTEGER NOT NULL, done_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS structures(
    uid TEXT PRIMARY KEY,
    task_uid TEXT NOT NULL,
    source TEXT NOT NULL,
    status TEXT NOT NULL CHECK(status IN ('ok', 'failed')),
    reason TEXT,
    formula TEXT, reduced_formula TEXT, elements TEXT,
    nsites INTEGER, nelements INTEGER,
    data TEXT, provenance TEXT NOT NULL, flags TEXT NOT NULL DEFAULT '[]');
CREATE INDEX IF NOT EXISTS structures_status ON structures(status);
CREATE TABLE IF NOT EXISTS outcomes(
    uid TEXT NOT NULL, filter TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
    details TEXT NOT NULL DEFAULT '{}', params_hash TEXT NOT NULL,
    PRIMARY KEY(uid, filter));
CREATE INDEX IF NOT EXISTS outcomes_filter ON outcomes(filter, status);
CREATE TABLE IF NOT EXISTS filter_params(filter TEXT PRIMARY KEY, params_hash TEXT NOT NULL, params TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS selections(
    name TEXT NOT NULL, uid TEXT NOT NULL, rank INTEGER NOT NULL, PRIMARY KEY(name, uid));
CREATE TABLE IF NOT EXISTS stages(
    stage TEXT PRIMARY KEY, params TEXT NOT NULL, summary TEXT NOT NULL, finished_at REAL NOT NULL);
"""


class Catalog:
    """Read and write the candidate catalog of one project."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            from dftflow.errors import DftflowError

            raise DftflowError(f"{self.path}: catalog schema {row[0]} is not {SCHEMA_VERSION}; "
                               "rebuild the project with this dftflow version")

    @classmethod
    def reader(cls, path: Path) -> Catalog:
        """The catalog at ``path`` opened read-only (:mod:`dftflow.readonly`): queries only, no schema set-up.

        For readers beside a running build (the dashboard); close it soon, it holds no lock in between.
        """
        from dftflow import readonly

        self = cls.__new__(cls)
        self.path = Path(path)
        self.db = readonly.connect(self.path)
        return self

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return sql_transaction(self.db)

    # -- import -------------------------------------------------------------
    def done_tasks(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT task_uid FROM tasks")}

    def add_imported(self, task_uid: str, entries: list[Imported]) -> None:
        """Record one task's entries and mark the task done, atomically."""
        rows = []
        for e in entries:
            source = str(e.provenance.get("source", ""))
            if e.ok:
                from pymatgen.core import Composition

                counts: dict[str, float] = {}
                for sp in e.packed["species"]:  # type: ignore[index]
                    for el, occ in ({sp: 1.0} if isinstance(sp, str) else sp).items():
                        counts[el] = counts.get(el, 0.0) + occ
                comp = Composition(counts).element_composition
                elements = sorted(el.symbol for el in comp.elements)
                rows.append((e.uid, task_uid, source, "ok", None, comp.formula, comp.reduced_formula,
                             json.dumps(elements), len(e.packed["species"]), len(elements),  # type: ignore[index]
                             json.dumps(e.packed), json.dumps(e.provenance), json.dumps(e.flags)))
            else:
                rows.append((e.uid, task_uid, source, "failed", e.error, None, None, None, None, None,
                             None, json.dumps(e.provenance), json.dumps(e.flags)))
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO structures VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            db.execute("INSERT OR REPLACE INTO tasks VALUES(?,?,?)", (task_uid, len(entries), time.time()))

    # -- queries ------------------------------------------------------------
    def count(self, status: str | None = None) -> int:
        if status is None:
            return self.db.execute("SELECT COUNT(*) FROM structures").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM structures WHERE status=?", (status,)).fetchone()[0]

    def structures(self, uids: Iterable[str] | None = None, status: str = "ok") -> Iterator[sqlite3.Row]:
        cur = self.db.cursor()
        cur.row_factory = sqlite3.Row
        if uids is None:
            yield from cur.execute("SELECT * FROM structures WHERE status=? ORDER BY uid", (status,))
            return
        for uid in uids:
            row = cur.execute("SELECT * FROM structures WHERE uid=?", (uid,)).fetchone()
            if row is not None:
                yield row

    def get(self, uid: str) -> sqlite3.Row | None:
        cur = self.db.cursor()
        cur.row_factory = sqlite3.Row
        return cur.execute("SELECT * FROM structures WHERE uid=?", (uid,)).fetchone()

    # -- outcomes -----------------------------------------------------------
    def add_outcomes(self, rows: list[tuple[str, str, str, str, dict[str, Any], str]]) -> None:
        """Rows of (uid, filter, status, reason, details, params_hash)."""
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO outcomes VALUES(?,?,?,?,?,?)",
                           [(u, f, s, r, json.dumps(d), h) for u, f, s, r, d, h in rows])

    def clear_outcomes(self, filter_name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM outcomes WHERE filter=?", (filter_name,))

    def filter_params(self) -> dict[str, dict[str, Any]]:
        return {f: json.loads(p) for f, p in self.db.execute("SELECT filter, params FROM filter_params ORDER BY rowid")}

    # -- selections and stages --------------------------------------------------
    def set_selection(self, name: str, uids: list[str]) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM selections WHERE name=?", (name,))
            db.executemany("INSERT INTO selections VALUES(?,?,?)", [(name, u, i) for i, u in enumerate(uids)])

    def selection(self, name: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT uid FROM selections WHERE name=? ORDER BY rank", (name,))]

    def finish_stage(self, stage: str, params: dict[str, Any], summary: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO stages VALUES(?,?,?,?)",
                       (stage, json.dumps(params, sort_keys=True, default=str),
                        json.dumps(summary, default=str), time.time()))

    def stage(self, stage: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT params, summary, finished_at FROM stages WHERE stage=?", (stage,)).fetchone()
        if row is None:
            return None
        return {"params": json.loads(row[0]), "summary": json.loads(row[1]), "finished_at": row[2]}
