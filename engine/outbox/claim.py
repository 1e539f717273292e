"""Claiming due outbox rows with a lease, extending it while sends run, and putting rows back.

A row is due when it waits (`planned`, `deferred`, `retrying`) and its `next_attempt_at` has
come in business time (as-of), or when it is `claimed` by a worker whose lease ran out on the
real clock (that worker died: its claim comes back, RELIABILITY principle 4). Claiming sets
`claimed`, the worker, a lease of 60 s and counts the attempt at once, so a message that kills
its worker every time ends dead instead of looping (the dispatcher checks the count).

Each kind of due row is claimed by one statement, `UPDATE ... WHERE id IN (the pick) RETURNING`.
On PostgreSQL the pick is `SELECT ... FOR UPDATE SKIP LOCKED` (a materialized CTE), so
concurrent dispatchers take disjoint rows without waiting on each other (pgqueuer, River), and
the same statement returns each claimed row with its payload (`action_payloads`, joined after
the update). SQLite has no `SKIP LOCKED`: the update runs in a `BEGIN IMMEDIATE` transaction,
whose write lock serializes claimers, and the payloads are read by id in the same transaction.
Either way the status each row had before is kept (a kind is one status), so a row can be put
back exactly as it was when its connector goes down or the worker is told to stop. Payloads
never change after the commit.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.clock import utcnow
from engine.store.status import CLAIMED, RETRYING, WAITING
from engine.store.tables import actions, payloads
from engine.store.txn import writing

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


def _candidates(as_of: Any, now: Any) -> list[tuple[str, sa.ColumnElement[bool], Any]]:
    """Each kind of due row (the status it has) with the order it is taken in: one index range
    each, so a claim reads about `limit` index entries however long the backlog is (one OR over
    all of them made PostgreSQL sort every due row at every claim)."""
    stale = (actions.c.status == CLAIMED, actions.c.lease_until < now)
    return [(CLAIMED, sa.and_(*stale), actions.c.lease_until)] + [
        (status, sa.and_(actions.c.status == status, actions.c.next_attempt_at <= as_of),
         actions.c.next_attempt_at) for status in WAITING]


def _moment(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=actions.c.next_attempt_at.type)


@functools.cache
def _statements(dialect: str) -> tuple[sa.Select[Any], list[tuple[str, sa.Executable]]]:
    """Which kinds are due, and each kind's claim, built once per dialect with the moment,
    the worker and the limit as parameters: building them cost more than running them on a
    small outbox (a `retain test` run, a daemon's quiet passes)."""
    as_of, now = _moment("p_as_of"), _moment("p_now")
    anything = sa.select(*(sa.exists().where(due).label(was)
                           for was, due, _ in _candidates(as_of, now)))
    take = (sa.update(actions)
            .values(status=CLAIMED, leased_by=sa.bindparam("p_worker"),
                    lease_until=_moment("p_lease_until"), attempts=actions.c.attempts + 1,
                    updated_at=as_of)
            .returning(*_COLUMNS))
    claims: list[tuple[str, sa.Executable]] = []
    for was, due, order in _candidates(as_of, now):
        pick = (sa.select(actions.c.id)
                .where(due, actions.c.connector.not_in(sa.bindparam("p_skip", expanding=True)))
                .order_by(order, actions.c.id).limit(sa.bindparam("p_limit")))
        if dialect == "postgresql":  # pick (SKIP LOCKED), claim, and each row's payload at once
            picked = pick.with_for_update(skip_locked=True).cte("pick").prefix_with(
                "MATERIALIZED")
            taken = take.where(actions.c.id == picked.c.id).cte("taken")
            claims.append((was, sa.select(taken, payloads.c.payload).select_from(
                taken.outerjoin(payloads, payloads.c.action_id == taken.c.id))))
        else:  # the write lock of BEGIN IMMEDIATE is held: no other claimer runs
            claims.append((was, take.where(actions.c.id.in_(pick.scalar_subquery()))))
    return anything, claims


def due_kinds(engine: sa.Engine, as_of: datetime) -> frozenset[str]:
    """The kinds of row due now (by the status `claim_due` takes them from: a dead worker's
    `claimed`, then each waiting one), read without the write lock: a pass with nothing to
    send (most of a daemon's, many of `retain test`'s) ends on this one read instead of a
    claim's write transaction, and the first claim of the others tries only these kinds."""
    anything, _ = _statements(engine.dialect.name)
    with engine.connect() as connection:
        found = connection.execute(anything, {"p_as_of": as_of, "p_now": utcnow()}).one()
    return frozenset(was for was, due in found._mapping.items() if due)


def claim_due(engine: sa.Engine, worker: str, as_of: datetime, limit: int, *,
              skip: Collection[str] = (), lease: timedelta = LEASE,
              kinds: Collection[str] | None = None) -> list[Claimed]:
    """Claim up to `limit` due rows (a dead worker's first, then the waiting ones, oldest due
    first within each status); `skip` names connectors not to claim for (one that went down in
    this pass); `kinds`, when given, the only kinds to try (those `due_kinds` found)."""
    now = utcnow()
    claimed: list[Claimed] = []
    _, claims = _statements(engine.dialect.name)
    values = {"p_as_of": as_of, "p_now": now, "p_worker": worker, "p_lease_until": now + lease,
              "p_skip": sorted(skip)}
    with writing(engine) as connection:
        for was, claim in claims:
            if len(claimed) >= limit:
                break
            if kinds is not None and was not in kinds:
                continue
            rows = connection.execute(claim, {**values, "p_limit": limit - len(claimed)}).all()
            if connection.dialect.name == "postgresql":
                pairs = [(row[:-1], row[-1]) for row in rows]
            else:
                pairs = _with_payloads(connection, rows)
            claimed.extend(_claimed(row, was, payload) for row, payload in pairs)
    return sorted(claimed, key=lambda c: (c.next_attempt_at is None, c.next_attempt_at, c.id))


def _with_payloads(connection: sa.Connection, rows: list[Any]) -> list[tuple[Any, Any]]:
    """SQLite: the claimed rows' payloads, by id, in the claim's transaction."""
    if not rows:
        return []
    frozen = dict(connection.execute(_PAYLOADS, {"ids": [row.id for row in rows]}).all())
    return [(row, frozen.get(row.id)) for row in rows]


_PAYLOADS = sa.select(payloads.c.action_id, payloads.c.payload).where(
    payloads.c.action_id.in_(sa.bindparam("ids", expanding=True)))


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
