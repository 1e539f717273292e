"""The counting SQL of `retain report playbooks`: enrollments, goal conversions and actions.

engine/reports/playbooks.py holds the definitions and the statistics; this module only counts,
in the database, per playbook and group. One aggregate of enrollments GROUP BY playbook and
holdout, with a correlated EXISTS per enrollment for the goal event (the goal's event type and
window come from a CASE over the playbook id and the version each enrollment entered with, so
all playbooks and versions are one query), and one of actions GROUP BY playbook, connector and
status. Works on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.format.playbook import Goal
from engine.store.dialect import PerDialect
from engine.store.facts import events
from engine.store.tables import UTCDateTime, actions, enrollments


def in_window(start: datetime | None, end: datetime | None) -> sa.ColumnElement[bool]:
    entered_at = enrollments.c.entered_at
    condition: sa.ColumnElement[bool] = sa.true()
    if start is not None:
        condition &= entered_at >= start
    if end is not None:
        condition &= entered_at < end
    return condition


def entered_counts(connection: sa.Connection, start: datetime | None,
             end: datetime | None) -> dict[tuple[str, bool], int]:
    """Enrollments per (playbook, holdout), goal or not."""
    e = enrollments.c
    rows = connection.execute(sa.select(e.playbook_id, e.holdout, sa.func.count())
                              .where(in_window(start, end)).group_by(e.playbook_id, e.holdout))
    counts: dict[tuple[str, bool], int] = {}
    for playbook_id, holdout, count in rows:
        key = (playbook_id, bool(holdout))
        counts[key] = counts.get(key, 0) + count
    return counts


def _goal_end(seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """`entered_at + seconds` as each database compares times.

    SQLite stores `YYYY-MM-DD HH:MM:SS.ffffff` text and compares it as text, so the sum must keep
    that exact shape: `strftime` adds the whole seconds (goal windows are whole minutes) and the
    original fraction is appended unchanged. PostgreSQL adds an interval to the timestamptz.
    """
    entered_at = enrollments.c.entered_at
    sqlite = sa.func.strftime("%Y-%m-%d %H:%M:%S", entered_at,
                              sa.literal("+").op("||")(seconds).op("||")(sa.literal(" seconds"))
                              ).op("||")(sa.func.substr(entered_at, 20))
    postgresql = entered_at.op("+")(seconds.op("*")(sa.literal_column("INTERVAL '1 second'")))
    return PerDialect(sqlite, postgresql, UTCDateTime())


def version_pairs(connection: sa.Connection, start: datetime | None,
                  end: datetime | None) -> list[tuple[str, str]]:
    """The (playbook, version) pairs the window's enrollments entered with."""
    e = enrollments.c
    return [(pid, version) for pid, version in connection.execute(
        sa.select(e.playbook_id, e.version).where(in_window(start, end)).distinct()
        .order_by(e.playbook_id, e.version))]


def measured_counts(connection: sa.Connection, start: datetime | None, end: datetime | None,
                    goals: dict[tuple[str, str], Goal], cutoff: datetime
                    ) -> dict[tuple[str, bool], tuple[int, int, int]]:
    """(judged, closed, converted) per (playbook, holdout): judged are the enrollments whose
    version has a goal (`goals`, by (playbook, version)), closed those whose goal window ended,
    converted those with a goal event inside it. One aggregate, with an EXISTS per enrollment."""
    if not goals:
        return {}
    e, ev = enrollments.c, events.c

    def per_version(value: Any, kind: sa.types.TypeEngine[Any]) -> sa.ColumnElement[Any]:
        return sa.case(*(((e.playbook_id == pid) & (e.version == version),
                          sa.literal(value(goal), kind))
                         for (pid, version), goal in goals.items()), else_=sa.null())

    goal_type = per_version(lambda g: g.event, sa.String())
    seconds = per_version(lambda g: int(g.within / timedelta(seconds=1)), sa.Integer())
    goal_end = _goal_end(seconds)
    closed = goal_end <= sa.bindparam("cutoff", cutoff, type_=UTCDateTime())
    converted = (sa.select(ev.id).where(ev.customer_id == e.customer_id, ev.type == goal_type,
                                        ev.occurred_at > e.entered_at, ev.occurred_at <= goal_end)
                 .exists())
    rows = connection.execute(
        sa.select(e.playbook_id, e.holdout, sa.func.count(), sa.func.count(sa.case((closed, 1))),
                  sa.func.count(sa.case((closed & converted, 1))))
        .where(in_window(start, end), goal_type.is_not(None),
               e.playbook_id.in_(sorted({pid for pid, _v in goals})))
        .group_by(e.playbook_id, e.holdout))
    counts: dict[tuple[str, bool], tuple[int, int, int]] = {}
    for playbook_id, holdout, n_judged, n_closed, n_converted in rows:
        key = (playbook_id, bool(holdout))
        before = counts.get(key, (0, 0, 0))
        counts[key] = (before[0] + n_judged, before[1] + n_closed, before[2] + n_converted)
    return counts


def action_counts(connection: sa.Connection, start: datetime | None,
             end: datetime | None) -> dict[str, dict[str, dict[str, int]]]:
    """{playbook: {connector: {status: count}}} over the actions of the window's enrollments."""
    e, a = enrollments.c, actions.c
    rows = connection.execute(
        sa.select(e.playbook_id, a.connector, a.status, sa.func.count())
        .select_from(actions.join(enrollments, a.enrollment_id == e.id))
        .where(in_window(start, end))
        .group_by(e.playbook_id, a.connector, a.status))
    result: dict[str, dict[str, dict[str, int]]] = {}
    for playbook_id, connector, status, count in rows:
        result.setdefault(playbook_id, {}).setdefault(connector, {})[status] = count
    return result
