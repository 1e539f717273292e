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
    FEEDBACK,
    created_at,
    customers,
    events,
    points_balance,
)
from engine.store.tables import points
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
        connection.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.name} (customer_id VARCHAR PRIMARY KEY)"
        )
        self.everyone = False
        self.pending = False
        self.clear()  # a table left on a pooled connection by a failed run starts empty

    def cover_everyone_with_events(self) -> None:
        """From now on, stand for every customer who has events rather than the ids added.

        For a sync into an empty events table (a first load): every customer it touches has
        events only from it, so the set of ids is the set of customers with events, and keeping
        a million ids in a temporary table costs more than the refresh it scopes. Customers with
        events that a concurrent writer added are refreshed too, which is never wrong.
        """
        self.everyone = True
        self.clear()

    def add(self, ids: Iterable[str]) -> None:
        """Add ids; ones already present are ignored."""
        batch = list(ids)
        if not batch:
            return
        self.pending = True
        if self.everyone:
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

    def clear(self) -> None:
        """Forget every id (the table stays for reuse)."""
        self.pending = False
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
        if not customer_ids.everyone:
            _refresh(connection, customer_ids.name)
        elif customer_ids.pending:  # each has events: no one gets the no-events defaults
            _refresh(connection, None, without_events=False)
    elif len(customer_ids) <= SMALL_SET:
        if customer_ids:
            ids = {"scope_ids": sorted(customer_ids)}
            for statement in _by_ids():
                connection.execute(statement, ids)
    else:
        with CustomerIdSet(connection) as scope:
            scope.add(customer_ids)
            _refresh(connection, scope.name)


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
    """One row per customer in scope that has events: every fact their events give, in one pass.

    The GROUP BY gives the facts an aggregate defines (EVENT_FACTS). `last_feedback_score` and
    `points_balance` are defined per customer in engine/store/facts.py (the latest feedback's
    score, ties going to the event synced last; the sum of the ledger); here they are the same
    definitions computed set-wise and joined on: the latest feedback by ROW_NUMBER over the
    feedback events in scope, the ledger summed by customer. Evaluated once per customer, the
    correlated forms cost half of a first load's refresh (an index probe each, 1M times).
    """
    e = events.c
    grouped = (
        sa.select(e.customer_id, sa.func.min(e.occurred_at).label("first_event"),
                  *[fact.grouped(events).label(name) for name, fact in EVENT_FACTS.items()])
        .where(_in_scope(e.customer_id, scope))
        .group_by(e.customer_id)
        .subquery("grouped")
    )
    feedback = events.alias("feedback")
    order = sa.func.row_number().over(partition_by=feedback.c.customer_id,
                                      order_by=(feedback.c.occurred_at.desc(), feedback.c.id.desc()))
    ranked = (sa.select(feedback.c.customer_id, feedback.c.score, order.label("recency"))
              .where(feedback.c.type == FEEDBACK, _in_scope(feedback.c.customer_id, scope))
              .subquery("ranked_feedback"))
    # One row per customer has recency 1, so max() is its score. The GROUP BY is there for
    # SQLite 3.40, which indexes a grouped subquery for the join below but scans a windowed one
    # once per customer (minutes at 100k customers).
    latest = (sa.select(ranked.c.customer_id, sa.func.max(ranked.c.score).label("score"))
              .where(ranked.c.recency == 1).group_by(ranked.c.customer_id)
              .subquery("latest_feedback"))
    ledger = (sa.select(points.c.customer_id, sa.func.sum(points.c.amount).label("total"))
              .where(_in_scope(points.c.customer_id, scope))
              .group_by(points.c.customer_id).subquery("ledger"))
    joined = (grouped.outerjoin(latest, latest.c.customer_id == grouped.c.customer_id)
              .outerjoin(ledger, ledger.c.customer_id == grouped.c.customer_id))
    return (sa.select(*grouped.c, latest.c.score.label("last_feedback_score"),
                      sa.func.coalesce(ledger.c.total, 0).label("points_balance"))
            .select_from(joined).subquery("agg"))


def _refresh(connection: sa.Connection, id_table: str | None, *,
             without_events: bool = True) -> None:
    """Refresh everyone (`id_table` None) or the customers whose ids are in that temporary
    table (a CustomerIdSet's)."""
    from_events, no_events = _for_table(id_table)
    connection.execute(from_events)
    if without_events:
        connection.execute(no_events)


@functools.lru_cache(maxsize=32)
def _for_table(id_table: str | None) -> tuple[sa.Update, sa.Update]:
    """`_statements` for everyone (None) or the ids of a temporary table, built once per
    table name: building them (every fact's expression) cost more than running them on a
    small store (each `retain test` sync, a daemon's small batches)."""
    if id_table is None:
        return _statements(None)
    return _statements(sa.select(_id_table(id_table).c.customer_id))


def _id_table(name: str) -> sa.TableClause:
    """A CustomerIdSet's temporary table, for SQL expressions."""
    return sa.table(name, sa.column("customer_id", sa.String))


def _statements(scope: Scope) -> tuple[sa.Update, sa.Update]:
    """The facts from the events of the customers in scope; then the defaults of those in
    scope who have no events."""
    c = customers.c
    agg = _aggregate(scope)
    created = created_at(agg.c.first_event)
    kept = {name: agg.c[name] for name in (*EVENT_FACTS, "last_feedback_score", "points_balance")}
    kept["last_active_at"] = sa.func.coalesce(agg.c.last_active_at, created)
    from_events = sa.update(customers).where(c.customer_id == agg.c.customer_id).values(
        created_at=created, **kept)
    created = sa.func.coalesce(c.created_at, c.first_synced_at)
    no_events = ~sa.exists().where(events.c.customer_id == c.customer_id)
    empty = {name: fact.empty for name, fact in EVENT_FACTS.items()}
    empty.update(created_at=created, last_active_at=created, last_feedback_score=None,
                 points_balance=points_balance())
    return from_events, (sa.update(customers).where(_in_scope(c.customer_id, scope), no_events)
                         .values(**empty))
