"""SQLite helpers shared by the services' stores."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def transaction(db: sqlite3.Connection, write: bool) -> Iterator[None]:
    """For a write, BEGIN IMMEDIATE ... COMMIT, rolled back on any error; a read runs as is.

    IMMEDIATE takes the write lock up front, so a writer never fails half-way on a lock
    that another connection took after its reads.
    """
    try:
        if write:
            db.execute("BEGIN IMMEDIATE")
        yield
        if write:
            db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
