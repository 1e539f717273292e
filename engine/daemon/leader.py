"""One scheduler at a time: a leader lease row with a fencing epoch (RELIABILITY principle 5).

Every replica calls `acquire_or_renew` each tick. The row `daemon_leader(name)` says who holds
the lease, until when (real time, `engine.clock.utcnow`, never the business as-of) and at which
`epoch`. A lease still running is renewed by its holder and refused to everyone else; a lease
that ran out is taken by whoever asks first, and the epoch grows by one. An advisory lock is
not used: it dies silently with a recycled pooled connection and leaks under PgBouncer; a row
survives both, and the epoch lets a write prove it still belongs to the current term.

Holding the lease is not enough to write safely: a leader that stalled (GC pause, slow disk)
past its TTL may wake up and commit a plan while a new leader commits the same one. `fence` is
run INSIDE each transaction that commits enrollments or actions: it locks the lease row (FOR
UPDATE on PostgreSQL; SQLite's write lock) and raises `NotLeader` unless this holder still has
the lease at that epoch, so a deposed leader's late commit rolls back whole. A takeover waits
for the row lock, so it cannot interleave with a commit that passed the fence.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

import sqlalchemy as sa

from engine.clock import utcnow
from engine.errors import NotLeader
from engine.store.dialect import insert_ignoring
from engine.store.tables import leaders
from engine.store.txn import writing

SCHEDULER = "scheduler"  # the lease of the replica that evaluates and runs ticks
DEFAULT_TTL = timedelta(seconds=15)  # a dead leader is replaced within this and one tick

Fence = Callable[[sa.Connection], None]
"""Called inside a writing transaction; raises NotLeader when the writer lost the lease."""


def acquire_or_renew(engine: sa.Engine, name: str, holder: str, ttl: timedelta = DEFAULT_TTL,
                     *, now: datetime | None = None) -> int | None:
    """The epoch `holder` leads `name` at after this call, or None when another holds it.

    In one transaction with the row locked: a missing row is created at epoch 1; the holder of
    a running lease extends it and keeps its epoch; a lease that ran out (whoever held it, the
    caller included: it may have acted as if it still led) is taken at epoch + 1. `now` is the
    real clock unless a test passes one."""
    asked = now or utcnow()
    with writing(engine) as connection:
        _lock_for_write(connection, name)
        row = _read(connection, name)
        # a new end runs from when the row was got: the renewal may have waited that long
        # behind the leader's own fenced commit, which held the row (no takeover meanwhile)
        got = now or utcnow()
        if row is None:
            created = connection.execute(insert_ignoring(leaders, connection.dialect, ["name"])
                                         .values(name=name, holder=holder, epoch=1,
                                                 lease_until=got + ttl)
                                         .returning(leaders.c.epoch)).scalar()
            if created is not None:
                return int(created)
            row = _read(connection, name)  # another replica created it first: now locked
            assert row is not None
        held_by, epoch, until = row
        running = until > asked
        if running and held_by != holder:
            return None
        new_epoch = epoch if running else epoch + 1
        connection.execute(leaders.update().where(leaders.c.name == name,
                                                  leaders.c.epoch == epoch)
                           .values(holder=holder, epoch=new_epoch, lease_until=got + ttl))
        return int(new_epoch)


def release(engine: sa.Engine, name: str, holder: str, *, now: datetime | None = None) -> bool:
    """End `holder`'s lease now (a clean stop), so another replica takes over at once instead
    of after the TTL; the epoch stays, the next taker increments it. False: it was not held."""
    now = now or utcnow()
    with writing(engine) as connection:
        result = connection.execute(leaders.update().where(
            leaders.c.name == name, leaders.c.holder == holder, leaders.c.lease_until > now)
            .values(lease_until=now))
        return bool(result.rowcount)


def fence(connection: sa.Connection, name: str, holder: str, epoch: int, *,
          now: datetime | None = None) -> None:
    """Raise NotLeader unless `holder` holds `name`'s running lease at `epoch`; run it inside
    the transaction whose writes it guards. The row stays locked until that transaction ends,
    so no takeover commits in between."""
    now = now or utcnow()
    _lock_for_write(connection, name)
    row = _read(connection, name)
    if row is None:
        raise NotLeader(f"{holder} is not the {name} leader: no lease has been taken")
    held_by, current, until = row
    if held_by != holder or current != epoch:
        raise NotLeader(f"{holder} is no longer the {name} leader at epoch {epoch}: {held_by} "
                        f"leads at epoch {current}; this transaction is rolled back")
    if until <= now:
        raise NotLeader(f"{holder}'s {name} lease (epoch {epoch}) ran out at {until:%H:%M:%S} "
                        "UTC before this commit; it is rolled back")


def fence_for(name: str, holder: str, epoch: int) -> Fence:
    """The `fence` of one term, as the commit path takes it (`run_cycle(..., fence=...)`)."""
    return partial(fence, name=name, holder=holder, epoch=epoch)


def _lock_for_write(connection: sa.Connection, name: str) -> None:
    """SQLite: take the database's write lock now (a no-op UPDATE), so nothing changes the
    lease between this read and the transaction's end. PostgreSQL locks the row in `_read`."""
    if connection.dialect.name == "sqlite":
        connection.execute(leaders.update().where(leaders.c.name == name)
                           .values(epoch=leaders.c.epoch))


def _read(connection: sa.Connection, name: str) -> tuple[str, int, datetime] | None:
    row = connection.execute(sa.select(leaders.c.holder, leaders.c.epoch, leaders.c.lease_until)
                             .where(leaders.c.name == name).with_for_update()).first()
    return None if row is None else (row[0], int(row[1]), row[2])
