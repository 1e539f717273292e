"""Recording a batch of outcomes in one transaction, only for rows this worker still holds.

Each outcome updates its `actions` row, adds an `action_attempts` row (attempt number, worker,
real start and end, outcome, error) and applies its writes (engine/outbox/writes.py) in the
same transaction, so a `sent` action and its task, ledger line or `email_sent` event commit
together or not at all. Only rows still `claimed` by this worker are written: one whose lease
ran out and was taken over by another worker records nothing (that worker will send it again
with the same key, so its writes happen once, there). Sent rows without writes (every email)
are checked and marked by one `UPDATE ... WHERE leased_by = worker AND status = 'claimed'
RETURNING id`, which locks each row as it checks it; the others are locked and checked first
(`SELECT ... FOR UPDATE`), since their writes decide their status.

A whole batch commits at once (a transaction per message would cap the send rate). One write
that fails (a third-party connector's bad row) is rolled back to its savepoint and dead-letters
that action only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from engine.errors import RetainError
from engine.outbox import writes
from engine.outbox.bulk import Bulk
from engine.outbox.claim import Claimed, put_back_status
from engine.outbox.idset import among
from engine.store.status import CLAIMED, DEAD, DEFERRED, SENT
from engine.store.tables import actions, attempts
from engine.store.txn import writing

log = logging.getLogger(__name__)
RELEASED = "released"
"""Not an action status: the outcome of a row put back unsent (its connector went down, or the
worker is stopping); it returns to the status it had, its attempt uncounted."""


@dataclass
class Outcome:
    """What became of one claimed row."""

    row: Claimed
    status: str  # SENT, RETRYING, DEAD, SUPPRESSED, DEFERRED (quiet hours), or RELEASED
    reason: str | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None
    writes: tuple[Any, ...] = ()  # connectors.base.Write values of a Sent
    detail: str | None = None
    suppress: dict[str, str] = field(default_factory=dict)  # address -> reason
    email: bool = False  # a sent email: record email_sent and last_emailed_at
    started_at: datetime | None = None  # real clock; None: nothing was tried
    finished_at: datetime | None = None


def record(engine: sa.Engine, worker: str, outcomes: Sequence[Outcome], as_of: datetime
           ) -> list[Outcome]:
    """Write the outcomes this worker may still write; returns those (the others were lost)."""
    if not outcomes:
        return []
    with writing(engine) as connection:
        plain = [o for o in outcomes if o.status == SENT and not o.writes]
        rest = [o for o in outcomes if o.status != SENT or o.writes]
        held = _mark_sent(connection, worker, [o.row.id for o in plain], as_of)
        if rest:
            held |= _held(connection, worker, [o.row.id for o in rest])
        kept = [o for o in outcomes if o.row.id in held]
        if not kept:
            return _lost(worker, len(outcomes), kept)
        rest = [o for o in rest if o.row.id in held]
        for outcome in rest:
            if outcome.status == SENT and outcome.writes:
                _apply_writes(connection, outcome, as_of)
        if rest:
            connection.execute(_UPDATE, [_values(o, worker, as_of) for o in rest])
        tried = [_attempt(o) for o in kept if o.status not in (RELEASED, DEFERRED)]
        _insert_attempts(connection, tried, worker)
        writes.record_emails(connection, [o.row for o in kept
                                          if o.status == SENT and o.email], as_of)
        writes.suppress(connection, {a: r for o in kept for a, r in o.suppress.items()}, as_of)
    return _lost(worker, len(outcomes), kept)


def _lost(worker: str, total: int, kept: list[Outcome]) -> list[Outcome]:
    if total > len(kept):
        log.warning("worker %s lost the lease of %d action(s); another worker has them", worker,
                    total - len(kept))
    return kept


def _held(connection: sa.Connection, worker: str, ids: list[int]) -> set[int]:
    query = (sa.select(actions.c.id)
             .where(among(connection.dialect, actions.c.id, ids), actions.c.leased_by == worker,
                    actions.c.status == CLAIMED))
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    return set(connection.execute(query).scalars().all())


def _mark_sent(connection: sa.Connection, worker: str, ids: list[int], as_of: datetime
               ) -> set[int]:
    """Sent rows (without writes) still held by this worker, marked sent in one statement;
    their ids."""
    if not ids:
        return set()
    return set(connection.execute(
        sa.update(actions)
        .where(among(connection.dialect, actions.c.id, ids), actions.c.leased_by == worker,
               actions.c.status == CLAIMED)
        .values(status=SENT, reason=None, sent_at=as_of, updated_at=as_of, lease_until=None,
                leased_by=None)
        .returning(actions.c.id)).scalars().all())


def _apply_writes(connection: sa.Connection, outcome: Outcome, as_of: datetime) -> None:
    savepoint = connection.begin_nested()
    try:
        for write in outcome.writes:
            writes.apply(connection, write.kind, write.values, outcome.row, as_of)
    except (SQLAlchemyError, RetainError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        # RetainError: a writer that refuses on purpose (a tag write for a customer not found
        # raises PermanentError); escaping here would roll back the batch's sent outcomes.
        savepoint.rollback()
        outcome.status, outcome.error = DEAD, f"writing its result failed: {exc!r}"
        outcome.reason = f"dead: {outcome.error}"
        return
    savepoint.commit()


_UPDATE = (sa.update(actions)
           .where(actions.c.id == sa.bindparam("_id"), actions.c.leased_by == sa.bindparam("_by"))
           .values(status=sa.bindparam("_status"), reason=sa.bindparam("_reason"),
                   last_error=sa.bindparam("_error"), attempts=sa.bindparam("_attempts"),
                   next_attempt_at=sa.bindparam("_next", type_=actions.c.next_attempt_at.type),
                   sent_at=sa.bindparam("_sent", type_=actions.c.sent_at.type),
                   updated_at=sa.bindparam("_updated", type_=actions.c.updated_at.type),
                   lease_until=None, leased_by=None))


def _values(outcome: Outcome, worker: str, as_of: datetime) -> dict[str, Any]:
    row = outcome.row
    if outcome.status == RELEASED:
        return {"_id": row.id, "_by": worker, "_status": put_back_status(row),
                "_reason": row.reason, "_error": row.last_error, "_attempts": row.attempts - 1,
                "_next": row.next_attempt_at, "_sent": None, "_updated": as_of}
    if outcome.status == DEFERRED:  # quiet hours at send time: nothing was tried
        return {"_id": row.id, "_by": worker, "_status": DEFERRED, "_reason": outcome.reason,
                "_error": row.last_error, "_attempts": row.attempts - 1,
                "_next": outcome.next_attempt_at, "_sent": None, "_updated": as_of}
    return {"_id": row.id, "_by": worker, "_status": outcome.status, "_reason": outcome.reason,
            "_error": outcome.error if outcome.error is not None else row.last_error,
            "_attempts": row.attempts,
            "_next": outcome.next_attempt_at or row.next_attempt_at,
            "_sent": as_of if outcome.status == SENT else None, "_updated": as_of}


def _attempt(outcome: Outcome) -> list[Any]:
    """An `action_attempts` row: the values `_ATTEMPTS` varies per row, in its order."""
    started = outcome.started_at or outcome.finished_at
    return [outcome.row.id, outcome.row.attempts, started, outcome.finished_at, outcome.status,
            outcome.error or (outcome.reason if outcome.status != SENT else None)]


def _insert_attempts(connection: sa.Connection, rows: list[list[Any]], worker: str) -> None:
    """The batch's `action_attempts` rows in one statement (engine/outbox/bulk.py)."""
    if rows:
        bulk = _attempts_bulk(connection.dialect)
        for row in rows:
            row[2], row[3] = bulk.time(row[2]), bulk.time(row[3])
        bulk.execute(connection, rows, {"worker": worker})


@lru_cache(maxsize=8)
def _attempts_bulk(dialect: sa.Dialect) -> Bulk:
    return Bulk(attempts, dialect, varying=("action_id", "attempt", "started_at", "finished_at",
                                            "outcome", "error"),
                constant=("worker",), conflict=())
