"""What a run changes on enrollments already made: goals reached, exits, segment memberships.

Run before new enrollments are committed, so an exit cancels what is pending before anything is
sent, and a customer who left a segment can enter it again in the same run.

- **goal**: an enrollment converts at the first goal event after it entered, when that event is
  within the goal window of the version it entered with (`converted_at`). The earliest event
  after entry decides: if it is past the window, no later one is inside it.
- **exit_when**: an enrollment still in progress whose customer had the exit event since
  entering is `exited` (end_reason says which event and when) and its pending actions are
  `cancelled` with that reason. In progress (`in_flight`) includes an enrollment marked
  completed whose last actions have not gone yet (deferred, retrying, not dispatched).
- **segment membership**: an open membership (`left_at` NULL) of a customer who no longer
  matches the playbook closes at as-of.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.clock import iso
from engine.format.playbook import Goal, Playbook
from engine.query.evaluate import Moment, at_utc, compose
from engine.query.versions import version_goals
from engine.store import status as st
from engine.store.tables import actions, enrollments, events

BATCH = 500
OPEN = (st.ACTIVE, st.WAITING_STEP)


def one_of(column: sa.ColumnElement[str], values: tuple[str, ...]) -> sa.ColumnElement[bool]:
    """`column IN (...)` with one bound value each: a statement run for many rows at once
    (executemany) refuses SQLAlchemy's default, expanding IN."""
    return column.in_([sa.literal(value) for value in values])


def in_flight() -> sa.ColumnElement[bool]:
    """An enrollment still under way: open (active, waiting), or completed while actions of it
    are pending. A last step completes its enrollment when its actions are committed, but a
    deferred or retrying email of it has not gone yet: an exit must still cancel it."""
    e, pending = enrollments.c, actions.alias("pending")
    waiting = sa.exists().where(pending.c.enrollment_id == e.id,
                                one_of(pending.c.status, st.WAITING))
    return sa.or_(one_of(e.status, OPEN), sa.and_(e.status == st.COMPLETED, waiting))


def record_goals(connection: sa.Connection, playbook: Playbook, as_of: datetime) -> int:
    """Mark conversions of this playbook's enrollments, each judged by the goal of the version
    it entered with (as `report playbooks` judges it); returns how many converted now."""
    e = enrollments.c
    open_versions = list(connection.execute(
        sa.select(e.version).where(e.playbook_id == playbook.id, e.converted_at.is_(None))
        .distinct()).scalars())
    # The loaded version's goal is its document's (a version hashes its source); only older
    # versions' are read from their recorded sources.
    goals = version_goals(connection, [(playbook.id, v) for v in open_versions
                                       if v != playbook.version])
    converted = 0
    for version in open_versions:
        goal = playbook.document.goal if version == playbook.version else goals.get(
            (playbook.id, version))
        if goal is not None:
            converted += _convert(connection, playbook.id, version, goal, as_of)
    return converted


def _convert(connection: sa.Connection, playbook_id: str, version: str, goal: Goal,
             as_of: datetime) -> int:
    e, ev = enrollments.c, events.c
    first = (sa.select(e.id, e.entered_at, sa.func.min(ev.occurred_at))
             .join_from(enrollments, events, sa.and_(ev.customer_id == e.customer_id,
                                                    ev.type == goal.event,
                                                    ev.occurred_at > e.entered_at,
                                                    ev.occurred_at <= as_of))
             .where(e.playbook_id == playbook_id, e.version == version,
                    e.converted_at.is_(None), e.entered_at <= as_of)
             .group_by(e.id, e.entered_at))
    converted = [(ident, at) for ident, entered, at in connection.execute(first)
                 if _aware(at) - _aware(entered) <= goal.within]
    for chunk in _chunks(converted):
        connection.execute(enrollments.update().where(e.id == sa.bindparam("ident"))
                           .values(converted_at=sa.bindparam("at")),
                           [{"ident": ident, "at": _aware(at)} for ident, at in chunk])
    return len(converted)


def apply_exits(connection: sa.Connection, playbook: Playbook, as_of: datetime) -> int:
    """End in-progress enrollments whose customer had the exit event; cancel their pending
    actions. Returns how many ended."""
    exit_when = playbook.document.exit_when
    if exit_when is None:
        return 0
    e, ev = enrollments.c, events.c
    found = (sa.select(e.id, sa.func.min(ev.occurred_at))
             .join_from(enrollments, events, sa.and_(ev.customer_id == e.customer_id,
                                                    ev.type == exit_when.event,
                                                    ev.occurred_at > e.entered_at,
                                                    ev.occurred_at <= as_of))
             .where(e.playbook_id == playbook.id, in_flight())
             .group_by(e.id))
    ended = [(ident, _aware(at)) for ident, at in connection.execute(found)]
    for chunk in _chunks(ended):
        reasons = [{"ident": ident, "why": f"exit_when: {exit_when.event} at {iso(at)}"}
                   for ident, at in chunk]
        end(connection, reasons, as_of, st.EXITED)
    return len(ended)


def end(connection: sa.Connection, reasons: list[dict[str, Any]], as_of: datetime,
        status: str) -> None:
    """End enrollments (`ident`, `why` each) and cancel their pending actions with that why;
    one statement each for all of them."""
    e, a = enrollments.c, actions.c
    connection.execute(
        enrollments.update().where(e.id == sa.bindparam("ident"), in_flight())
        .values(status=status, ended_at=as_of, end_reason=sa.bindparam("why"), wake_at=None),
        reasons)
    connection.execute(
        actions.update().where(a.enrollment_id == sa.bindparam("ident"),
                               one_of(a.status, st.WAITING))
        .values(status=st.CANCELLED, reason=sa.bindparam("why"), updated_at=as_of),
        reasons)


def close_memberships(connection: sa.Connection, playbook: Playbook, moment: Moment) -> int:
    """Close the open segment memberships of customers who no longer match; how many closed."""
    if not playbook.trigger.membership:
        return 0
    tc = moment.trigger_context(playbook.id)
    part = playbook.trigger.sql(tc, playbook.document.backfill)
    matching = compose(playbook, tc, part, reentry=False).subquery()
    e = enrollments.c
    result = connection.execute(
        enrollments.update().where(e.playbook_id == playbook.id, e.left_at.is_(None),
                                   e.customer_id.not_in(sa.select(matching.c.customer_id)))
        .values(left_at=moment.as_of))
    return result.rowcount or 0


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), BATCH):
        yield items[start:start + BATCH]


def _aware(value: Any) -> datetime:
    moment = at_utc(value)
    assert moment is not None
    return moment
