"""The 360° view of one customer (`retain customer show`): profile, facts, timeline, engine work.

A support or retention person asks "what do we know about this customer and what have we done to
them?"; the answer is spread over every table, so it is gathered here, read-only, into one plain
JSON-able dict that the CLI prints as tables or as `--json`. Each section is one indexed query by
customer id; the timeline is the newest `events_limit` events plus a separate count, so a customer
with a million events costs no more memory than one with fifty. On PostgreSQL the queries share
one REPEATABLE READ snapshot (SQLite's read transaction already is one), so the count, the shown
events and the facts agree even while a sync is writing.

Times come out as engine/clock.py `iso` spells them (`2024-04-02T08:15:00Z`, whole seconds, UTC),
dates as `YYYY-MM-DD`, money (`total_spent`, event amounts) rounded to the cent: a float sum of
amounts carries binary noise (155.67999999999998) that nobody paid.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from engine.clock import aware_utc, iso
from engine.store.dialect import json_reading
from engine.store.facts import customers, events, points
from engine.store.tables import (
    actions,
    enrollments,
    payloads,
    suppressions,
    tasks,
)

DEFAULT_EVENTS = 50

PROFILE_FIELDS = ("customer_id", "email", "name", "created_at", "birthday", "timezone",
                  "country", "segment", "tags", "file_tags", "tags_added", "tags_removed",
                  "attributes", "first_synced_at")
"""A customer's own columns, as synced from customer files (plus when sync first saw them).
`tags` is what conditions see: the file's tags (`file_tags`) plus those playbooks added, less
those they removed (engine/outbox/tags.py)."""

FACT_FIELDS = ("last_active_at", "first_purchase_at", "last_purchase_at", "purchase_count",
               "total_spent", "last_feedback_score", "last_feedback_at", "points_balance",
               "last_emailed_at", "rfm_score", "rfm_segment")
"""The derived facts that engine/store/facts.py keeps on the customer row."""

MONEY_FIELDS = frozenset({"total_spent", "amount"})
"""Values that are money; points `amount`s are whole numbers, so rounding leaves them as they are."""

SUMMARY_KEYS = ("subject", "title")
"""Payload keys that say in a few words what an action is (an email's subject, a task's title)."""
TAG_CONNECTOR = "tag"  # its payload is two short lists, summarised as `+added -removed`


Row = dict[str, Any]


def customer_view(engine: sa.Engine, customer_id: str,
                  events_limit: int = DEFAULT_EVENTS) -> Row | None:
    """Everything known about one customer as plain values, or None when there is no such id."""
    if events_limit < 0:
        raise ValueError(f"events_limit must be 0 or more, not {events_limit}")
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execution_options(isolation_level="REPEATABLE READ")
        row = connection.execute(
            sa.select(customers).where(customers.c.customer_id == customer_id)
        ).mappings().first()
        if row is None:
            return None
        return {
            "customer": {name: plain(row[name]) for name in PROFILE_FIELDS},
            "facts": {name: plain(row[name], money=name in MONEY_FIELDS)
                      for name in FACT_FIELDS},
            "events": _events(connection, customer_id, events_limit),
            "enrollments": _enrollments(connection, customer_id),
            "actions": _actions(connection, customer_id),
            "tasks": _tasks(connection, customer_id),
            "points": _points(connection, customer_id),
            "suppressed": _suppression(connection, row["email"]),
        }


def plain(value: Any, *, money: bool = False) -> Any:
    """A value JSON can carry as is: times and dates become ISO 8601 text, money is in cents."""
    if isinstance(value, datetime):
        return iso(aware_utc(value))
    if isinstance(value, date):
        return value.isoformat()
    if money and isinstance(value, float):
        return round(value, 2)
    return value


def _rows(connection: sa.Connection, statement: sa.Select[Any]) -> list[Row]:
    return [{key: plain(value, money=key in MONEY_FIELDS) for key, value in row.items()}
            for row in connection.execute(statement).mappings()]


def _events(connection: sa.Connection, customer_id: str, limit: int) -> Row:
    """The newest `limit` events (ties: the one synced last first) and how many there are."""
    total = connection.execute(
        sa.select(sa.func.count()).select_from(events).where(events.c.customer_id == customer_id)
    ).scalar_one()
    shown = _rows(connection, sa.select(
        events.c.event_id, events.c.type, events.c.occurred_at, events.c.amount,
        events.c.score, events.c.properties,
    ).where(events.c.customer_id == customer_id)
        .order_by(events.c.occurred_at.desc(), events.c.id.desc()).limit(limit)) if limit else []
    return {"total": total, "shown": shown}


def _enrollments(connection: sa.Connection, customer_id: str) -> list[Row]:
    """Every playbook passage of the customer, newest first."""
    e = enrollments.c
    return _rows(connection, sa.select(
        e.playbook_id, e.version, e.occurrence_key, e.status, e.step, e.holdout, e.entered_at,
        e.wake_at, e.ended_at, e.end_reason,
    ).where(e.customer_id == customer_id).order_by(e.entered_at.desc(), e.id.desc()))


def _actions(connection: sa.Connection, customer_id: str) -> list[Row]:
    """The customer's outbox rows, newest first, with their playbook and a one-line summary.

    Only the summary is read out of the payload: a rendered email body can be large, and the
    view is about what happened, not the full message.
    """
    a, p = actions.c, payloads.c
    summary = sa.func.coalesce(*(json_reading(p.payload, key, "text") for key in SUMMARY_KEYS))
    rows = _rows(connection, sa.select(
        enrollments.c.playbook_id, a.step, a.connector, a.status, a.reason, a.attempts,
        summary.label("summary"), a.created_at, a.next_attempt_at, a.last_error,
        sa.case((a.connector == TAG_CONNECTOR, p.payload)).label("tag_payload"),
    ).select_from(actions.outerjoin(enrollments, a.enrollment_id == enrollments.c.id)
                  .outerjoin(payloads, p.action_id == a.id))
        .where(a.customer_id == customer_id).order_by(a.created_at.desc(), a.id.desc()))
    for row in rows:
        tags = row.pop("tag_payload")
        if isinstance(tags, dict) and row["summary"] is None:
            row["summary"] = tag_changes(tags.get("add") or [], tags.get("remove") or [])
    return rows


def tag_changes(add: list[str], remove: list[str]) -> str | None:
    """`+low-activity -active`: tags added and removed, in one line; None for no change."""
    return " ".join([*(f"+{tag}" for tag in add), *(f"-{tag}" for tag in remove)]) or None


def _tasks(connection: sa.Connection, customer_id: str) -> list[Row]:
    """Follow-up tasks created for the customer, newest first."""
    t = tasks.c
    return _rows(connection, sa.select(
        t.title, t.assignee, t.note, t.due_at, t.status, t.created_at,
    ).where(t.customer_id == customer_id).order_by(t.created_at.desc(), t.id.desc()))


def _points(connection: sa.Connection, customer_id: str) -> Row:
    """The loyalty ledger, newest first, and its sum: the balance as the ledger has it now.

    `facts.points_balance` is the same sum as of the customer's last fact refresh; the two differ
    only when points were awarded since, which this view makes visible instead of hiding.
    """
    p = points.c
    entries = _rows(connection, sa.select(p.amount, p.reason, p.created_at)
                    .where(p.customer_id == customer_id)
                    .order_by(p.created_at.desc(), p.id.desc()))
    return {"balance": sum(entry["amount"] for entry in entries), "entries": entries}


def _suppression(connection: sa.Connection, email: str | None) -> Row | None:
    """Why the customer's address gets no email, if it gets none.

    Suppressions are stored lower-cased, so the customer's address is lower-cased to match
    whatever case the customer file used; the lookup stays on the primary key.
    """
    if not email:
        return None
    s = suppressions.c
    found = _rows(connection, sa.select(s.email, s.reason, s.created_at)
                  .where(s.email == email.strip().lower()))
    return found[0] if found else None
