"""Derived facts on customers (DESIGN 2.1, 2.2), recomputed from events with set-based SQL.

Evaluation compiles every playbook to one SQL query over `customers`, so the facts it selects on
(`last_active_at`, `total_spent`, ...) are kept as columns, refreshed by sync for the customers it
touched. The refresh is a handful of UPDATE statements over an aggregate of their events, never a
Python loop per customer: the database does the scanning, on SQLite and PostgreSQL alike.

Definitions, in one place:

- `last_active_at`: the latest event of an activity type (every type but ENGINE_EVENT_TYPES), or
  `created_at` when there is none.
- `first_purchase_at`, `last_purchase_at`, `purchase_count`, `total_spent`: over `purchase`
  events; `total_spent` sums their `amount` (returns are not subtracted, a missing amount is 0).
- `last_feedback_at` / `last_feedback_score`: the latest `feedback` event and its `score` (None
  when that event carried none). Ties on time go to the event synced last.
- `points_balance`: the sum of the customer's `points_ledger` amounts.
- `last_emailed_at`: the latest `email_sent` event.
- `created_at`, when the customer file gave none: the time of the first event, else the time the
  customer was first synced (sync stores `first_synced_at` there until events arrive). A created
  time later than the customer's first event is moved back to it: nobody acts before existing.

`rfm_score` and `rfm_segment` are not refreshed here (they rank customers against each other).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import sqlalchemy as sa

from engine.tables import Customer, Event, PointsEntry

ENGINE_EVENT_TYPES: frozenset[str] = frozenset(
    {"email_sent", "task_created", "points_awarded", "webhook_sent"}
)
"""Event types the engine records about its own actions: they never count as customer activity."""

PURCHASE = "purchase"
FEEDBACK = "feedback"
EMAIL_SENT = "email_sent"
SMALL_SET = 500  # up to this many ids are bound as parameters; more go through a temporary table

customers: sa.Table = Customer.__table__  # type: ignore[assignment]
events: sa.Table = Event.__table__  # type: ignore[assignment]
points: sa.Table = PointsEntry.__table__  # type: ignore[assignment]
_names = itertools.count(1)


class CustomerIdSet:
    """A temporary table of customer ids on one connection: the scope of a fact refresh.

    A sync can touch a million customers; keeping their ids in the database instead of a Python
    set bounds memory, survives the sync's batch commits, and lets the refresh join on them.
    """

    def __init__(self, connection: sa.Connection, name: str | None = None) -> None:
        self.connection = connection
        self.name = name or f"retain_ids_{next(_names)}"
        self.table = sa.table(self.name, sa.column("customer_id", sa.String))
        connection.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.name} (customer_id VARCHAR PRIMARY KEY)"
        )
        self.clear()  # a table left on a pooled connection by a failed run starts empty

    def add(self, ids: Iterable[str]) -> None:
        """Add ids; ones already present are ignored."""
        batch = list(ids)
        if not batch:
            return
        if self.connection.dialect.name == "postgresql":
            self.connection.exec_driver_sql(
                f"INSERT INTO {self.name} (customer_id) SELECT unnest(%s::text[])"
                " ON CONFLICT DO NOTHING", (batch,))
            # Temporary tables get no statistics otherwise; without them the planner scans
            # whole tables instead of looking these ids up.
            self.connection.exec_driver_sql(f"ANALYZE {self.name}")
        else:  # one row per id, through the driver: SQLAlchemy's per-row work would dominate
            self.connection.exec_driver_sql(
                f"INSERT INTO {self.name} (customer_id) VALUES (?) ON CONFLICT DO NOTHING",
                [(customer_id,) for customer_id in batch])

    def select(self) -> sa.Select[Any]:
        """The ids, as a subquery for `IN`."""
        return sa.select(self.table.c.customer_id)

    def clear(self) -> None:
        """Forget every id (the table stays for reuse)."""
        self.connection.exec_driver_sql(f"DELETE FROM {self.name}")

    def drop(self) -> None:
        """Remove the table from the connection's session."""
        self.connection.exec_driver_sql(f"DROP TABLE IF EXISTS {self.name}")

    def __enter__(self) -> CustomerIdSet:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:  # after an error the transaction may be unusable; the next user clears
            self.drop()


def refresh_facts(connection: sa.Connection,
                  customer_ids: set[str] | CustomerIdSet | None = None) -> None:
    """Recompute the derived facts of these customers (None: all) in the caller's transaction."""
    if customer_ids is None:
        _refresh(connection, None)
    elif isinstance(customer_ids, CustomerIdSet):
        _refresh(connection, customer_ids.select())
    elif len(customer_ids) <= SMALL_SET:
        if customer_ids:
            _refresh(connection, sorted(customer_ids))
    else:
        with CustomerIdSet(connection) as scope:
            scope.add(customer_ids)
            _refresh(connection, scope.select())


Scope = sa.Select[Any] | list[str] | None


def _in_scope(column: sa.ColumnElement[Any], scope: Scope) -> sa.ColumnElement[bool]:
    return sa.true() if scope is None else column.in_(scope)


def _aggregate(scope: Scope) -> sa.Subquery:
    """One row per customer in scope that has events: the facts a GROUP BY can give."""
    e = events.c
    activity = e.type.not_in(sorted(ENGINE_EVENT_TYPES))
    purchase = e.type == PURCHASE
    return (
        sa.select(
            e.customer_id,
            sa.func.min(e.occurred_at).label("first_event"),
            sa.func.max(sa.case((activity, e.occurred_at))).label("last_activity"),
            sa.func.min(sa.case((purchase, e.occurred_at))).label("first_purchase"),
            sa.func.max(sa.case((purchase, e.occurred_at))).label("last_purchase"),
            sa.func.count(sa.case((purchase, 1))).label("purchases"),
            sa.func.coalesce(sa.func.sum(sa.case((purchase, e.amount))), 0.0).label("spent"),
            sa.func.max(sa.case((e.type == FEEDBACK, e.occurred_at))).label("last_feedback"),
            sa.func.max(sa.case((e.type == EMAIL_SENT, e.occurred_at))).label("last_emailed"),
        )
        .where(_in_scope(e.customer_id, scope))
        .group_by(e.customer_id)
        .subquery("agg")
    )


def _points_balance() -> sa.ColumnElement[Any]:
    total = (sa.select(sa.func.sum(points.c.amount))
             .where(points.c.customer_id == customers.c.customer_id).scalar_subquery())
    return sa.func.coalesce(total, 0)


def _last_feedback_score() -> sa.ColumnElement[Any]:
    latest = events.alias("feedback")
    return (sa.select(latest.c.score)
            .where(latest.c.customer_id == customers.c.customer_id, latest.c.type == FEEDBACK)
            .order_by(latest.c.occurred_at.desc(), latest.c.id.desc())
            .limit(1).scalar_subquery())


def _created_at(first_event: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """created_at as the module docstring defines it, given the customer's first event time."""
    c = customers.c
    return sa.case(
        (c.created_at.is_(None), sa.func.coalesce(first_event, c.first_synced_at)),
        (c.created_at == c.first_synced_at, first_event),
        (first_event < c.created_at, first_event),
        else_=c.created_at,
    )


def _refresh(connection: sa.Connection, scope: Scope) -> None:
    c = customers.c
    agg = _aggregate(scope)
    created = _created_at(agg.c.first_event)
    connection.execute(
        sa.update(customers).where(c.customer_id == agg.c.customer_id).values(
            created_at=created,
            last_active_at=sa.func.coalesce(agg.c.last_activity, created),
            first_purchase_at=agg.c.first_purchase, last_purchase_at=agg.c.last_purchase,
            purchase_count=agg.c.purchases, total_spent=agg.c.spent,
            last_feedback_at=agg.c.last_feedback, last_feedback_score=_last_feedback_score(),
            last_emailed_at=agg.c.last_emailed, points_balance=_points_balance()))
    created = sa.func.coalesce(c.created_at, c.first_synced_at)
    no_events = ~sa.exists().where(events.c.customer_id == c.customer_id)
    connection.execute(
        sa.update(customers).where(_in_scope(c.customer_id, scope), no_events).values(
            created_at=created, last_active_at=created, first_purchase_at=None,
            last_purchase_at=None, purchase_count=0, total_spent=0.0, last_feedback_at=None,
            last_feedback_score=None, last_emailed_at=None, points_balance=_points_balance()))
