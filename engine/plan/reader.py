"""What the planner needs, read in batches: counts, candidates, customers, events, suppressions,
and the outbox rows that already fill each customer's caps.

Only reads. Every read is a batch of at most BATCH ids (an `IN` list every database accepts), so
planning N enrollments costs N / BATCH round trips of each kind and memory stays flat in N. The
candidates come from the one statement per playbook (engine/query/evaluate.py), streamed; the
count of who enters is a `COUNT(*)` over that statement, so nothing streams just to be counted.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from engine.format.compile import DERIVED_FACTS, CompileContext, historical_fact
from engine.format.fields import CUSTOMER_FIELDS
from engine.plan.delivery import Booking
from engine.query.evaluate import Candidate
from engine.store.facts import customers, events, existed_at
from engine.store.status import COUNTS_AGAINST_CAP, SENT
from engine.store.tables import actions, suppressions

BATCH = 500


@dataclass(frozen=True)
class Records:
    """What one batch of candidates is planned from: plain dicts, nothing lazy."""

    customers: dict[str, dict[str, Any]]  # by customer_id
    events: dict[int, dict[str, Any]]  # by events.id (Candidate.event_ref)
    suppressions: dict[str, str]  # lower-cased address -> reason


def total_customers(connection: sa.Connection, as_of: datetime) -> int:
    """Customers that existed at as-of (what `limits.max_percent` is a share of)."""
    return connection.execute(sa.select(sa.func.count()).where(existed_at(as_of))).scalar_one()


def candidate_batches(connection: sa.Connection, query: sa.Select[Any],
                      limit: int | None = None) -> Iterator[list[Candidate]]:
    """The statement's rows (the first `limit`, None: all) as lists of at most BATCH, streamed,
    in (customer_id, occurrence) order: the first N shown and the `--json` order are the same
    whatever plan the database picks (ordering here, not in the statement, leaves `COUNT(*)` and
    the holdout pass unsorted).

    The result stays open between batches while the planner's reads run on the same connection
    (a server-side cursor on PostgreSQL, a stepping statement on SQLite).
    """
    for rows in _stream(connection, query, limit):
        yield [Candidate(*row) for row in rows]


def candidate_records(connection: sa.Connection, ctx: CompileContext, query: sa.Select[Any],
                      limit: int | None = None
                      ) -> Iterator[tuple[list[Candidate], dict[str, dict[str, Any]]]]:
    """`candidate_batches` with each candidate's customer record (as `customer_records` reads
    it) read by the same statement: the candidates come from the customers table already, so a
    second query per batch for their rows only added round trips and an `IN` list."""
    columns = record_columns(ctx)
    wide = query.add_columns(*(column.label(f"record_{i}") for i, column in enumerate(columns)))
    names = [*CUSTOMER_FIELDS, "attributes"]
    for rows in _stream(connection, wide, limit):
        people = {}
        for row in rows:
            if row[0] not in people:
                people[row[0]] = _record(dict(zip(names, row[3:], strict=True)))
        yield [Candidate(*row[:3]) for row in rows], people


def _stream(connection: sa.Connection, query: sa.Select[Any],
            limit: int | None) -> Iterator[Sequence[sa.Row[Any]]]:
    """The rows of `query` in (customer_id, occurrence) order, BATCH at a time, streamed."""
    query = query.order_by(query.selected_columns.customer_id,
                           query.selected_columns.occurrence)
    if limit is not None:
        query = query.limit(limit)
    result = connection.execution_options(stream_results=True, yield_per=BATCH).execute(query)
    yield from result.partitions()


def records(connection: sa.Connection, ctx: CompileContext, batch: list[Candidate],
            people: dict[str, dict[str, Any]] | None = None) -> Records:
    """Customers (unless `people` has them already), triggering events and suppressions of one
    batch, a query of each."""
    if people is None:
        people = customer_records(connection, ctx, [c.customer_id for c in batch])
    found = event_records(connection, [c.event_ref for c in batch if c.event_ref is not None])
    blocked = suppressed(connection, [p["email"] for p in people.values() if p["email"]])
    return Records(people, found, blocked)


def record_columns(ctx: CompileContext) -> list[sa.ColumnElement[Any]]:
    """A customer record's columns, CUSTOMER_FIELDS then attributes: facts as of ctx."""
    return [*(historical_fact(ctx, name).label(name)
              if ctx.historical and name in DERIVED_FACTS else customers.c[name]
              for name in CUSTOMER_FIELDS), customers.c.attributes]


def _record(record: dict[str, Any]) -> dict[str, Any]:
    # Sums of float amounts carry binary noise (49.989999999999995); money reads in cents.
    record["total_spent"] = round(record["total_spent"] or 0.0, 2)
    return record


def among(connection: sa.Connection, column: sa.ColumnElement[str],
          values: list[str]) -> sa.ColumnElement[bool]:
    """`column IN (values)`; on PostgreSQL `= ANY(array)`, one parameter that the server plans
    at once, where a list of 500 parameters took it milliseconds to parse and plan per batch."""
    if connection.dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(None, values, type_=ARRAY(sa.String())))
    return column.in_(values)


def customer_records(connection: sa.Connection, ctx: CompileContext,
                     ids: list[str]) -> dict[str, dict[str, Any]]:
    """Customers by id as templates and explain see them: fields, facts as of ctx, attributes."""
    columns = record_columns(ctx)
    found = {}
    for start in range(0, len(ids), BATCH):
        query = sa.select(*columns).where(
            among(connection, customers.c.customer_id, ids[start:start + BATCH]))
        for row in connection.execute(query).mappings():
            found[row["customer_id"]] = _record(dict(row))
    return found


def event_records(connection: sa.Connection, refs: list[int]) -> dict[int, dict[str, Any]]:
    """Triggering events by row id; `amount` and `score` also appear among the properties."""
    found = {}
    for start in range(0, len(refs), BATCH):
        query = sa.select(events).where(events.c.id.in_(refs[start:start + BATCH]))
        for row in connection.execute(query).mappings():
            properties = dict(row["properties"] or {})
            typed = {name: _number(row[name]) for name in ("amount", "score")}
            properties.update({k: v for k, v in typed.items() if v is not None})
            found[row["id"]] = {"event_id": row["event_id"], "customer_id": row["customer_id"],
                                "type": row["type"], "occurred_at": row["occurred_at"],
                                **typed, "properties": properties}
    return found


def _number(value: float | None) -> float | int | None:
    """A typed number as the source wrote it: a score of 6 reads `6`, not `6.0`."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def suppressed(connection: sa.Connection, emails: list[str]) -> dict[str, str]:
    """Lower-cased address -> reason, for the suppression rows of `emails` (any letter case).

    Rows are stored lower-cased; the addresses as given are asked too, so a row written in
    another case by hand is still found (through the primary key index either way).
    """
    found: dict[str, str] = {}
    wanted = sorted({email.strip().lower() for email in emails} | set(emails))
    for start in range(0, len(wanted), BATCH):
        query = sa.select(suppressions.c.email, suppressions.c.reason).where(
            among(connection, suppressions.c.email, wanted[start:start + BATCH]))
        found.update((email.lower(), reason) for email, reason in connection.execute(query))
    return found


def bookings(connection: sa.Connection, ids: list[str], channels: Collection[str],
             since: datetime, *, as_of: datetime) -> dict[str, dict[str, list[Booking]]]:
    """customer_id -> channel -> the outbox rows that fill a cap: of those channels, sent or on
    their way (`COUNTS_AGAINST_CAP`), at a time after `since` (as-of less the longest window).

    A sent row's time is `sent_at`; a row not sent yet goes at its `next_attempt_at` (when it
    is due, deferred or retried), or, when that has passed (no dispatch ran since), at the next
    dispatch with whatever this plan adds: it counts at `as_of` then, however long ago it was
    due. Business time, as the cap windows are. Read through the (customer_id, connector)
    index, a batch of ids at a time; rows due later are kept too (delivery.py says why).
    """
    found: dict[str, dict[str, list[Booking]]] = {}
    if not channels or not ids:
        return found
    for start in range(0, len(ids), BATCH):
        query = sa.select(actions.c.customer_id, actions.c.connector, actions.c.status,
                          actions.c.sent_at, actions.c.next_attempt_at, actions.c.playbook_id,
                          actions.c.idempotency_key).where(
            actions.c.customer_id.in_(ids[start:start + BATCH]),
            actions.c.connector.in_(sorted(channels)),
            actions.c.status.in_(COUNTS_AGAINST_CAP),
            sa.or_(actions.c.status != SENT, actions.c.sent_at > since,
                   actions.c.next_attempt_at > since))
        for row in connection.execute(query):
            if row.status == SENT:
                at = row.sent_at or row.next_attempt_at
            else:
                at = max(row.next_attempt_at or as_of, as_of)
            if at is None or at <= since:
                continue
            found.setdefault(row.customer_id, {}).setdefault(row.connector, []).append(
                Booking(at, row.playbook_id, row.idempotency_key))
    return found
