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

- `rfm_score`, `rfm_segment`: DESIGN section 1's RFM over the customers with at least one
  purchase: R, F and M are `last_purchase_at`, `purchase_count` and `total_spent` (compared
  rounded to 4 decimals, see `revenue_key`), each scored 1-5 by
  `NTILE(5) OVER (ORDER BY value ASC, customer_id ASC)`; `rfm_score` is the text of the
  three digits R, F, M ("545": R=5, F=4, M=5), `rfm_segment` the name RFM_SEGMENTS gives the R
  and F scores. NULL for customers without a purchase. They rank customers against each other,
  so `refresh_rfm` recomputes every customer, after the refresh of the touched ones.
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


# --- RFM: scores that rank every customer against the others ------------------------------------

RFM_SEGMENTS: tuple[tuple[tuple[int, int], tuple[int, int], str], ...] = (
    ((1, 2), (1, 2), "hibernating"),
    ((1, 2), (3, 4), "at_risk"),
    ((1, 2), (5, 5), "cant_lose"),
    ((3, 3), (1, 2), "about_to_sleep"),
    ((3, 3), (3, 3), "need_attention"),
    ((3, 3), (4, 5), "loyal"),
    ((4, 4), (1, 1), "promising"),
    ((4, 4), (2, 3), "potential_loyalist"),
    ((4, 4), (4, 5), "loyal"),
    ((5, 5), (1, 1), "new_customer"),
    ((5, 5), (2, 3), "potential_loyalist"),
    ((5, 5), (4, 5), "champion"),
)
"""DESIGN section 1's segment table: (R scores, F scores, segment), ranges inclusive.

Every (R, F) pair of 1-5 x 1-5 falls in exactly one row; kept as data so the SQL CASE and the
report's "R, F" column come from one place (docs/REPORTS.md and the tests spell it out apart).
"""

RFM_SEGMENT_ORDER: tuple[str, ...] = (
    "champion", "loyal", "potential_loyalist", "new_customer", "promising", "need_attention",
    "about_to_sleep", "at_risk", "cant_lose", "hibernating")
"""The segments from the best customers to the most lapsed, as reports list them."""


def customer_id_order(connection: sa.Connection,
                      column: sa.ColumnElement[Any] | None = None) -> sa.ColumnElement[Any]:
    """customer_id for ORDER BY, compared byte by byte on both databases.

    RFM breaks ties by customer_id, so its text order must not depend on the backend: SQLite
    compares with BINARY (memcmp of UTF-8, i.e. code point order) unless told otherwise, while
    PostgreSQL would use the database's locale (where "a10" < "A2" can hold). `COLLATE "C"` makes
    PostgreSQL compare bytes too, and a UTF-8 database's bytes order as SQLite's do.
    """
    column = customers.c.customer_id if column is None else column
    if connection.dialect.name == "postgresql":
        return sa.collate(column, "C")
    return column


def rfm_scores(connection: sa.Connection, *carry: sa.ColumnElement[Any]) -> sa.Subquery:
    """One row per customer with a purchase: the three values, `r`, `f`, `m`, `score`, `segment`.

    A query, not a result: the refresh joins it in one UPDATE and the report aggregates it, so both
    compute exactly the same scores in the database. Values compare as stored: UTC times (text of
    one fixed width on SQLite, timestamptz on PostgreSQL), counts, and revenue by `revenue_key`.
    `carry` are more columns of `customers` to pass through (the refresh compares the stored
    scores in the same scan).
    """
    c = customers.c
    key = customer_id_order(connection)

    def ntile(value: sa.ColumnElement[Any], name: str) -> sa.Label[int]:
        return sa.func.ntile(_sql(5), type_=sa.Integer).over(
            order_by=(value.asc(), key.asc())).label(name)

    ranked = (
        sa.select(c.customer_id, c.last_purchase_at, c.purchase_count, c.total_spent, *carry,
                  ntile(c.last_purchase_at, "r"), ntile(c.purchase_count, "f"),
                  ntile(revenue_key(connection), "m"))
        .where(_has_purchased())
        .subquery("rfm_ranked")
    )
    r, f, m = ranked.c.r, ranked.c.f, ranked.c.m
    segment = sa.case(*[(sa.and_(r.between(_sql(rs[0]), _sql(rs[1])),
                                 f.between(_sql(fs[0]), _sql(fs[1]))), _sql(name))
                        for rs, fs, name in RFM_SEGMENTS])
    score = sa.cast(r, sa.String) + sa.cast(f, sa.String) + sa.cast(m, sa.String)
    return sa.select(*ranked.c, score.label("score"), segment.label("segment")).subquery("rfm")


def revenue_key(connection: sa.Connection) -> sa.ColumnElement[Any]:
    """`total_spent` for ordering M: rounded to 4 decimals, so equal revenues compare equal.

    total_spent is a float sum, and the same revenue summed from different amounts can differ in
    the last bit (0.1 + 0.2 is not 0.3; 15 such pairs of customers in Online Retail alone), or
    between SQLite and PostgreSQL, which may add in another order. Unrounded, such a tie would be
    decided by that noise instead of by customer_id. Money has at most 3 decimals here, so 4 keep
    every real difference; PostgreSQL rounds only `numeric`, hence the cast there.
    """
    if connection.dialect.name == "postgresql":
        return sa.func.round(sa.cast(customers.c.total_spent, sa.Numeric), _sql(4))
    return sa.func.round(customers.c.total_spent, _sql(4))


def _has_purchased() -> sa.ColumnElement[bool]:
    return customers.c.purchase_count > _sql(0)


def _sql(value: int | str) -> sa.ColumnElement[Any]:
    """A constant written into the SQL text (these are fixed; bind parameters only obscure it)."""
    if isinstance(value, int):
        return sa.literal_column(str(value), sa.Integer)
    return sa.literal_column(f"'{value}'", sa.String)  # segment names: [a-z_] only


def refresh_rfm(connection: sa.Connection) -> None:
    """Recompute `rfm_score` and `rfm_segment` of every customer, in the caller's transaction.

    One purchase by one customer can move others across a score boundary, so there is no
    incremental version: one UPDATE joins the window-function query above, filtered in the same
    scan to the rows whose score or segment changed, so a re-sync rewrites only customers that
    crossed a boundary (little WAL on SQLite, few dead tuples on PostgreSQL). A second statement
    clears customers without purchases, which normally finds none (purchases are never deleted).
    Run it after `refresh_facts`: it ranks the facts that refresh keeps.
    """
    c = customers.c
    scored = rfm_scores(connection, c.rfm_score.label("old_score"),
                        c.rfm_segment.label("old_segment"))
    changed = (
        sa.select(scored.c.customer_id, scored.c.score, scored.c.segment)
        .where(sa.or_(scored.c.old_score.is_distinct_from(scored.c.score),
                      scored.c.old_segment.is_distinct_from(scored.c.segment)))
        .subquery("rfm_changed")
    )
    connection.execute(
        sa.update(customers).where(c.customer_id == changed.c.customer_id)
        .values(rfm_score=changed.c.score, rfm_segment=changed.c.segment))
    connection.execute(
        sa.update(customers)
        .where(~_has_purchased(), sa.or_(c.rfm_score.is_not(None), c.rfm_segment.is_not(None)))
        .values(rfm_score=None, rfm_segment=None))
