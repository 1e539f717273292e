"""A writing transaction that takes the write lock first, on both databases.

SQLite starts a plain `BEGIN` as a reader and upgrades to a writer at the first write; when
another process committed in between, the upgrade fails at once with "database is locked" and the
busy timeout cannot help (the snapshot is stale). `BEGIN IMMEDIATE` takes the write lock up front
and waits its turn, which is also what serializes outbox claimers on SQLite (there is no
`SKIP LOCKED`). PostgreSQL needs nothing special: row locks do the work.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa


@contextmanager
def writing(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction holding the write lock (SQLite) that commits on success."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as connection:
            yield connection
        return
    with engine.connect() as connection, immediate(connection):
        yield connection


@contextmanager
def immediate(connection: sa.Connection) -> Iterator[sa.Connection]:
    """SQLite: a transaction on this connection that takes the write lock first and commits
    on success (several in a row on one connection: engine/outbox/set_commit.py)."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.rollback()
        raise
    connection.commit()
