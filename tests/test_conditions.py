"""Conditions: each operator's fit to field types, value checks, combinators and paths."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from engine.format.conditions import (
    OPERATORS,
    AllOf,
    AnyOf,
    ConditionParser,
    EventsTest,
    FieldTest,
    Not,
    yearly_age_message,
)
from engine.format.fields import CUSTOMER_FIELDS, YEARLY_DATE_FIELDS, FieldType


def parse(raw: list[object]) -> tuple[AllOf, list[str]]:
    parser = ConditionParser()
    result = parser.parse_list(raw, ("when",))
    return result, [f"{'.'.join(map(str, p.path))}: {p.message}" for p in parser.problems]


# Which operator fits which field type: the matrix validate enforces.
FITS = {
    "eq": "text number time date any", "ne": "text number time date any",
    "gt": "number time date any", "gte": "number time date any",
    "lt": "number time date any", "lte": "number time date any",
    "in": "text number date any", "not_in": "text number date any",
    "contains": "list text any", "is_null": "text number time date list any",
    "between": "number time date any", "older_than": "time date any", "within": "time date any",
}


def test_fit_matrix_is_as_documented() -> None:
    assert set(OPERATORS) == set(FITS)
    for name, cls in OPERATORS.items():
        assert {str(t) for t in cls.fits} == set(FITS[name].split()), name


SAMPLE = {"text": "x", "number": 1, "time": "2024-01-01", "date": "2024-01-01", "list": "x"}
LIST_OPS = {"in", "not_in"}


@pytest.mark.parametrize("field", sorted(CUSTOMER_FIELDS))
@pytest.mark.parametrize("op", sorted(FITS))
def test_every_operator_on_every_field(field: str, op: str) -> None:
    kind = str(CUSTOMER_FIELDS[field])
    value: object = SAMPLE[kind]
    if op in LIST_OPS:
        value = [value]
    elif op == "between":
        value = [value, value]
    elif op in ("older_than", "within"):
        value = "30d"
    elif op == "is_null":
        value = True
    _, problems = parse([{field: {op: value}}])
    if field in YEARLY_DATE_FIELDS and op in ("older_than", "within"):
        assert problems == [f"when.0.{field}.{op}: {yearly_age_message(op, field)}"]
    elif kind in FITS[op].split():
        assert problems == []
    else:
        assert problems == [f"when.0.{field}.{op}: operator {op!r} does not fit {kind} field {field!r}"]


def test_values_are_typed() -> None:
    result, problems = parse([
        {"created_at": {"gt": "2024-05-01T10:00:00+02:00"}},
        {"birthday": {"lt": "2000-01-01"}},
        {"customer_id": {"eq": 17850}},
        {"last_purchase_at": {"within": "2w"}},
        {"total_spent": {"between": [100, 500.5]}},
    ])
    assert problems == []
    values = [item.value for item in result.items]  # type: ignore[union-attr]
    assert values == [datetime(2024, 5, 1, 8, tzinfo=UTC), date(2000, 1, 1), "17850",
                      timedelta(weeks=2), (100, 500.5)]


@pytest.mark.parametrize(("raw", "message"), [
    ({"total_spent": {"gt": True}}, "expected a number, got True"),
    ({"country": {"eq": None}}, "a null value here never matches; use is_null: true"),
    ({"segment": {"in": []}}, "expected a non-empty list like [gold, silver], got []"),
    ({"total_spent": {"between": [500, 100]}}, "low end 500 is above high end 100"),
    ({"total_spent": {"between": [1]}}, "expected two values [low, high], got [1]"),
    ({"email": {"is_null": "yes"}}, "expected true or false, got 'yes'"),
    ({"created_at": {"gt": "yesterday"}},
     "expected an ISO 8601 date or time like 2024-05-01, got 'yesterday'"),
    ({"last_emailed_at": {"older_than": 7}},
     "malformed duration '7': expected a whole number and a unit, like 15m, 12h, 30d or 2w"),
])
def test_bad_values(raw: dict[str, object], message: str) -> None:
    _, problems = parse([raw])
    assert [p.split(": ", 1)[1] for p in problems] == [message]


def test_combinators_and_events_keep_their_paths() -> None:
    result, problems = parse([
        {"any": [{"country": {"eq": "CN"}}, {"not": {"email": {"is_null": True}}}]},
        {"events": {"type": "purchase", "within": "90d", "sum": {"field": "amount", "gte": 500}}},
        {"points_balance": {"gte": 10, "lt": 100}},
    ])
    assert problems == []
    any_of, events, both = result.items
    assert isinstance(any_of, AnyOf) and any_of.path == ("when", 0, "any")
    assert isinstance(any_of.items[1], Not)
    assert events == EventsTest(("when", 1, "events"), "purchase", timedelta(days=90), "sum",
                                "amount", (("gte", 500),))
    assert isinstance(both, AllOf) and [t.operator for t in both.items] == ["gte", "lt"]  # type: ignore[union-attr]
    assert isinstance(both.items[0], FieldTest)


@pytest.mark.parametrize(("raw", "message"), [
    ({"a": 1, "b": 2}, "a condition is a mapping with exactly one key"),
    ({"any": []}, "'any' needs at least one condition"),
    ({"events": {"type": "purchase"}}, "events needs exactly one of count: or sum:"),
    ({"events": {"sum": {"gte": 1}}}, "sum needs field: (an event property, like amount)"),
    ({"events": {"count": {"gte": 1}, "typ": "x"}}, "unknown key 'typ' in events"),
    ({"attributes.": {"eq": 1}}, "unknown field 'attributes.'"),
    ({"country": "CN"}, "expected operators for 'country', like {eq: ...}; got 'CN'"),
])
def test_shape_problems(raw: dict[str, object], message: str) -> None:
    _, problems = parse([raw])
    assert any(message in p for p in problems), problems


def test_attributes_accept_any_operator() -> None:
    _, problems = parse([{"attributes.plan": {"eq": "premium"}},
                         {"attributes.renewal_at": {"within": "30d"}},
                         {"attributes.seats": {"gt": 5}}])
    assert problems == []
    assert FieldType.ANY in OPERATORS.get("within").fits  # type: ignore[union-attr]


def test_an_event_trigger_has_its_where_without_check() -> None:
    """The `where` filter is part of the parsed trigger, whatever the call order."""
    from engine.format.triggers import EventParams, EventTrigger

    params = EventParams.model_validate({"type": "ticket", "where": [{"priority": {"eq": "high"}}]})
    trigger = EventTrigger(params)
    assert [item.field for item in trigger.where.items] == ["priority"]  # type: ignore[union-attr]
    assert trigger.condition_words() == " matching where"


@pytest.mark.parametrize("op", ["within", "older_than"])
def test_an_age_test_on_a_yearly_date_is_refused_with_a_hint(op: str) -> None:
    parser = ConditionParser()
    parser.parse({"birthday": {op: "7d"}}, ("when", 0))
    [problem] = parser.problems
    assert problem.path == ("when", 0, "birthday", op) and problem.at == "key"
    assert problem.message == (
        f"{op} on 'birthday' compares the year too, so it selects nonsense; to act around "
        "the day each year, use trigger: {date: {field: birthday, offset: -7d}}")
