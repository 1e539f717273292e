"""Ingest what the daemon's API receives: a few rows, one small transaction, the same checks as sync.

`retain sync` is built for millions of rows (batches, commits every 100,000, everyone's RFM
re-ranked at the end); a request carries a handful, and many arrive per second while the
daemon also dispatches. So this module writes one request in ONE short transaction, through the
very writers a sync batch uses (engine/sync/ingest.py `write_customers`, `write_events`), whose
rows are checked by engine/sync/rows.py, the one definition of a valid row. Differences from a
file sync, and why:

- An event for an unknown customer creates the customer (Segment's `track` may come before
  `identify`); a file sync rejects it, since there a missing customer is usually a wrong file.
- Only the touched customers' facts are refreshed, in the same transaction; the RFM scores,
  which rank everyone (seconds at a million customers), are left to the daemon's schedule.
- On SQLite the transaction takes the write lock first (`BEGIN IMMEDIATE`): a plain `BEGIN`
  that reads before writing fails at once when another writer committed in between.
- A unique-key race with another replica (the same new customer from two requests) retries the
  whole transaction, which then sees the other's row.

Duplicate event ids behave as in sync: the same id with the same contents is kept once (and
counted accepted), with other contents it is rejected with the sync's conflict reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.clock import utcnow
from engine.store.tables import customers, events
from engine.store.txn import writing
from engine.sync.facts import refresh_facts
from engine.sync.ingest import add_customers, write_customers, write_events
from engine.sync.report import RowError, SyncReport
from engine.sync.rows import RowProblem, event_values
from engine.sync.segment import Rejected

RETRIES = 3
SOURCE = "api"
_NEXT_PROBLEM = re.compile(r"; (?=missing |bad |unknown time zone|\S+ (?:amount|score) )")
"""Where rows.py joined two problems: a type rule's own message may hold `; ` too."""
_FIELD = re.compile(r"(?:missing|bad) (\w+)|\S+ (amount|score) |unknown time zone|conflict:")


@dataclass
class Ingested:
    """What one request did: how many items were kept, which were not and why, and whose
    data changed (the loop evaluates event-triggered playbooks for exactly these customers)."""

    accepted: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    customer_ids: set[str] = field(default_factory=set)
    events_inserted: int = 0
    duplicates: int = 0
    customers_created: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The response body's view: counts and the rejected items by index."""
        return {"accepted": self.accepted, "duplicates": self.duplicates,
                "rejected": [{"index": item.index, "field": item.field, "message": item.message}
                             for item in sorted(self.rejected, key=lambda item: item.index)]}


Items = list[tuple[int, Any]]
"""(index in the request, item as received): items need not be objects; those are rejected."""


def ingest_items(engine: sa.Engine, customers: Items, events: Items,
                 now: datetime | None = None) -> Ingested:
    """Write these customer and event items in one transaction; every item kept or rejected.

    Customers are written before events, so an identify and a track for one new person in
    the same batch give the customer the identify's columns.
    """
    moment = now or utcnow()
    not_objects: list[Rejected] = []
    customer_rows = _objects(customers, not_objects)
    event_rows = _objects(events, not_objects)
    for attempt in range(RETRIES):
        result = Ingested(rejected=list(not_objects))
        try:
            with writing(engine) as connection:  # SQLite: queued with the daemon's writers
                _write(connection, customer_rows, event_rows, result, moment)
        except sa.exc.IntegrityError:
            if attempt == RETRIES - 1:
                raise
            continue
        return result
    raise AssertionError("unreachable")  # pragma: no cover


def _write(connection: sa.Connection, customer_rows: list[tuple[int, dict[str, Any]]],
           event_rows: list[tuple[int, dict[str, Any]]], result: Ingested,
           now: datetime) -> None:
    if customer_rows:
        report = SyncReport("customers", SOURCE)
        result.customer_ids |= write_customers(connection, customer_rows, report, now)
        result.accepted += report.inserted + report.updated + report.unchanged
        _collect(report, result)
    if event_rows:
        created = add_customers(connection, _event_customers(event_rows), now)
        report = SyncReport("events", SOURCE)
        touched = write_events(connection, event_rows, report)
        unused = _unused(connection, created)
        result.customers_created = len(created - unused)
        result.customer_ids |= touched - unused
        result.accepted += report.inserted + report.duplicates
        result.events_inserted, result.duplicates = report.inserted, report.duplicates
        _collect(report, result)
    refresh_facts(connection, result.customer_ids)


def _unused(connection: sa.Connection, created: set[str]) -> set[str]:
    """The customers just created for events of which none was kept (a conflict rejects a valid
    row): deleted again, so that a rejected item leaves nothing behind."""
    if not created:
        return set()
    c = customers.c
    unused = set(connection.execute(sa.select(c.customer_id).where(
        c.customer_id.in_(sorted(created)),
        ~sa.exists().where(events.c.customer_id == c.customer_id))).scalars())
    if unused:
        connection.execute(sa.delete(customers).where(c.customer_id.in_(sorted(unused))))
    return unused


def _objects(items: Items, rejected: list[Rejected]) -> list[tuple[int, dict[str, Any]]]:
    """The items that are JSON objects, as sync rows (line = index + 1: sync counts from 1)."""
    rows = []
    for index, item in items:
        if isinstance(item, dict):
            rows.append((index + 1, item))
        else:
            rejected.append(Rejected(index, None, "expected a JSON object"))
    return rows


def _event_customers(rows: list[tuple[int, dict[str, Any]]]) -> set[str]:
    """The customer ids of the valid event rows (an invalid row creates no customer)."""
    ids = set()
    for _, row in rows:
        try:
            ids.add(event_values(row)[1])
        except RowProblem:
            continue
    return ids


def _collect(report: SyncReport, result: Ingested) -> None:
    """The report's rejected rows and conflicts as (index, field, message), one per problem."""
    for error in report.conflicts:
        result.rejected.append(Rejected(error.line - 1, "event_id", error.reason))
    for error in report.rejected:
        result.rejected.extend(_problems(error))


def _problems(error: RowError) -> Iterator[Rejected]:
    for message in _NEXT_PROBLEM.split(error.reason):
        yield Rejected(error.line - 1, problem_field(message), message)


def problem_field(message: str) -> str | None:
    """The field a rows.py problem is about (`missing event_id` -> event_id), if it names one."""
    found = _FIELD.match(message)
    if found is None:
        return None
    if message.startswith("unknown time zone"):
        return "timezone"
    if message.startswith("conflict:"):
        return "event_id"
    return found.group(1) or found.group(2)

