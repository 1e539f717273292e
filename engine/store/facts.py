"""Derived facts on customers (DESIGN 2.1, 2.2): the ONE definition of each, as SQL expressions.

Evaluation compiles every playbook to one SQL query over `customers`, so the facts it selects on
(`last_active_at`, `total_spent`, ...) are kept as columns, refreshed by sync for the customers it
touched (engine/sync/facts.py). Historical evaluation (`--as-of` before the latest event) derives
the same facts from the events up to as-of (`fact_as_of`). Both build their SQL from the table
below, so the two can never disagree. Nothing here runs a statement: these are expressions.

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
  and F scores. NULL for customers without a purchase. They rank customers against each other:
  after the refresh of the touched ones, `refresh_rfm` (engine/sync/rfm.py) re-scores the
  customers whose R, F or M moved and those they pushed across a score boundary, starting from
  the last ranking (each customer keeps the values it was ranked with), or ranks everyone again
  when there is none to start from or the movers are many; either gives this definition's scores.
  As of a past instant they are ranked the same way over R, F and M as of then, among the
  customers with a purchase by then (`rfm_scores(as_of=...)`, `fact_as_of`): never today's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.store.dialect import PerDialect
from engine.store.tables import UTCDateTime, customers, events, points

ENGINE_EVENT_TYPES: frozenset[str] = frozenset(
    {"email_sent", "task_created", "points_awarded", "webhook_sent"}
)
"""Event types the engine records about its own actions: they never count as customer activity."""

PURCHASE = "purchase"
FEEDBACK = "feedback"
EMAIL_SENT = "email_sent"


Column = sa.ColumnElement[Any]


@dataclass(frozen=True)
class EventFact:
    """A fact that one aggregate over a customer's events of one type gives."""

    type: str | None  # None: every activity type (all but ENGINE_EVENT_TYPES)
    aggregate: Callable[[Column], Column]  # sa.func.min / max / sum / count
    column: str  # the events column aggregated
    empty: Any = None  # the value when the customer has no such event

    def matches(self, ev: sa.FromClause) -> Column:
        """The events this fact is computed from."""
        if self.type is None:
            return ev.c.type.not_in(sorted(ENGINE_EVENT_TYPES))
        return ev.c.type == self.type

    def grouped(self, ev: sa.FromClause) -> Column:
        """The fact in a GROUP BY customer over all of their events."""
        value = sa.case((self.matches(ev), ev.c[self.column]))
        result = self.aggregate(value)
        return result if self.empty is None else sa.func.coalesce(result, self.empty)


EVENT_FACTS: dict[str, EventFact] = {
    "last_active_at": EventFact(None, sa.func.max, "occurred_at"),  # then created_at, see below
    "first_purchase_at": EventFact(PURCHASE, sa.func.min, "occurred_at"),
    "last_purchase_at": EventFact(PURCHASE, sa.func.max, "occurred_at"),
    "purchase_count": EventFact(PURCHASE, sa.func.count, "id", 0),
    "total_spent": EventFact(PURCHASE, sa.func.sum, "amount", 0.0),
    "last_feedback_at": EventFact(FEEDBACK, sa.func.max, "occurred_at"),
    "last_emailed_at": EventFact(EMAIL_SENT, sa.func.max, "occurred_at"),
}
DERIVED_FACTS: frozenset[str] = frozenset({*EVENT_FACTS, "last_feedback_score", "points_balance",
                                          "rfm_score", "rfm_segment"})
"""Every fact sync keeps on customers from events and the points ledger (RFM ranks the others):
historical evaluation derives each again as of a past instant (`fact_as_of`)."""


def _until(column: Column, as_of: datetime | None) -> Column:
    return sa.true() if as_of is None else column <= sa.literal(as_of, UTCDateTime())


def points_balance(as_of: datetime | None = None) -> Column:
    """The sum of the customer's ledger entries (up to as_of), correlated to `customers`."""
    total = (sa.select(sa.func.sum(points.c.amount))
             .where(points.c.customer_id == customers.c.customer_id,
                    _until(points.c.created_at, as_of)).scalar_subquery())
    return sa.func.coalesce(total, 0)


def last_feedback_score(as_of: datetime | None = None) -> Column:
    """The score of the latest feedback (up to as_of); ties on time go to the event synced last."""
    latest = events.alias("feedback")
    return (sa.select(latest.c.score)
            .where(latest.c.customer_id == customers.c.customer_id, latest.c.type == FEEDBACK,
                   _until(latest.c.occurred_at, as_of))
            .order_by(latest.c.occurred_at.desc(), latest.c.id.desc())
            .limit(1).scalar_subquery())


def created_at(first_event: Column) -> Column:
    """created_at as the module docstring defines it, given the customer's first event time."""
    c = customers.c
    return sa.case(
        (c.created_at.is_(None), sa.func.coalesce(first_event, c.first_synced_at)),
        (c.created_at == c.first_synced_at, first_event),
        (first_event < c.created_at, first_event),
        else_=c.created_at,
    )


def existed_at(as_of: datetime) -> Column:
    """The customer existed at as_of: created by then (a customer without created_at always has)."""
    return sa.or_(customers.c.created_at.is_(None),
                  customers.c.created_at <= sa.literal(as_of, UTCDateTime()))


def fact_as_of(name: str, as_of: datetime) -> Column:
    """A derived fact as of `as_of`, from the events (and ledger entries) up to it.

    Correlated to `customers`: the same definitions as the refresh, with an upper time bound;
    `rfm_score`/`rfm_segment` rank R, F and M as of then (`rfm_as_of`).
    `created_at` is read as kept (it is the first event or earlier, so never after as-of for a
    customer who existed then).
    """
    if name in ("rfm_score", "rfm_segment"):
        return rfm_as_of(name, as_of)
    if name == "points_balance":
        return points_balance(as_of)
    if name == "last_feedback_score":
        return last_feedback_score(as_of)
    fact = EVENT_FACTS[name]
    ev = events.alias("fact_events")
    value = (sa.select(fact.aggregate(ev.c[fact.column]))
             .where(ev.c.customer_id == customers.c.customer_id, fact.matches(ev),
                    _until(ev.c.occurred_at, as_of))
             .correlate_except(ev).scalar_subquery())
    if name == "last_active_at":
        return sa.func.coalesce(value, customers.c.created_at)
    return value if fact.empty is None else sa.func.coalesce(value, fact.empty)


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


def customer_id_order(column: sa.ColumnElement[Any] | None = None) -> sa.ColumnElement[Any]:
    """customer_id for ORDER BY, compared byte by byte on both databases.

    RFM breaks ties by customer_id, so its text order must not depend on the backend: SQLite
    compares with BINARY (memcmp of UTF-8, i.e. code point order) unless told otherwise, while
    PostgreSQL would use the database's locale (where "a10" < "A2" can hold). `COLLATE "C"` makes
    PostgreSQL compare bytes too, and a UTF-8 database's bytes order as SQLite's do. Spelled per
    dialect when compiled, so the condition compiler can use it without a connection.
    """
    column = customers.c.customer_id if column is None else column
    return PerDialect(column, sa.collate(column, "C"), sa.String())


def rfm_scores(*carry: sa.ColumnElement[Any], as_of: datetime | None = None) -> sa.Subquery:
    """One row per customer with a purchase: the three values, `r`, `f`, `m`, `score`, `segment`.

    A query, not a result: the refresh joins it in one UPDATE, the report aggregates it and
    historical evaluation looks customers up in it, so all compute exactly the same scores in the
    database. Values compare as stored: UTC times (text of one fixed width on SQLite, timestamptz
    on PostgreSQL), counts, and revenue by `revenue_key`. `carry` are more columns of `customers`
    to pass through (the refresh compares the stored scores in the same scan).

    `as_of`: the scores as of that instant, from R, F and M derived by `fact_as_of` (the events up
    to it), ranked over the customers with a purchase by then; None: the kept facts.
    """
    c = customers.c
    if as_of is None:
        values: sa.FromClause = customers
        names = {"customer_id": c.customer_id, **{name: c[name] for name in RFM_VALUES}}
    else:
        values = sa.select(c.customer_id, *(fact_as_of(name, as_of).label(name)
                                            for name in RFM_VALUES), *carry).subquery("rfm_values")
        names = {name: values.c[name] for name in ("customer_id", *RFM_VALUES)}
        carry = tuple(values.c[column.name] for column in carry)  # type: ignore[attr-defined]
    key = customer_id_order(names["customer_id"])

    def ntile(value: sa.ColumnElement[Any], name: str) -> sa.Label[int]:
        return sa.func.ntile(_sql(5), type_=sa.Integer).over(
            order_by=(value.asc(), key.asc())).label(name)

    ranked = (
        sa.select(*names.values(), *carry,
                  ntile(names["last_purchase_at"], "r"), ntile(names["purchase_count"], "f"),
                  ntile(revenue_key(names["total_spent"]), "m"))
        .select_from(values)
        .where(names["purchase_count"] > _sql(0))
        .subquery("rfm_ranked")
    )
    r, f, m = ranked.c.r, ranked.c.f, ranked.c.m
    segment = sa.case(*[(sa.and_(r.between(_sql(rs[0]), _sql(rs[1])),
                                 f.between(_sql(fs[0]), _sql(fs[1]))), _sql(name))
                        for rs, fs, name in RFM_SEGMENTS])
    score = sa.cast(r, sa.String) + sa.cast(f, sa.String) + sa.cast(m, sa.String)
    return sa.select(*ranked.c, score.label("score"), segment.label("segment")).subquery("rfm")


RFM_VALUES = ("last_purchase_at", "purchase_count", "total_spent")
"""The facts R, F and M rank, in that order."""


@functools.lru_cache(maxsize=16)
def _rfm_as_of(as_of: datetime) -> sa.CTE:
    """Every customer's RFM as of `as_of`, computed once per statement (MATERIALIZED).

    Cached per instant: a statement that reads both `rfm_score` and `rfm_segment` must name one
    CTE object.
    """
    scores = rfm_scores(as_of=as_of)
    return (sa.select(scores.c.customer_id, scores.c.score, scores.c.segment)
            .cte("rfm_as_of").prefix_with("MATERIALIZED"))


def rfm_as_of(name: str, as_of: datetime) -> Column:
    """`rfm_score` or `rfm_segment` as of `as_of`, correlated to `customers` (NULL: no purchase
    by then).

    The scores are ranked once per statement, then looked up per customer: SQLite indexes the
    materialized CTE for the correlated lookup by itself, PostgreSQL would scan it for every
    customer (N x N), so there the scores become one jsonb object (an InitPlan, computed once)
    read by key.
    """
    ranked = _rfm_as_of(as_of)
    column = ranked.c.score if name == "rfm_score" else ranked.c.segment
    looked_up = (sa.select(column).where(ranked.c.customer_id == customers.c.customer_id)
                 .scalar_subquery())
    by_id = sa.select(sa.func.jsonb_object_agg(ranked.c.customer_id, column)).scalar_subquery()
    return PerDialect(looked_up, by_id.op("->>", return_type=sa.String())(customers.c.customer_id),
                      sa.String())


def revenue_key(column: sa.ColumnElement[Any] | None = None) -> sa.ColumnElement[Any]:
    """`total_spent` for ordering M: rounded to 4 decimals, so equal revenues compare equal.

    total_spent is a float sum, and the same revenue summed from different amounts can differ in
    the last bit (0.1 + 0.2 is not 0.3; 15 such pairs of customers in Online Retail alone), or
    between SQLite and PostgreSQL, which may add in another order. Unrounded, such a tie would be
    decided by that noise instead of by customer_id. Money has at most 3 decimals here, so 4 keep
    every real difference; PostgreSQL rounds only `numeric`, hence the cast there.
    """
    column = customers.c.total_spent if column is None else column
    return PerDialect(sa.func.round(column, _sql(4)),
                      sa.func.round(sa.cast(column, sa.Numeric), _sql(4)), sa.Numeric())


def has_purchased() -> sa.ColumnElement[bool]:
    return customers.c.purchase_count > _sql(0)


def _sql(value: int | str) -> sa.ColumnElement[Any]:
    """A constant written into the SQL text (these are fixed; bind parameters only obscure it)."""
    if isinstance(value, int):
        return sa.literal_column(str(value), sa.Integer)
    return sa.literal_column(f"'{value}'", sa.String)  # segment names: [a-z_] only
