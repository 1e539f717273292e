"""Claiming due outbox rows with a lease, extending it while sends run, and putting rows back.

A row is due when it waits (`planned`, `deferred`, `retrying`) and its `next_attempt_at` has
come in business time (as-of), or when it is `claimed` by a worker whose lease ran out on the
real clock (that worker died: its claim comes back, RELIABILITY principle 4). Claiming sets
`claimed`, the worker, a lease of 60 s and counts the attempt at once, so a message that kills
its worker every time ends dead instead of looping (the dispatcher checks the count).

PostgreSQL picks the rows with `SELECT ... FOR UPDATE SKIP LOCKED` and claims them with
`UPDATE ... WHERE id IN (...) RETURNING` in the same transaction, so concurrent dispatchers take
disjoint rows without waiting on each other (pgqueuer, River). SQLite has no `SKIP LOCKED`: the
same select and update run in a `BEGIN IMMEDIATE` transaction, whose write lock serializes
claimers. Either way the status each row had before is kept, so a row can be put back exactly
as it was when its connector goes down or the worker is told to stop. The claimed rows'
payloads are read from `action_payloads` by id in the same transaction (they never change).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.clock import utcnow
from engine.outbox.txn import writing
from engine.store.status import CLAIMED, RETRYING, WAITING
from engine.store.tables import actions, payloads

LEASE = timedelta(seconds=60)
HEARTBEAT = timedelta(seconds=10)


@dataclass(frozen=True)
class Claimed:
    """One outbox row this worker holds, as it was read at the claim."""

    id: int
    key: str
    playbook_id: str
    customer_id: str
    connector: str
    payload: dict[str, Any]
    attempts: int  # including this claim
    was: str  # the status before the claim: what a put-back restores
    next_attempt_at: datetime | None
    reason: str | None
    last_error: str | None


_COLUMNS = (actions.c.id, actions.c.idempotency_key, actions.c.playbook_id,
            actions.c.customer_id, actions.c.connector, actions.c.attempts,
            actions.c.next_attempt_at, actions.c.reason, actions.c.last_error)


def _candidates(as_of: datetime, now: datetime) -> list[tuple[sa.ColumnElement[bool], Any]]:
    """Each kind of due row with the order it is taken in: one index range each, so a claim
    reads about `limit` index entries however long the backlog is (one OR over all of them made
    PostgreSQL sort every due row at every claim)."""
    stale = (actions.c.status == CLAIMED, actions.c.lease_until < now)
    return [(sa.and_(*stale), actions.c.lease_until)] + [
        (sa.and_(actions.c.status == status, actions.c.next_attempt_at <= as_of),
         actions.c.next_attempt_at) for status in WAITING]


def claim_due(engine: sa.Engine, worker: str, as_of: datetime, limit: int, *,
              skip: Collection[str] = (), lease: timedelta = LEASE) -> list[Claimed]:
    """Claim up to `limit` due rows (a dead worker's first, then the waiting ones, oldest due
    first within each status); `skip` names connectors not to claim for (one that went down in
    this pass)."""
    now = utcnow()
    skip_locked = engine.dialect.name == "postgresql"
    with writing(engine) as connection:
        was: dict[int, str] = {}
        for due, order in _candidates(as_of, now):
            if len(was) >= limit:
                break
            pick = (sa.select(actions.c.id, actions.c.status).where(due)
                    .order_by(order, actions.c.id).limit(limit - len(was)))
            if skip:
                pick = pick.where(actions.c.connector.not_in(sorted(skip)))
            if skip_locked:  # SQLite: the write lock of BEGIN IMMEDIATE is held instead
                pick = pick.with_for_update(skip_locked=True)
            was.update(connection.execute(pick).all())
        if not was:
            return []
        rows = connection.execute(
            sa.update(actions).where(actions.c.id.in_(list(was)))
            .values(status=CLAIMED, leased_by=worker, lease_until=now + lease,
                    attempts=actions.c.attempts + 1, updated_at=as_of)
            .returning(*_COLUMNS)).all()
        # by id, after the update: the pick stays one index range of `actions` (a join there
        # measured no cheaper on SQLite and ~5% dearer on PostgreSQL, docs/BENCHMARKS.md)
        frozen = dict(connection.execute(
            sa.select(payloads.c.action_id, payloads.c.payload)
            .where(payloads.c.action_id.in_(list(was)))).all())
    return sorted((_claimed(row, was[row.id], frozen.get(row.id)) for row in rows),
                  key=lambda c: (c.next_attempt_at is None, c.next_attempt_at, c.id))


def _claimed(row: Any, was: str, payload: dict[str, Any] | None) -> Claimed:
    id_, key, playbook_id, customer_id, connector, attempts, next_at, reason, last_error = row
    return Claimed(id=id_, key=key, playbook_id=playbook_id, customer_id=customer_id,
                   connector=connector, payload=dict(payload or {}), attempts=attempts, was=was,
                   next_attempt_at=next_at, reason=reason, last_error=last_error)


def put_back_status(row: Claimed) -> str:
    """The status a released row returns to: what it was, or `retrying` for a row taken over
    from a dead worker (its earlier claim counted an attempt that never finished)."""
    return row.was if row.was in WAITING else RETRYING


def extend_leases(engine: sa.Engine, worker: str, ids: Iterable[int], *,
                  lease: timedelta = LEASE) -> int:
    """The heartbeat: push the lease of rows still held by `worker` (real clock); how many."""
    ids = list(ids)
    if not ids:
        return 0
    with writing(engine) as connection:
        result = connection.execute(
            sa.update(actions)
            .where(actions.c.id.in_(ids), actions.c.leased_by == worker,
                   actions.c.status == CLAIMED)
            .values(lease_until=utcnow() + lease))
    return result.rowcount
