"""A writing transaction that takes the write lock first, on both databases.

SQLite starts a plain `BEGIN` as a reader and upgrades to a writer at the first write; when
another process committed in between, the upgrade fails at once with "database is locked" and the
busy timeout cannot help (the snapshot is stale). `BEGIN IMMEDIATE` takes the write lock up front
and waits its turn, which is also what serializes outbox claimers on SQLite (there is no
`SKIP LOCKED`). PostgreSQL needs nothing special: row locks do the work.

Within one process the SQLite writers also queue on a Python lock (`write_lock`) before they
ask SQLite: a writer waiting in SQLite's busy handler sleeps and polls (1, 2, 5 ... up to 100 ms
between looks), so under many small writes (the daemon's API at hundreds of requests a second,
each in its own thread) the lock sat free while its waiters slept, and a waiter could time out
after the whole busy timeout while others kept taking it. Queued on the Python lock, the next
writer starts the moment the last one commits, and waits without holding a pooled connection.
Other processes still meet at SQLite's lock, with its busy timeout, as before.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import sqlalchemy as sa

_locks: weakref.WeakKeyDictionary[sa.Engine, threading.RLock] = weakref.WeakKeyDictionary()
_making = threading.Lock()


def write_lock(engine: sa.Engine) -> AbstractContextManager[object]:
    """This process's queue for the SQLite write lock of `engine` (re-entrant: a transaction
    in `writing` may use `immediate` on its connection); nothing on PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return nullcontext()
    with _making:
        lock = _locks.get(engine)
        if lock is None:
            lock = _locks[engine] = threading.RLock()
    return lock


@contextmanager
def writing(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction holding the write lock (SQLite) that commits on success."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as connection:
            yield connection
        return
    with write_lock(engine), engine.connect() as connection, immediate(connection):
        yield connection


@contextmanager
def immediate(connection: sa.Connection) -> Iterator[sa.Connection]:
    """SQLite: a transaction on this connection that takes the write lock first and commits
    on success (several in a row on one connection: engine/outbox/set_commit.py)."""
    with write_lock(connection.engine):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
