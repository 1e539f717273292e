"""Conditions compiled to SQLAlchemy expressions, so the database evaluates them (DESIGN 4).

Each operator owns its SQL (engine/format/operators.py); this module resolves a field to what
the operator tests (a column, a JSON reading, a historical fact, an events aggregate) and
composes the operators into whole conditions. What they mean:

`compile_condition` gives a boolean over `customers` (a `when:` list or any part of it);
`compile_event_condition` one over events (a trigger's `where:`). Results are never NULL, so
`not:` of a test that fails on a missing value holds. tests/test_compile_property.py is this
list in executable form:

- `eq ne gt gte lt lte in not_in between`: a missing value (NULL) matches none, `ne`/`not_in`
  included. `between` is inclusive. `is_null: true`: no value; for `tags`, an empty list; for
  `attributes.NAME`, an absent key or JSON null.
- `contains`: `tags` membership; on text a case-sensitive substring, `%` and `_` plain (SQLite's
  LIKE ignores ASCII case, so SQLite uses `instr`, PostgreSQL an escaped LIKE); on an attribute,
  a substring of a text value or a text element of a list value.
- `older_than D`: NULL or at or before `as_of - D`; `within D`: in `[as_of - D, as_of]`. The
  bounds are computed here and bound as UTC; a date counts as midnight UTC starting its day.
- `attributes.NAME` is read by the kind of the condition's value: a number reads JSON numbers
  and decimal text `-?[0-9]+(.[0-9]+)?` (CSV attributes are all text); text reads JSON strings,
  ordered by code point (collation "C" on PostgreSQL); true/false read JSON booleans and the text
  `true`/`false`; `older_than`/`within` read ISO text `YYYY-MM-DD` (midnight UTC) or
  `YYYY-MM-DD[T ]HH:MM:SS[.f{1,6}][Z|+HH:MM|-HH:MM]` (no offset: UTC; offset hours 00-14), a real
  date from year 0001. Anything else reads as NULL: no error, no match. `in`/`not_in` read each
  listed value by its kind; `not_in` needs a reading of a listed kind equal to none of them.
  Ordering a boolean, `between` of mixed kinds and `contains: true` raise PlaybookError.
- `events: {type, within, count | sum}`: count(*) or coalesce(sum(field), 0) over the customer's
  events of that type (any, if omitted) in `(as_of - within, as_of]`, or up to `as_of`.
  `amount`/`score` are the typed columns, another field the number reading of `properties`.
- `any`/`all`/`not`: OR, AND, NOT; an empty `all` is true. In an event's `where:`, fields are its
  properties: `amount`/`score` typed columns, others read from `properties` like attributes.

Historical mode (`--as-of` before the latest event, DESIGN 5) derives the facts from the events
up to `as_of` by engine/store/facts.py's definitions, `rfm_score`/`rfm_segment` included (ranked
among the customers with a purchase by then); `created_at` is read as kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from engine.errors import Issue, Location, PlaybookError, Problem
from engine.format.conditions import AllOf, AnyOf, Condition, EventsTest, FieldTest, Not, leaves
from engine.format.fields import ATTRIBUTE_PREFIX, CUSTOMER_FIELDS, EVENT_PROPERTIES, FieldType
from engine.format.operators import OPERATORS, Operand, at
from engine.format.yamlsource import PathKey, dotted
from engine.store.dialect import Bool, Column
from engine.store.facts import DERIVED_FACTS, customers, fact_as_of
from engine.store.facts import events as events_table

__all__ = ["CompileContext", "CompileRefused", "Operand", "at", "compile_condition",
           "compile_event_condition", "customer_field", "event_field", "events_measure",
           "historical_fact",
           "refused_conditions"]


@dataclass(frozen=True)
class CompileContext:
    """The instant conditions are evaluated at, and whether the kept facts describe it."""

    as_of: datetime
    historical: bool = False  # as_of is before the latest synced event: derive facts from events

    def __post_init__(self) -> None:
        if self.as_of.tzinfo is None:
            raise ValueError("CompileContext.as_of must be an aware datetime")
        object.__setattr__(self, "as_of", self.as_of.astimezone(UTC))


# ---- fields ------------------------------------------------------------------------------------


def customer_field(ctx: CompileContext, name: str) -> Column:
    """The column for a customer field (an attribute: its JSON element); KeyError if unknown."""
    return _customer_operand(ctx, name).column


def _customer_operand(ctx: CompileContext, name: str) -> Operand:
    if name.startswith(ATTRIBUTE_PREFIX) and len(name) > len(ATTRIBUTE_PREFIX):
        key = name[len(ATTRIBUTE_PREFIX):]
        document = customers.c.attributes
        return Operand(document[key], FieldType.ANY, document=document, key=key)
    field_type = CUSTOMER_FIELDS[name]
    column = historical_fact(ctx, name) if ctx.historical and name in DERIVED_FACTS else None
    return Operand(customers.c[name] if column is None else column, field_type,
                   bool(customers.c[name].nullable))


def event_field(events: sa.FromClause, name: str) -> Column:
    """An event property as a `where:` reads it (typed column or JSON element), for `explain`."""
    return _event_operand(events, name).column


def _event_operand(events: sa.FromClause, name: str) -> Operand:
    if name in EVENT_PROPERTIES:
        return Operand(events.c[name], EVENT_PROPERTIES[name])
    document = events.c.properties
    return Operand(document[name], FieldType.ANY, document=document, key=name)


def historical_fact(ctx: CompileContext, name: str) -> Column:
    """A derived fact as of `ctx.as_of`, by engine/store/facts.py's one definition."""
    return fact_as_of(name, ctx.as_of)


# ---- conditions --------------------------------------------------------------------------------


def compile_condition(ctx: CompileContext, condition: Condition) -> Bool:
    """A condition over `customers` (correlated to `Customer.__table__`), as a SQL boolean."""
    return _Compiler(ctx, lambda name: _customer_operand(ctx, name), True).compile(condition)


def compile_event_condition(ctx: CompileContext, condition: Condition,
                            events: sa.FromClause) -> Bool:
    """An event trigger's `where:` over `events` (a table or alias of it), as a SQL boolean."""
    return _Compiler(ctx, lambda name: _event_operand(events, name), False).compile(condition)


@dataclass(frozen=True)
class _Compiler:
    ctx: CompileContext
    resolve: Callable[[str], Operand]
    allow_events: bool

    def compile(self, condition: Condition) -> Bool:
        if isinstance(condition, FieldTest):
            return self.test(condition.path, condition.operator, self.resolve(condition.field),
                             condition.value)
        if isinstance(condition, AllOf):
            return sa.and_(sa.true(), *(self.compile(item) for item in condition.items))
        if isinstance(condition, AnyOf):
            return sa.or_(sa.false(), *(self.compile(item) for item in condition.items))
        if isinstance(condition, Not):
            return sa.not_(self.compile(condition.item))
        if not self.allow_events:
            raise _refused(condition.path, "events: is not available in an event's where")
        return self.events(condition)

    def test(self, path: PathKey, name: str, operand: Operand, value: Any) -> Bool:
        operator = OPERATORS.get(name)
        try:
            if operator is None:
                raise ValueError(OPERATORS.unknown(name))
            return operator().compile(operand, value, self.ctx.as_of)
        except ValueError as exc:
            raise _refused(path, str(exc)) from None

    def events(self, test: EventsTest) -> Bool:
        """The customer's count or sum of events in the window, tested."""
        operand = Operand(events_measure(self.ctx, test), FieldType.NUMBER, nullable=False)
        return sa.and_(*(self.test((*test.path, test.measure, name), name, operand, wanted)
                         for name, wanted in test.tests))


def events_measure(ctx: CompileContext, test: EventsTest) -> Column:
    """count(*) or coalesce(sum(field), 0) of the customer's events in the test's window."""
    ev = events_table.alias("counted_events")
    where = [ev.c.customer_id == customers.c.customer_id, ev.c.occurred_at <= at(ctx.as_of)]
    if test.type is not None:
        where.append(ev.c.type == test.type)
    if test.within is not None:
        where.append(ev.c.occurred_at > at(ctx.as_of - test.within))
    measure = sa.func.count()
    if test.measure == "sum":
        try:
            if not test.sum_field:
                raise ValueError("sum needs field: (an event property, like amount)")
            amounts = _event_operand(ev, test.sum_field).read("number")
        except ValueError as exc:
            raise _refused((*test.path, "sum"), str(exc)) from None
        measure = sa.func.coalesce(sa.func.sum(amounts), 0.0)
    return sa.select(measure).where(*where).correlate_except(ev).scalar_subquery()


class CompileRefused(PlaybookError):
    """A condition that parses but that SQL cannot express; `problem` keeps its path, so
    validation places it at the condition's file:line:column."""

    def __init__(self, problem: Problem) -> None:
        where = dotted(problem.path)
        super().__init__(f"{where}: {problem.message}", [Issue(Location(), where, problem.message)])
        self.problem = problem


def _refused(path: PathKey, message: str) -> CompileRefused:
    return CompileRefused(Problem(path, message))


def refused_conditions(condition: Condition, *, event_scope: bool = False) -> list[Problem]:
    """Every test in `condition` that parses but that SQL cannot express, each at its path.

    Each leaf is compiled on its own, so all of them are found, not only the first; validation
    runs this on whatever parsed, so they show beside the file's other problems.
    """
    ctx = CompileContext(datetime(2024, 2, 29, tzinfo=UTC))
    problems = []
    for leaf in leaves(condition):
        try:
            if event_scope:
                compile_event_condition(ctx, leaf, events_table)
            else:
                compile_condition(ctx, leaf)
        except CompileRefused as exc:
            problems.append(exc.problem)
    return problems
