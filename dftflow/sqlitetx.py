"""One explicit SQLite transaction, the way every dftflow database writes.

dftflow's connections run in autocommit mode (``isolation_level=None``), so a
multi-statement change is wrapped in ``BEGIN … COMMIT`` by hand. ``IMMEDIATE``
takes the write lock at the start, so two writers (workers, harvesters, two
``submit`` hosts) queue on ``busy_timeout`` instead of failing mid-transaction
on a lock upgrade; ``DEFERRED`` suits temporary tables that need no lock on the
database. Any exception, KeyboardInterrupt included, rolls back, so a
connection is never left inside an open transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

MODES = ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")


@contextmanager
def transaction(db: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """``BEGIN mode`` … ``COMMIT``, or ``ROLLBACK`` on any exception (re-raised)."""
    if mode not in MODES:
        raise ValueError(f"SQLite transaction mode {mode!r} is not one of {', '.join(MODES)}")
    db.execute(f"BEGIN {mode}")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    else:
        db.execute("COMMIT")
