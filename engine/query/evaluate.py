"""Evaluation (DESIGN 4): each playbook's trigger and `when` compiled to ONE SQL statement.

`playbook_query` joins the trigger's part (engine/format/triggers.py) with the compiled `when`
(engine/format/compile.py) and anti-joins the enrollments already made, according to `reentry`:

- `once` (default): one enrollment per occurrence key;
- `always`: the same rule. The occurrence key is what keeps a run idempotent: an inactivity
  episode, an event, a year or a tick enters once however often the engine evaluates, so
  "always" cannot mean "again for the same occurrence" (RELIABILITY 8). Every new occurrence
  enters, even while an earlier enrollment in the playbook is still in flight;
- `{every: D}`: additionally no enrollment in the playbook entered within D before as-of.

Nothing here loops over customers in Python: rows come back streamed, one per entering
(customer, occurrence), and only the planner looks at them; `count` asks the database.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import sqlalchemy as sa

from engine.clock import aware_utc
from engine.format.compile import CompileContext, at, compile_condition
from engine.format.playbook import Every, Playbook
from engine.format.triggers import DateTrigger, TriggerContext, TriggerSql
from engine.store.facts import ENGINE_EVENT_TYPES, customers, events, existed_at
from engine.store.tables import enrollments, versions


@dataclass(frozen=True)
class Candidate:
    """One entering (customer, occurrence); `event_ref` is events.id of the triggering event."""

    customer_id: str
    occurrence: str
    event_ref: int | None


@dataclass(frozen=True)
class Moment:
    """What every playbook of one run is evaluated against."""

    as_of: datetime
    latest_event: datetime | None
    zones: tuple[str | None, ...]
    enabled: dict[str, datetime]  # playbook id -> first live enable

    @property
    def historical(self) -> bool:
        """as_of is before the latest synced event: facts are derived from events up to as_of."""
        return self.latest_event is not None and self.latest_event > self.as_of

    def trigger_context(self, playbook_id: str) -> TriggerContext:
        """The context one playbook's trigger compiles in."""
        return TriggerContext(CompileContext(self.as_of, self.historical), self.zones,
                              self.enabled.get(playbook_id))


def distinct_values(connection: sa.Connection, column: sa.Column[Any]) -> list[Any]:
    """The distinct non-NULL values of an indexed column, by one index seek per value.

    A loose index scan: `SELECT DISTINCT` would read every row, while an index answers "the
    smallest value above X" at once, and there are only a handful of event types or time zones.
    """
    walk = _walk(column)
    query = sa.select(walk.c.value).where(walk.c.value.is_not(None))
    return list(connection.execute(query).scalars())


def _walk(column: sa.Column[Any]) -> sa.CTE:
    """The loose index scan of `distinct_values` as a recursive CTE (a last NULL row ends it)."""
    table = column.table
    step = sa.select(sa.func.min(column).label("value")).cte("walk", recursive=True)
    follow = table.alias("follow")
    return step.union_all(
        sa.select(sa.select(sa.func.min(follow.c[column.name]))
                  .where(follow.c[column.name] > step.c.value).scalar_subquery())
        .where(step.c.value.is_not(None)))


def latest_event_time(connection: sa.Connection) -> datetime | None:
    """The latest synced event's time: per event type, one seek in the (type, occurred_at) index,
    where `max(occurred_at)` over all events would read every row. One statement (the walk over
    the types and a seek per type), not one per type: a dry-run pays it before every plan."""
    return at_utc(connection.execute(_latest_event_statement()).scalar())


@cache
def _latest_event_statement() -> sa.Select[Any]:
    """Built once: making the statement costs about what running it does on a small store."""
    walk = _walk(events.c.type)
    last = events.alias("last")
    per_type = (sa.select(sa.select(sa.func.max(last.c.occurred_at))
                          .where(last.c.type == walk.c.value).scalar_subquery().label("latest"))
                .where(walk.c.value.is_not(None),
                       walk.c.value.not_in(ENGINE_EVENT_TYPES))  # the engine's own never
                .subquery())                                     # make a run historical
    return sa.select(sa.func.max(per_type.c.latest))


def customer_zones(connection: sa.Connection) -> tuple[str | None, ...]:
    """The distinct `timezone` values of customers (None first when some have none)."""
    missing = connection.execute(sa.select(sa.exists().where(
        customers.c.timezone.is_(None)))).scalar()
    return ((None,) if missing else ()) + tuple(distinct_values(connection, customers.c.timezone))


def at_utc(value: Any) -> datetime | None:
    """A time read back through an expression (not a typed column) as aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):  # SQLite hands back its stored text for computed columns
        value = datetime.fromisoformat(value)
    return aware_utc(value)


Customers = str | Sequence[str] | None
"""One customer, several, or everyone (None)."""


def prepare(connection: sa.Connection, as_of: datetime, playbooks: list[Playbook]) -> Moment:
    """Read what the run's queries depend on: the latest event, time zones, first enables."""
    zones: tuple[str | None, ...] = (None,)
    if any(isinstance(p.trigger, DateTrigger) for p in playbooks):
        zones = customer_zones(connection)
    enabled = dict(connection.execute(
        sa.select(versions.c.playbook_id, sa.func.min(versions.c.enabled_at))
        .where(versions.c.enabled_at.is_not(None)).group_by(versions.c.playbook_id)).all())
    return Moment(as_of, latest_event_time(connection), zones,
                  {pid: at_utc(moment) for pid, moment in enabled.items()})  # type: ignore[misc]


def playbook_query(playbook: Playbook, tc: TriggerContext, customer_id: Customers = None
                   ) -> sa.Select[Any]:
    """The one statement that finds who enters `playbook` at `tc.as_of`, and for what occurrence."""
    return compose(playbook, tc, playbook.trigger.sql(tc, playbook.document.backfill), customer_id)


def compose(playbook: Playbook, tc: TriggerContext, part: TriggerSql,
            customer_id: Customers = None, *, reentry: bool = True) -> sa.Select[Any]:
    """The playbook's statement around an already compiled trigger part (`reentry=False`: who
    trigger and `when` select before enrollments are looked at, for `explain`); `customer_id`
    narrows it to one customer, or to a list (the daemon's reaction to events)."""
    c = customers.c
    source: sa.FromClause = customers
    event_ref: Any = sa.null()
    if part.event is not None:
        source = part.event.join(customers, c.customer_id == part.event.c.customer_id)
        event_ref = part.event.c.id
    # `when` before the trigger, created_at after it: SQLite tests the terms it cannot seek in
    # the order written, and an inactive trigger holds for most customers while `when` narrows
    # (issue 14: a win-back 25% faster); subqueries it defers to the end whatever their place.
    where = [compile_condition(tc.compile, playbook.when),
             *part.where,
             existed_at(tc.as_of)]
    if reentry:
        where.append(~_already_enrolled(playbook, tc, part))
    if isinstance(customer_id, str):
        where.insert(0, c.customer_id == customer_id)
    elif customer_id is not None:
        where.insert(0, c.customer_id.in_(list(customer_id)))
    return (sa.select(c.customer_id, part.occurrence.label("occurrence"), event_ref.label("event_ref"))
            .select_from(source).where(*where))


def _already_enrolled(playbook: Playbook, tc: TriggerContext, part: TriggerSql) -> sa.Exists:
    """Enrollments that keep this customer out, per `reentry` (module docstring)."""
    e = enrollments.c
    keep_out = [e.occurrence_key == part.occurrence]
    reentry = playbook.document.reentry
    if isinstance(reentry, Every):
        keep_out.append(e.entered_at > at(tc.as_of - reentry.every))
    if part.membership:
        keep_out.append(e.left_at.is_(None))
    return sa.exists().where(e.playbook_id == playbook.id, e.customer_id == customers.c.customer_id,
                             sa.or_(*keep_out))


def candidates(connection: sa.Connection, query: sa.Select[Any]) -> Iterator[Candidate]:
    """The query's rows, streamed: memory stays flat however many customers enter."""
    result = connection.execution_options(stream_results=True, yield_per=2000).execute(query)
    for customer_id, occurrence, event_ref in result:
        yield Candidate(customer_id, occurrence, event_ref)


def count(connection: sa.Connection, query: sa.Select[Any]) -> int:
    """How many rows the statement gives, counted by the database: `SELECT count(*) FROM (...)`.

    Nothing streams through Python to be counted, so a dry-run of a playbook that half the
    customers enter costs one aggregate, whatever it shows.
    """
    return connection.execute(sa.select(sa.func.count()).select_from(query.subquery())
                              ).scalar_one()
