"""Read-only SQLite connections to a project's databases while a build may be writing them.

All of dftflow's databases (``catalog.sqlite``, ``jobs.sqlite``, a dataset's
``manifest.sqlite``) are in WAL mode. A reader opened with ``mode=ro`` never
writes the database, takes no write lock, and sees the last committed
transaction; it must be short-lived so that the writer can checkpoint.

One subtlety: when no connection has the database open, its ``-wal`` and
``-shm`` files are gone, and a ``mode=ro`` reader would create them (and, being
read-only, leave them behind). A database in that state is fully checkpointed
and has no writer, so it is opened ``immutable`` instead: nothing is created
beside it. Should a writer start during that read and checkpoint into the
file, the read fails with :class:`sqlite3.DatabaseError` and the caller reads
again (the dashboard answers 503 and the page's next poll succeeds).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote


def connect(path: Path | str) -> sqlite3.Connection:
    """A read-only connection to the SQLite file ``path`` (which must exist)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such database")
    live = Path(f"{path}-wal").exists()
    uri = f"file:{quote(str(path))}?mode=ro" + ("" if live else "&immutable=1")
    db = sqlite3.connect(uri, uri=True, timeout=5, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA query_only=1")
    return db


@contextmanager
def reading(path: Path | str) -> Iterator[sqlite3.Connection]:
    """``connect`` for the length of a ``with`` block: the connection is closed at its end."""
    db = connect(path)
    try:
        yield db
    finally:
        db.close()
