"""Keeping the derived facts on customers up to date, with set-based SQL (the writes).

What each fact means is defined once, in engine/store/facts.py; this module applies those
definitions to the customers a sync touched: a handful of UPDATE statements over an aggregate of
their events, never a Python loop per customer, on SQLite and PostgreSQL alike. RFM ranks
customers against each other: `refresh_rfm` (engine/sync/rfm.py, run after the refresh of the
touched ones) re-scores the customers whose R, F or M moved and those they pushed across a
score boundary, or everyone when there is no ranking to start from.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import sqlalchemy as sa

from engine.store.facts import (
    EVENT_FACTS,
    created_at,
    customers,
    events,
    last_feedback_score,
    points_balance,
)
from engine.sync.rfm import refresh_rfm, refresh_rfm_in_steps

__all__ = ["SMALL_SET", "CustomerIdSet", "refresh_facts", "refresh_rfm", "refresh_rfm_in_steps"]

SMALL_SET = 500  # up to this many ids are bound as parameters; more go through a temporary table

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
            ids = {"scope_ids": sorted(customer_ids)}
            for statement in _by_ids():
                connection.execute(statement, ids)
    else:
        with CustomerIdSet(connection) as scope:
            scope.add(customer_ids)
            _refresh(connection, scope.select())


Scope = sa.Select[Any] | list[str] | sa.BindParameter[Any] | None


@functools.cache
def _by_ids() -> tuple[sa.Update, sa.Update]:
    """`_refresh`'s two statements for a list of ids, built once with the ids as an expanding
    parameter. The daemon's API refreshes one or a few customers per request, hundreds of
    times a second, and building these statements (every fact's expression, then their cache
    keys) took about 4 ms of a 6 ms request; the statements and what they do are the same."""
    return _statements(sa.bindparam("scope_ids", expanding=True))


def _in_scope(column: sa.ColumnElement[Any], scope: Scope) -> sa.ColumnElement[bool]:
    return sa.true() if scope is None else column.in_(scope)


def _aggregate(scope: Scope) -> sa.Subquery:
    """One row per customer in scope that has events: the facts a GROUP BY can give."""
    e = events.c
    return (
        sa.select(e.customer_id, sa.func.min(e.occurred_at).label("first_event"),
                  *[fact.grouped(events).label(name) for name, fact in EVENT_FACTS.items()])
        .where(_in_scope(e.customer_id, scope))
        .group_by(e.customer_id)
        .subquery("agg")
    )


def _refresh(connection: sa.Connection, scope: Scope) -> None:
    for statement in _statements(scope):
        connection.execute(statement)


def _statements(scope: Scope) -> tuple[sa.Update, sa.Update]:
    """The facts from the events of the customers in scope; then the defaults of those in
    scope who have no events."""
    c = customers.c
    agg = _aggregate(scope)
    created = created_at(agg.c.first_event)
    kept = {name: agg.c[name] for name in EVENT_FACTS}
    kept["last_active_at"] = sa.func.coalesce(agg.c.last_active_at, created)
    from_events = sa.update(customers).where(c.customer_id == agg.c.customer_id).values(
        created_at=created, last_feedback_score=last_feedback_score(),
        points_balance=points_balance(), **kept)
    created = sa.func.coalesce(c.created_at, c.first_synced_at)
    no_events = ~sa.exists().where(events.c.customer_id == c.customer_id)
    empty = {name: fact.empty for name, fact in EVENT_FACTS.items()}
    empty.update(created_at=created, last_active_at=created, last_feedback_score=None,
                 points_balance=points_balance())
    return from_events, (sa.update(customers).where(_in_scope(c.customer_id, scope), no_events)
                         .values(**empty))
