"""Conditions compiled to SQLAlchemy expressions, so the database evaluates them (DESIGN 4).

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
up to `as_of` by engine/store/facts.py's definitions; `created_at` and `rfm_*` are read as kept.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from engine.errors import Issue, Location, PlaybookError
from engine.format.conditions import AllOf, AnyOf, Condition, EventsTest, FieldTest, Not
from engine.format.fields import ATTRIBUTE_PREFIX, CUSTOMER_FIELDS, EVENT_PROPERTIES, FieldType
from engine.format.yamlsource import PathKey, dotted
from engine.store.dialect import (
    KIND_TYPES,
    Bool,
    Column,
    json_reading,
    no_tags,
    substring,
    tag_member,
)
from engine.store.facts import DERIVED_FACTS, customers, fact_as_of
from engine.store.facts import events as events_table
from engine.store.tables import UTCDateTime


@dataclass(frozen=True)
class CompileContext:
    """The instant conditions are evaluated at, and whether the kept facts describe it."""

    as_of: datetime
    historical: bool = False  # as_of is before the latest synced event: derive facts from events

    def __post_init__(self) -> None:
        if self.as_of.tzinfo is None:
            raise ValueError("CompileContext.as_of must be an aware datetime")
        object.__setattr__(self, "as_of", self.as_of.astimezone(UTC))


def at(moment: datetime) -> sa.BindParameter[datetime]:
    """An instant bound as UTCDateTime: SQLite then compares the text it stores, byte for byte."""
    return sa.literal(moment, UTCDateTime())


# ---- fields ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operand:
    """What an operator tests: a typed column, or a key of a JSON document read by value kind."""

    column: Column
    field_type: FieldType
    nullable: bool = True
    document: Column | None = None
    key: str = ""

    def read(self, kind: str) -> Column:
        """The value as `kind`; a typed column is already of its one kind."""
        return self.column if self.document is None else json_reading(self.document, self.key, kind)


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


def _event_operand(events: sa.FromClause, name: str) -> Operand:
    if name in EVENT_PROPERTIES:
        return Operand(events.c[name], EVENT_PROPERTIES[name])
    document = events.c.properties
    return Operand(document[name], FieldType.ANY, document=document, key=name)


def historical_fact(ctx: CompileContext, name: str) -> Column:
    """A derived fact as of `ctx.as_of`, by engine/store/facts.py's one definition."""
    return fact_as_of(name, ctx.as_of)


# ---- operators ---------------------------------------------------------------------------------

OperatorSql = Callable[[CompileContext, Operand, Any], Bool]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "time" if isinstance(value, datetime) else "date" if isinstance(value, date) else "text"


def _bound(value: Any) -> Any:
    """A value bound with its kind's type: numbers as floats (see _bound_list)."""
    kind = _kind(value)
    return sa.literal(float(value) if kind == "number" else value, KIND_TYPES[kind])


def _bound_list(values: list[Any]) -> Any:
    """An IN list bound with its kind's type: SQLAlchemy would type it by its first value, and
    PostgreSQL would then cast 12.5 in `in: [3, 12.5]` to an integer."""
    kind = _kind(values[0])
    items = [float(value) for value in values] if kind == "number" else values
    return sa.bindparam(None, items, type_=KIND_TYPES[kind], expanding=True)


def _known(operand: Operand, column: Column, test: Bool, missing: bool = False) -> Bool:
    """The test, with `missing` (never NULL) where the value is NULL.

    A plain column gets an IS NULL guard, which keeps its index usable; a computed value (a
    JSON reading, a subquery) is wrapped in coalesce instead, so it is evaluated once per row.
    """
    if not operand.nullable:
        return test
    if isinstance(column, sa.ColumnClause):
        return sa.or_(column.is_(None), test) if missing else sa.and_(column.is_not(None), test)
    return sa.func.coalesce(test, sa.true() if missing else sa.false())


def _comparison(compare: Callable[[Column, Any], Bool], ordered: bool) -> OperatorSql:
    def compile_test(ctx: CompileContext, operand: Operand, value: Any) -> Bool:
        if ordered and operand.document is not None and _kind(value) not in ("number", "text"):
            raise ValueError(f"gt, gte, lt and lte compare numbers or text, not {value!r}")
        column = operand.read(_kind(value))
        return _known(operand, column, compare(column, _bound(value)))

    return compile_test


def _by_kind(operand: Operand, values: tuple[Any, ...]) -> list[tuple[Column, list[Any]]]:
    groups: dict[str, list[Any]] = {}
    for value in values:
        groups.setdefault(_kind(value), []).append(value)
    return [(operand.read(kind), items) for kind, items in groups.items()]


def _in(ctx: CompileContext, operand: Operand, values: tuple[Any, ...]) -> Bool:
    return sa.or_(*(_known(operand, column, column.in_(_bound_list(items)))
                    for column, items in _by_kind(operand, values)))


def _not_in(ctx: CompileContext, operand: Operand, values: tuple[Any, ...]) -> Bool:
    readings = _by_kind(operand, values)
    if len(readings) == 1:
        (column, items), = readings
        return _known(operand, column, column.not_in(_bound_list(items)))
    present = sa.or_(*(column.is_not(None) for column, _ in readings))
    return sa.and_(present, sa.not_(_in(ctx, operand, values)))


def _between(ctx: CompileContext, operand: Operand, value: tuple[Any, Any]) -> Bool:
    low, high = value
    kinds = {_kind(low), _kind(high)}
    if operand.document is not None and kinds not in ({"number"}, {"text"}):
        raise ValueError(f"between needs two numbers or two texts, not {list(value)!r}")
    column = operand.read(_kind(low))
    return _known(operand, column, column.between(_bound(low), _bound(high)))


def _contains(ctx: CompileContext, operand: Operand, value: Any) -> Bool:
    if operand.field_type == FieldType.LIST:
        return _known(operand, operand.column, tag_member(operand.column, value))
    if operand.document is None:
        return _known(operand, operand.column, substring(operand.column, value))
    if isinstance(value, bool):
        raise ValueError("contains looks for text, not true or false")
    text = operand.read("text")
    return sa.or_(_known(operand, text, substring(text, str(value))),
                  json_reading(operand.document, operand.key, "has_text", str(value)))


def _is_null(ctx: CompileContext, operand: Operand, value: bool) -> Bool:
    if operand.field_type == FieldType.LIST:
        test = no_tags(operand.column)
    elif operand.document is not None:
        test = json_reading(operand.document, operand.key, "missing")
    else:
        test = operand.column.is_(None)
    return test if value else sa.not_(test)


def _instant(operand: Operand, moment: datetime, *, up: bool = False) -> Column:
    """`moment` bound for this field; a date field compares whole days (midnight UTC)."""
    if operand.field_type != FieldType.DATE:
        return at(moment)
    day = moment.date() + timedelta(days=int(up and moment.time() != time(0)))
    return sa.literal(day, sa.Date())


def _older_than(ctx: CompileContext, operand: Operand, delta: timedelta) -> Bool:
    column = operand.read("time")
    return _known(operand, column, column <= _instant(operand, ctx.as_of - delta), missing=True)


def _within(ctx: CompileContext, operand: Operand, delta: timedelta) -> Bool:
    column = operand.read("time")
    low, high = _instant(operand, ctx.as_of - delta, up=True), _instant(operand, ctx.as_of)
    return _known(operand, column, column.between(low, high))


OPERATOR_SQL: dict[str, OperatorSql] = {
    "eq": _comparison(operator.eq, False), "ne": _comparison(operator.ne, False),
    "gt": _comparison(operator.gt, True), "gte": _comparison(operator.ge, True),
    "lt": _comparison(operator.lt, True), "lte": _comparison(operator.le, True),
    "in": _in, "not_in": _not_in, "between": _between, "contains": _contains,
    "is_null": _is_null, "older_than": _older_than, "within": _within}
"""Each operator of engine.format.conditions.OPERATORS -> its SQL (a test checks the names agree)."""


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
        try:
            return OPERATOR_SQL[name](self.ctx, operand, value)
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


def _refused(path: PathKey, message: str) -> PlaybookError:
    return PlaybookError(f"{dotted(path)}: {message}", [Issue(Location(), dotted(path), message)])
