"""The operators of a field test: each one a class owning its value check, the field types it
fits and its SQL (CONVENTIONS 2: operator -> `compile(operand, value)` + `fits`).

What each operator means in SQL is listed in engine/format/compile.py's docstring, which composes
them into whole conditions. An operator refuses what it cannot express (ordering a boolean,
`between` of mixed kinds) with ValueError; the compiler gives that its path.
"""

from __future__ import annotations

import operator as op
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, ClassVar

import sqlalchemy as sa

from engine.clock import aware_utc
from engine.format.durations import DURATION_PATTERN, parse_duration
from engine.format.fields import FieldType
from engine.format.registry import Registry
from engine.store.dialect import (
    KIND_TYPES,
    Bool,
    Column,
    json_reading,
    no_tags,
    substring,
    tag_member,
)
from engine.store.tables import UTCDateTime

T = FieldType
ORDERED = frozenset({T.NUMBER, T.TIME, T.DATE, T.ANY})
SCALAR = frozenset({T.TEXT, T.NUMBER, T.TIME, T.DATE, T.ANY})
SCALAR_SCHEMA: dict[str, Any] = {"type": ["string", "number", "boolean"]}


def at(moment: datetime) -> sa.BindParameter[datetime]:
    """An instant bound as UTCDateTime: SQLite then compares the text it stores, byte for byte."""
    return sa.literal(moment, UTCDateTime())


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


class Operator:
    """One comparison: its name, the field types it fits, how its value is checked, its SQL."""

    kind: ClassVar[str]
    fits: ClassVar[frozenset[FieldType]] = SCALAR
    value_schema: ClassVar[dict[str, Any]] = SCALAR_SCHEMA

    def parse_value(self, value: Any, field_type: FieldType) -> Any:
        """The checked value, or ValueError saying what was expected."""
        return scalar_value(value, field_type)

    def compile(self, operand: Operand, value: Any, as_of: datetime) -> Bool:
        """The test as a SQL boolean, never NULL; ValueError for what SQL cannot express."""
        raise NotImplementedError


OPERATORS: Registry[type[Operator]] = Registry("operator")


# ---- values ------------------------------------------------------------------------------------


def scalar_value(value: Any, field_type: FieldType) -> Any:
    """Check one comparison value against the field's type; times become aware datetimes."""
    if value is None:
        raise ValueError("a null value here never matches; use is_null: true")
    if field_type in (T.TIME, T.DATE):
        return time_value(value, field_type)
    if field_type == T.NUMBER:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        return value
    if field_type in (T.TEXT, T.LIST):
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"expected text, got {value!r}")
        return str(value)
    if not isinstance(value, str | int | float | bool):
        raise ValueError(f"expected a single value, got {value!r}")
    return value


def time_value(value: Any, field_type: FieldType) -> datetime | date:
    """An ISO 8601 date or time; naive times are UTC (DESIGN section 5)."""
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"expected an ISO 8601 date or time like 2024-05-01, got {value!r}") from None
    if field_type == T.DATE:
        return parsed.date()
    return aware_utc(parsed)


def shown(value: Any) -> str:
    """A value as the playbook spells it (YAML's true, not Python's True)."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


# ---- SQL helpers -------------------------------------------------------------------------------


def value_kind(value: Any) -> str:
    """How a JSON document is read for this value: number, text, bool, time or date."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "time" if isinstance(value, datetime) else "date" if isinstance(value, date) else "text"


def _bound(value: Any) -> Any:
    """A value bound with its kind's type: numbers as floats (see _bound_list)."""
    kind = value_kind(value)
    return sa.literal(float(value) if kind == "number" else value, KIND_TYPES[kind])


def _bound_list(values: list[Any]) -> Any:
    """An IN list bound with its kind's type: SQLAlchemy would type it by its first value, and
    PostgreSQL would then cast 12.5 in `in: [3, 12.5]` to an integer."""
    kind = value_kind(values[0])
    items = [float(value) for value in values] if kind == "number" else values
    return sa.bindparam(None, items, type_=KIND_TYPES[kind], expanding=True)


def known(operand: Operand, column: Column, test: Bool, missing: bool = False) -> Bool:
    """The test, with `missing` (never NULL) where the value is NULL.

    A plain column gets an IS NULL guard, which keeps its index usable; a computed value (a
    JSON reading, a subquery) is wrapped in coalesce instead, so it is evaluated once per row.
    """
    if not operand.nullable:
        return test
    if isinstance(column, sa.ColumnClause):
        return sa.or_(column.is_(None), test) if missing else sa.and_(column.is_not(None), test)
    return sa.func.coalesce(test, sa.true() if missing else sa.false())


def _by_kind(operand: Operand, values: tuple[Any, ...]) -> list[tuple[Column, list[Any]]]:
    groups: dict[str, list[Any]] = {}
    for value in values:
        groups.setdefault(value_kind(value), []).append(value)
    return [(operand.read(kind), items) for kind, items in groups.items()]


def _instant(operand: Operand, moment: datetime, *, up: bool = False) -> Column:
    """`moment` bound for this field; a date field compares whole days (midnight UTC)."""
    if operand.field_type != FieldType.DATE:
        return at(moment)
    day = moment.date() + timedelta(days=int(up and moment.time() != time(0)))
    return sa.literal(day, sa.Date())


# ---- comparisons -------------------------------------------------------------------------------


class _Comparison(Operator):
    compare: ClassVar[Callable[[Column, Any], Bool]]
    ordered: ClassVar[bool] = False

    def compile(self, operand: Operand, value: Any, as_of: datetime) -> Bool:
        if self.ordered and operand.document is not None and value_kind(value) not in (
                "number", "text"):
            raise ValueError(f"gt, gte, lt and lte compare numbers or text, not {shown(value)}")
        column = operand.read(value_kind(value))
        return known(operand, column, type(self).compare(column, _bound(value)))


@OPERATORS.register("eq")
class EqOperator(_Comparison):
    """Equal to a value: `country: { eq: NO }` (Norway: YAML 1.1 booleans are not read)."""

    compare = staticmethod(op.eq)


@OPERATORS.register("ne")
class NeOperator(_Comparison):
    """Not equal (a missing value is neither equal nor unequal): `segment: { ne: churned }`."""

    compare = staticmethod(op.ne)


class _Ordered(_Comparison):
    fits = ORDERED
    ordered = True


@OPERATORS.register("gt")
class GtOperator(_Ordered):
    """Greater than: `total_spent: { gt: 100 }`."""

    compare = staticmethod(op.gt)


@OPERATORS.register("gte")
class GteOperator(_Ordered):
    """Greater than or equal: `purchase_count: { gte: 3 }`."""

    compare = staticmethod(op.ge)


@OPERATORS.register("lt")
class LtOperator(_Ordered):
    """Less than: `last_feedback_score: { lt: 7 }`."""

    compare = staticmethod(op.lt)


@OPERATORS.register("lte")
class LteOperator(_Ordered):
    """Less than or equal: `points_balance: { lte: 0 }`."""

    compare = staticmethod(op.le)


# ---- lists and ranges --------------------------------------------------------------------------


class _ListOperator(Operator):
    fits = frozenset({T.TEXT, T.NUMBER, T.DATE, T.ANY})
    value_schema = {"type": "array", "items": SCALAR_SCHEMA, "minItems": 1}

    def parse_value(self, value: Any, field_type: FieldType) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError(f"expected a non-empty list like [gold, silver], got {value!r}")
        return tuple(scalar_value(item, field_type) for item in value)


@OPERATORS.register("in")
class InOperator(_ListOperator):
    """One of several values: `segment: { in: [gold, silver] }`."""

    def compile(self, operand: Operand, value: Any, as_of: datetime) -> Bool:
        return sa.or_(*(known(operand, column, column.in_(_bound_list(items)))
                        for column, items in _by_kind(operand, value)))


@OPERATORS.register("not_in")
class NotInOperator(_ListOperator):
    """None of several values: `country: { not_in: [US, CA] }`."""

    def compile(self, operand: Operand, value: Any, as_of: datetime) -> Bool:
        readings = _by_kind(operand, value)
        if len(readings) == 1:
            (column, items), = readings
            return known(operand, column, column.not_in(_bound_list(items)))
        present = sa.or_(*(column.is_not(None) for column, _ in readings))
        return sa.and_(present, sa.not_(InOperator().compile(operand, value, as_of)))


@OPERATORS.register("between")
class BetweenOperator(Operator):
    """Inclusive range: `total_spent: { between: [100, 500] }`."""

    fits = ORDERED
    value_schema = {"type": "array", "items": SCALAR_SCHEMA, "minItems": 2, "maxItems": 2}

    def parse_value(self, value: Any, field_type: FieldType) -> Any:
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError(f"expected two values [low, high], got {value!r}")
        low, high = (scalar_value(item, field_type) for item in value)
        if type(low) is type(high) and low > high:
            raise ValueError(f"low end {value[0]!r} is above high end {value[1]!r}")
        return low, high

    def compile(self, operand: Operand, value: Any, as_of: datetime) -> Bool:
        low, high = value
        kinds = {value_kind(low), value_kind(high)}
        if operand.document is not None and kinds not in ({"number"}, {"text"}):
            raise ValueError(f"between needs two numbers or two texts, not {list(value)!r}")
        column = operand.read(value_kind(low))
        return known(operand, column, column.between(_bound(low), _bound(high)))


# ---- text, tags and presence -------------------------------------------------------------------


@OPERATORS.register("contains")
class ContainsOperator(Operator):
    """A tag in a list, or a substring of text: `tags: { contains: vip }`."""

    fits = frozenset({T.LIST, T.TEXT, T.ANY})
    value_schema = {"type": ["string", "number"]}

    def parse_value(self, value: Any, field_type: FieldType) -> Any:
        return scalar_value(value, T.TEXT if field_type == T.LIST else field_type)

    def compile(self, operand: Operand, value: Any, as_of: datetime) -> Bool:
        if operand.field_type == FieldType.LIST:
            return known(operand, operand.column, tag_member(operand.column, value))
        if operand.document is None:
            return known(operand, operand.column, substring(operand.column, value))
        if isinstance(value, bool):
            raise ValueError("contains looks for text, not true or false")
        text = operand.read("text")
        return sa.or_(known(operand, text, substring(text, str(value))),
                      json_reading(operand.document, operand.key, "has_text", str(value)))


@OPERATORS.register("is_null")
class IsNullOperator(Operator):
    """Has no value (true) or has one (false): `email: { is_null: false }`."""

    fits = frozenset(FieldType)
    value_schema = {"type": "boolean"}

    def parse_value(self, value: Any, field_type: FieldType) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value

    def compile(self, operand: Operand, value: Any, as_of: datetime) -> Bool:
        if operand.field_type == FieldType.LIST:
            test = no_tags(operand.column)
        elif operand.document is not None:
            test = json_reading(operand.document, operand.key, "missing")
        else:
            test = operand.column.is_(None)
        return test if value else sa.not_(test)


# ---- ages --------------------------------------------------------------------------------------


class _AgeOperator(Operator):
    fits = frozenset({T.TIME, T.DATE, T.ANY})
    value_schema = {"type": "string", "pattern": DURATION_PATTERN}

    def parse_value(self, value: Any, field_type: FieldType) -> Any:
        return parse_duration(value) if isinstance(value, str) else parse_duration(repr(value))


@OPERATORS.register("older_than")
class OlderThanOperator(_AgeOperator):
    """At least this long ago; a missing time counts as older: `last_emailed_at: { older_than: 7d }`."""

    def compile(self, operand: Operand, value: Any, as_of: datetime) -> Bool:
        column = operand.read("time")
        return known(operand, column, column <= _instant(operand, as_of - value), missing=True)


@OPERATORS.register("within")
class WithinOperator(_AgeOperator):
    """No longer ago than this: `last_purchase_at: { within: 30d }`."""

    def compile(self, operand: Operand, value: Any, as_of: datetime) -> Bool:
        column = operand.read("time")
        low, high = _instant(operand, as_of - value, up=True), _instant(operand, as_of)
        return known(operand, column, column.between(low, high))
