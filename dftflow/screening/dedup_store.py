"""The dedup stage's working set, kept in SQLite so that its memory does not grow with the catalog.

One dedup run over 10^6 generated candidates cannot hold every structure (or
even every group) in Python. :class:`DedupWork` keeps three temporary tables
on the catalog's connection (temp tables: per connection, in a temporary file,
never in ``catalog.sqlite``):

* ``dd_items``: per screened structure its bucket key, formula, space group,
  primitive size and source priority — everything but the structure;
* ``dd_buckets``: the buckets with more than one member, largest first;
* ``dd_groups``: per group its representative, bucket, duplicates and matcher error.

Structures are read from ``structures.data`` one bucket (or one formula, in
the merge pass) at a time, as the worker pool asks for the next task, and
every query is a bounded page (``page_size`` rows, keyset-paginated), so no
cursor stays open while results are written.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from dftflow.screening.dedup import DedupItem
from dftflow.sqlitetx import transaction

PRIORITY = {"icsd": 0, "cod": 1}  # lower is preferred as a representative; other sources are 2

_TABLES = """
DROP TABLE IF EXISTS temp.dd_items;
DROP TABLE IF EXISTS temp.dd_buckets;
DROP TABLE IF EXISTS temp.dd_groups;
CREATE TEMP TABLE dd_items(uid TEXT PRIMARY KEY, bucket TEXT NOT NULL, rformula TEXT NOT NULL,
    spacegroup INTEGER NOT NULL, n_primitive INTEGER NOT NULL, priority INTEGER NOT NULL);
CREATE INDEX temp.dd_items_bucket ON dd_items(bucket);
CREATE INDEX temp.dd_items_rformula ON dd_items(rformula);
CREATE TEMP TABLE dd_buckets(ord INTEGER PRIMARY KEY, bucket TEXT NOT NULL, size INTEGER NOT NULL);
CREATE TEMP TABLE dd_groups(rep TEXT PRIMARY KEY, bucket TEXT NOT NULL, dups TEXT NOT NULL, error TEXT);
"""

_PASSED = ("SELECT s.uid, s.provenance, s.reduced_formula, o.details FROM structures s "
           "JOIN outcomes o ON o.uid = s.uid AND o.filter='symmetry' AND o.status='pass' ")


class StreamingDigest:
    """``params_hash({"params": params, "uids": uids})`` fed one uid at a time, in sorted order."""

    def __init__(self, params: dict[str, Any]) -> None:
        self._h = hashlib.sha1(('{"params": ' + json.dumps(params, sort_keys=True, default=str)
                                + ', "uids": [').encode())
        self._first = True

    def add(self, uid: str) -> None:
        self._h.update((("" if self._first else ", ") + json.dumps(uid)).encode())
        self._first = False

    def hexdigest(self) -> str:
        h = self._h.copy()
        h.update(b"]}")
        return h.hexdigest()[:12]


class DedupWork:
    """The temporary tables of one dedup run on ``db`` (see the module docstring)."""

    def __init__(self, db: sqlite3.Connection, page_size: int = 1000) -> None:
        self.db = db
        self.page_size = max(1, page_size)
        db.executescript(_TABLES)

    def close(self) -> None:
        self.db.executescript("DROP TABLE IF EXISTS temp.dd_items; DROP TABLE IF EXISTS temp.dd_buckets; "
                              "DROP TABLE IF EXISTS temp.dd_groups;")

    def _batch(self, mode: str = "DEFERRED") -> AbstractContextManager[sqlite3.Connection]:
        """One transaction; DEFERRED for the temporary tables (no lock on the catalog), IMMEDIATE for outcomes."""
        return transaction(self.db, mode)

    def _pages(self, sql: str) -> Iterator[list[tuple[Any, ...]]]:
        """``sql`` (a SELECT without WHERE whose first column is unique) in pages ordered by that column.

        Keyset pagination: each page is one complete query, so writes may go on between pages.
        """
        key = sql.split("SELECT", 1)[1].split(",", 1)[0].strip()
        last = None
        while True:
            if last is None:
                page = self.db.execute(f"{sql} ORDER BY {key} LIMIT ?", (self.page_size,)).fetchall()
            else:
                page = self.db.execute(f"{sql} WHERE {key} > ? ORDER BY {key} LIMIT ?",
                                       (last, self.page_size)).fetchall()
            if not page:
                return
            yield page
            last = page[-1][0]

    # -- items ----------------------------------------------------------------
    def load_items(self, digest: StreamingDigest) -> int:
        """Fill ``dd_items`` from the screened structures (uid order), feeding ``digest``; returns their number."""
        n = 0
        for page in self._pages(_PASSED):
            rows = []
            for uid, prov, rformula, details in page:
                sym = json.loads(details)
                source = json.loads(prov).get("source", "")
                sg, nprim = int(sym["spacegroup"]), int(sym["n_primitive"])
                rows.append((uid, f"{rformula}|{sg}|{nprim}", rformula, sg, nprim, PRIORITY.get(source, 2)))
                digest.add(uid)
            with self._batch() as db:
                db.executemany("INSERT INTO dd_items VALUES(?,?,?,?,?,?)", rows)
            n += len(rows)
        return n

    def _items(self, where: str, arg: str) -> list[DedupItem]:
        rows = self.db.execute(
            "SELECT i.uid, s.data, i.rformula, i.spacegroup, i.n_primitive, i.priority FROM dd_items i "
            f"JOIN structures s ON s.uid = i.uid WHERE {where} ORDER BY i.uid", (arg,)).fetchall()
        return [DedupItem(u, json.loads(d), rf, sg, n, p) for u, d, rf, sg, n, p in rows]

    # -- buckets --------------------------------------------------------------
    def add_singletons(self) -> int:
        """Every bucket of one member is a group of its own; returns how many."""
        with self._batch() as db:
            cur = db.execute("INSERT INTO dd_groups SELECT uid, bucket, '[]', NULL FROM dd_items WHERE bucket IN "
                             "(SELECT bucket FROM dd_items GROUP BY bucket HAVING COUNT(*) = 1)")
            db.execute("INSERT INTO dd_buckets(bucket, size) SELECT bucket, COUNT(*) FROM dd_items GROUP BY bucket "
                       "HAVING COUNT(*) > 1 ORDER BY COUNT(*) DESC, bucket")
        return cur.rowcount

    def buckets(self) -> Iterator[list[DedupItem]]:
        """The members of each bucket of more than one, largest bucket first, read when asked for."""
        for page in self._pages("SELECT ord, bucket FROM dd_buckets"):
            for _, bucket in page:
                yield self._items("i.bucket = ?", bucket)

    def add_groups(self, bucket: str, groups: list[list[str]], error: str | None) -> None:
        with self._batch() as db:
            db.executemany("INSERT INTO dd_groups VALUES(?,?,?,?)",
                           [(g[0], bucket, json.dumps(g[1:]), error) for g in groups])

    # -- merge across buckets -------------------------------------------------
    def formulas(self) -> Iterator[list[DedupItem]]:
        """Per formula whose representatives lie in more than one bucket, those representatives."""
        sql = ("SELECT i.rformula FROM dd_groups g JOIN dd_items i ON i.uid = g.rep GROUP BY i.rformula "
               "HAVING COUNT(DISTINCT i.bucket) > 1")
        last = None
        while True:
            having = "" if last is None else " AND i.rformula > ?"
            page = [r for (r,) in self.db.execute(f"{sql}{having} ORDER BY i.rformula LIMIT ?",
                                                  (*(() if last is None else (last,)), self.page_size))]
            if not page:
                return
            for rformula in page:
                yield self._items("i.rformula = ? AND i.uid IN (SELECT rep FROM dd_groups)", rformula)
            last = page[-1]

    def merge(self, group: list[str]) -> None:
        """Fold the groups of ``group[1:]`` into the group of ``group[0]`` (the preferred representative)."""
        keep = group[0]
        with self._batch() as db:
            dups = json.loads(db.execute("SELECT dups FROM dd_groups WHERE rep=?", (keep,)).fetchone()[0])
            for other in group[1:]:
                (other_dups,) = db.execute("SELECT dups FROM dd_groups WHERE rep=?", (other,)).fetchone()
                db.execute("DELETE FROM dd_groups WHERE rep=?", (other,))
                dups += [other, *json.loads(other_dups)]
            db.execute("UPDATE dd_groups SET dups=? WHERE rep=?", (json.dumps(dups), keep))

    # -- outcomes -------------------------------------------------------------
    def n_groups(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM dd_groups").fetchone()[0]

    def write_outcomes(self, digest: str, *, enabled: bool) -> None:
        """Replace the catalog's dedup outcomes with this run's, in one transaction."""
        with self._batch("IMMEDIATE"):
            self.db.execute("DELETE FROM outcomes WHERE filter='dedup'")
            if not enabled:
                self.db.execute("INSERT INTO outcomes SELECT uid, 'dedup', 'pass', '', ?, ? FROM dd_items",
                                (json.dumps({"disabled": True}), digest))
            else:
                for page in self._pages("SELECT rep, bucket, dups, error FROM dd_groups"):
                    rows = []
                    for rep, bucket, dups_json, error in page:
                        dups = json.loads(dups_json)
                        details: dict[str, Any] = {"bucket": bucket, "duplicates": dups}
                        if error:
                            details["matcher_error"] = error
                        rows.append((rep, "dedup", "pass", "", json.dumps(details), digest))
                        rows.extend((d, "dedup", "fail", "duplicate",
                                     json.dumps({"representative": rep, "bucket": bucket}), digest) for d in dups)
                    self.db.executemany("INSERT INTO outcomes VALUES(?,?,?,?,?,?)", rows)
