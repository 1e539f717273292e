"""Conditions (`when:` and an event trigger's `where:`): field tests, any/all/not, events aggregates.

Each operator is one small class in engine/format/operators.py (registered in OPERATORS) that
owns its value check, the field types it fits and its SQL. Parsing turns raw YAML into frozen
condition values and collects every problem with its path; engine/format/compile.py composes the
operators' SQL into whole conditions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from engine.errors import Problem
from engine.format.durations import DURATION_PATTERN, parse_duration
from engine.format.fields import (
    CUSTOMER_FIELDS,
    EVENT_PROPERTIES,
    YEARLY_DATE_FIELDS,
    FieldType,
    customer_field_type,
    unknown_field_message,
)
from engine.format.operators import OPERATORS
from engine.format.yamlsource import PathKey

T = FieldType


# ---- parsed condition values ------------------------------------------------------------------


@dataclass(frozen=True)
class FieldTest:
    """`field: {op: value}`: one operator applied to one field."""

    path: PathKey
    field: str
    field_type: FieldType
    operator: str
    value: Any


@dataclass(frozen=True)
class AllOf:
    """Every item holds (`all:` and the `when:` list itself)."""

    path: PathKey
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    """At least one item holds."""

    path: PathKey
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    """The item does not hold."""

    path: PathKey
    item: Condition


@dataclass(frozen=True)
class EventsTest:
    """A count or sum over the customer's events of a type in a window, compared by operators."""

    path: PathKey
    type: str | None
    within: timedelta | None
    measure: str  # "count" or "sum"
    sum_field: str | None
    tests: tuple[tuple[str, Any], ...]


Condition = FieldTest | AllOf | AnyOf | Not | EventsTest
FieldLookup = Callable[[str], FieldType | None]
COMBINATORS = ("any", "all", "not", "events")


def event_property_type(name: str) -> FieldType:
    """Inside an event trigger's `where`, any property may be named; amount and score are numbers."""
    return EVENT_PROPERTIES.get(name, T.ANY)


def leaves(condition: Condition) -> Iterator[Condition]:
    """The field and events tests inside any/all/not, in document order."""
    if isinstance(condition, AllOf | AnyOf):
        for item in condition.items:
            yield from leaves(item)
    elif isinstance(condition, Not):
        yield from leaves(condition.item)
    else:
        yield condition


class ConditionParser:
    """Turns raw YAML conditions into condition values, collecting every problem with its path."""

    def __init__(self, lookup: FieldLookup = customer_field_type, allow_events: bool = True) -> None:
        self.lookup = lookup
        self.allow_events = allow_events
        self.problems: list[Problem] = []

    def parse_list(self, raw: Any, path: PathKey) -> AllOf:
        """A list of conditions that must all hold (`when:`, `where:`).

        The document model has already reported a `when:` or `where:` that is not a list.
        """
        if not isinstance(raw, list):
            return AllOf(path, ())
        items = (self.parse(item, (*path, index)) for index, item in enumerate(raw))
        return AllOf(path, tuple(item for item in items if item is not None))

    def parse(self, raw: Any, path: PathKey) -> Condition | None:
        """One condition: a mapping with exactly one key."""
        if not isinstance(raw, dict) or len(raw) != 1:
            self.problems.append(Problem(path, "a condition is a mapping with exactly one key, "
                                         "like {total_spent: {gt: 100}} or {any: [...]}"))
            return None
        (key, value), = raw.items()
        key_path = (*path, key)
        if key in ("any", "all"):
            items = self.parse_list(value, key_path)
            if not value:
                self.problems.append(Problem(key_path, f"'{key}' needs at least one condition"))
            return (AnyOf if key == "any" else AllOf)(key_path, items.items)
        if key == "not":
            item = self.parse(value, key_path)
            return Not(key_path, item) if item is not None else None
        if key == "events":
            if self.allow_events:
                return self._events(value, key_path)
            self.problems.append(Problem(key_path, "events: is not available here (an event "
                                         "trigger's where tests the event's own properties)",
                                         at="key"))
            return None
        return self._field(str(key), value, key_path)

    def _field(self, name: str, raw: Any, path: PathKey) -> Condition | None:
        field_type = self.lookup(name)
        if field_type is None:
            self.problems.append(Problem(path, unknown_field_message(name), at="key"))
            return None
        tests = self._operators(raw, path, field_type, name)
        if not tests:
            return None
        parts = tuple(FieldTest((*path, op), name, field_type, op, value) for op, value in tests)
        return parts[0] if len(parts) == 1 else AllOf(path, parts)

    def _operators(self, raw: Any, path: PathKey, field_type: FieldType,
                   name: str) -> list[tuple[str, Any]]:
        if not isinstance(raw, dict) or not raw:
            self.problems.append(Problem(path, f"expected operators for {name!r}, like "
                                         f"{{eq: ...}}; got {raw!r}"))
            return []
        tests = []
        for op, value in raw.items():
            checked = self._operator(str(op), value, (*path, op), field_type, name)
            if checked is not None:
                tests.append((str(op), checked))
        return tests if len(tests) == len(raw) else []

    def _operator(self, op: str, value: Any, path: PathKey, field_type: FieldType,
                  name: str) -> Any:
        operator = OPERATORS.get(op)
        if operator is None:
            self.problems.append(Problem(path, OPERATORS.unknown(op), at="key"))
            return None
        if field_type not in operator.fits:
            self.problems.append(Problem(
                path, f"operator {op!r} does not fit {field_type} field {name!r}", at="key"))
            return None
        if op in ("within", "older_than") and name in YEARLY_DATE_FIELDS:
            self.problems.append(Problem(path, yearly_age_message(op, name), at="key"))
            return None
        try:
            return operator().parse_value(value, field_type)
        except ValueError as exc:
            self.problems.append(Problem(path, str(exc)))
            return None

    def _events(self, raw: Any, path: PathKey) -> EventsTest | None:
        allowed = {"type", "within", "count", "sum"}
        if not isinstance(raw, dict):
            self.problems.append(Problem(path, "expected {type: ..., within: ..., count: {...}}"))
            return None
        for key in raw.keys() - allowed:
            self.problems.append(Problem((*path, key), f"unknown key {key!r} in events "
                                         f"(expected {', '.join(sorted(allowed))})", at="key"))
        measures = [m for m in ("count", "sum") if m in raw]
        if len(measures) != 1:
            self.problems.append(Problem(path, "events needs exactly one of count: or sum:"))
            return None
        within = self._within(raw.get("within"), (*path, "within"))
        measure = measures[0]
        body = raw[measure]
        sum_field = None
        if measure == "sum" and isinstance(body, dict):
            body = dict(body)
            sum_field = body.pop("field", None)
        if measure == "sum" and not isinstance(sum_field, str):
            self.problems.append(Problem((*path, "sum"), "sum needs field: (an event property, "
                                         "like amount)"))
        tests = self._operators(body, (*path, measure), T.NUMBER, measure)
        etype = raw.get("type")
        if etype is not None and not isinstance(etype, str):
            self.problems.append(Problem((*path, "type"), f"expected an event type, got {etype!r}"))
        if not tests:
            return None
        return EventsTest(path, etype, within, measure, sum_field, tuple(tests))

    def _within(self, raw: Any, path: PathKey) -> timedelta | None:
        if raw is None:
            return None
        try:
            return parse_duration(raw if isinstance(raw, str) else repr(raw))
        except ValueError as exc:
            self.problems.append(Problem(path, str(exc)))
            return None


def yearly_age_message(op: str, name: str) -> str:
    """Why an age test on a yearly date is refused, and what to write instead."""
    return (f"{op} on {name!r} compares the year too, so it selects nonsense; to act around "
            f"the day each year, use trigger: {{date: {{field: {name}, offset: -7d}}}}")


def condition_schema() -> dict[str, Any]:
    """JSON Schema of one condition (recursive through `#/$defs/condition`)."""
    ops = {name: cls.value_schema for name, cls in OPERATORS.items()}
    op_map = {"type": "object", "properties": ops, "additionalProperties": False,
              "minProperties": 1}
    ref = {"$ref": "#/$defs/condition"}
    events = {"type": "object", "additionalProperties": False, "properties": {
        "type": {"type": "string"}, "within": {"type": "string", "pattern": DURATION_PATTERN},
        "count": op_map,
        "sum": {**op_map, "properties": {**ops, "field": {"type": "string"}}, "required": ["field"]},
    }}
    properties: dict[str, Any] = {"any": {"type": "array", "items": ref, "minItems": 1},
                                  "all": {"type": "array", "items": ref, "minItems": 1},
                                  "not": ref, "events": events}
    properties.update({name: op_map for name in CUSTOMER_FIELDS})
    return {"type": "object", "properties": properties,
            "patternProperties": {r"^attributes\.[A-Za-z0-9_.-]+$": op_map},
            "additionalProperties": False, "minProperties": 1, "maxProperties": 1}
