"""Conditions compiled to SQL (engine/format/compile.py) on hand-made customers with known answers.

Every case runs on SQLite and PostgreSQL: a table of (condition, expected customer ids) per topic,
checked in one query each, all mismatches reported together.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from engine.errors import PlaybookError
from engine.format.compile import (
    CompileContext,
    compile_condition,
    compile_event_condition,
    customer_field,
)
from engine.format.conditions import OPERATORS, ConditionParser, FieldTest, event_property_type
from engine.format.fields import FieldType
from engine.format.operators import Operator
from engine.store.facts import customers, events, points
from engine.sync.facts import refresh_facts
from engine.sync.ingest import ingest_customers, ingest_events

PRESENT = datetime(2025, 3, 1, tzinfo=UTC)  # after every event: the kept facts describe it
EARLY = datetime(2025, 1, 1, tzinfo=UTC)  # before some events: facts must come from the events
ALL = {"ann", "bob", "cy", "dee"}

CUSTOMERS: list[dict[str, Any]] = [
    {"customer_id": "ann", "email": "ann@example.com", "name": "Ann 100% Lee",
     "created_at": "2024-01-01T00:00:00Z", "birthday": "1990-05-17", "country": "NO",
     "segment": "gold", "tags": ["vip", "newsletter"],
     "attributes": {"plan": "premium", "seats": 12, "ratio": "7.5", "trial": True,
                    "renewal": "2025-02-25T12:00:00Z", "code": "A_1", "codes": ["x", "y"]}},
    {"customer_id": "bob", "email": "bob@example.com", "name": "Bob",
     "created_at": "2024-06-01T00:00:00Z", "country": "SE", "segment": "silver", "tags": [],
     "attributes": {"plan": "basic", "seats": "3", "trial": "false", "renewal": "2025-02-28"}},
    {"customer_id": "cy", "created_at": "2025-02-20T00:00:00Z", "tags": ["new"],
     "attributes": {"plan": 5, "seats": "many", "renewal": "2025-02-30"}},
    {"customer_id": "dee", "email": "dee@example.com", "name": "dee",
     "created_at": "2023-03-01T00:00:00Z", "birthday": "2000-02-29", "country": "no",
     "segment": "gold", "attributes": {"renewal": "2025-02-28T23:30:00-02:00", "seats": 12.5}},
]
EVENTS: list[tuple[str, str, str, str, dict[str, Any]]] = [
    ("e1", "ann", "purchase", "2024-10-01T00:00:00Z", {"amount": 100, "qty": 2}),
    ("e2", "ann", "purchase", "2025-01-20T00:00:00Z", {"amount": 50.5, "qty": "1"}),
    ("e3", "ann", "feedback", "2024-12-01T00:00:00Z", {"score": 9}),
    ("e4", "ann", "email_sent", "2025-02-27T00:00:00Z", {}),
    ("e5", "ann", "login", "2025-02-26T00:00:00Z", {}),
    ("e6", "bob", "purchase", "2024-06-10T00:00:00Z", {"amount": 20}),
    ("e7", "bob", "feedback", "2025-02-01T00:00:00Z", {"score": 3}),
    ("e8", "bob", "login", "2025-02-28T12:00:00Z", {}),
    ("e9", "bob", "purchase", "2025-02-28T18:00:00Z",
     {"amount": 5, "qty": "lots", "channel": "web", "coupon": "SPRING%"}),
    ("e10", "dee", "purchase", "2023-05-01T00:00:00Z", {"amount": 300, "qty": 1, "channel": "store"}),
]


@pytest.fixture
def shop(db: sa.Engine) -> sa.Engine:
    """The four customers and their events, synced; ann has points 100 (Dec) and -30 (Feb)."""
    ingest_customers(db, list(enumerate(CUSTOMERS, 2)), "customers", now=EARLY)
    ingest_events(db, [(n, {"event_id": eid, "customer_id": cid, "type": kind, "occurred_at": when,
                            "properties": props})
                       for n, (eid, cid, kind, when, props) in enumerate(EVENTS, 2)], "events")
    with db.begin() as connection:
        connection.execute(sa.insert(points), [
            {"idempotency_key": "p1", "customer_id": "ann", "amount": 100,
             "created_at": datetime(2024, 12, 15, tzinfo=UTC)},
            {"idempotency_key": "p2", "customer_id": "ann", "amount": -30,
             "created_at": datetime(2025, 2, 1, tzinfo=UTC)}])
        refresh_facts(connection, {"ann"})
    return db


def parse(raw: Any, *, events_scope: bool = False) -> Any:
    parser = (ConditionParser(event_property_type, allow_events=False) if events_scope
              else ConditionParser())
    condition = parser.parse(raw, ("when", 0))
    assert not parser.problems, parser.problems
    return condition


def date_age(op: str, days: int) -> FieldTest:
    """An age test on the date field `birthday`, built past the parser (which refuses it)."""
    return FieldTest(("when", 0, "birthday", op), "birthday", FieldType.DATE, op,
                     timedelta(days=days))


def matching(engine: sa.Engine, ctx: CompileContext, raw: Any) -> set[str]:
    condition = raw if isinstance(raw, FieldTest) else parse(raw)
    query = sa.select(customers.c.customer_id).where(compile_condition(ctx, condition))
    with engine.connect() as connection:
        return set(connection.execute(query).scalars())


def check(engine: sa.Engine, cases: list[tuple[Any, set[str]]], ctx: CompileContext) -> None:
    wrong = [(raw, want, got) for raw, want in cases
             if (got := matching(engine, ctx, raw)) != want]
    assert not wrong, "\n".join(f"{raw}: want {sorted(w)}, got {sorted(g)}" for raw, w, g in wrong)


NOW = CompileContext(PRESENT)

TEXT_CASES = [
    ({"country": {"eq": "NO"}}, {"ann"}),  # case-sensitive: dee's "no" is not "NO"
    ({"country": {"ne": "NO"}}, {"bob", "dee"}),  # cy has no country: neither equal nor unequal
    ({"country": {"in": ["NO", "SE"]}}, {"ann", "bob"}),
    ({"country": {"not_in": ["NO"]}}, {"bob", "dee"}),
    ({"country": {"is_null": True}}, {"cy"}),
    ({"country": {"is_null": False}}, {"ann", "bob", "dee"}),
    ({"not": {"country": {"eq": "NO"}}}, {"bob", "cy", "dee"}),
    ({"name": {"contains": "%"}}, {"ann"}),  # % and _ are plain characters
    ({"name": {"contains": "0% L"}}, {"ann"}),
    ({"name": {"contains": "_"}}, set()),
    ({"name": {"contains": "D"}}, set()),  # case-sensitive on both databases
    ({"name": {"contains": "d"}}, {"dee"}),
    ({"email": {"contains": "@example.com"}}, {"ann", "bob", "dee"}),
    ({"customer_id": {"in": ["cy", "zed"]}}, {"cy"}),
    ({"tags": {"contains": "vip"}}, {"ann"}),
    ({"tags": {"contains": "news"}}, set()),  # membership, not substring
    ({"tags": {"contains": "new"}}, {"cy"}),
    ({"tags": {"is_null": True}}, {"bob", "dee"}),  # an empty list is no tags
    ({"tags": {"is_null": False}}, {"ann", "cy"}),
]

NUMBER_AND_TIME_CASES = [
    ({"purchase_count": {"gte": 2}}, {"ann", "bob"}),
    ({"purchase_count": {"eq": 0}}, {"cy"}),
    ({"total_spent": {"gt": 100}}, {"ann", "dee"}),
    ({"total_spent": {"between": [25, 150.5]}}, {"ann", "bob"}),  # inclusive at both ends
    ({"total_spent": {"in": [25, 150.5]}}, {"ann", "bob"}),  # int and float in one list
    ({"purchase_count": {"not_in": [2, 0.5]}}, {"cy", "dee"}),
    ({"last_feedback_score": {"lt": 7}}, {"bob"}),
    ({"last_feedback_score": {"ne": 9}}, {"bob"}),  # NULL scores are not unequal
    ({"last_feedback_score": {"is_null": True}}, {"cy", "dee"}),
    ({"points_balance": {"eq": 70}}, {"ann"}),
    ({"last_emailed_at": {"older_than": "7d"}}, {"bob", "cy", "dee"}),  # a null time is older
    ({"last_emailed_at": {"within": "7d"}}, {"ann"}),
    ({"last_active_at": {"within": "3d"}}, {"ann", "bob"}),  # ann exactly at the lower bound
    ({"last_active_at": {"older_than": "3d"}}, {"ann", "cy", "dee"}),  # ... and at the cutoff
    ({"last_active_at": {"within": "2d"}}, {"bob"}),
    ({"first_purchase_at": {"older_than": "200d"}}, {"bob", "cy", "dee"}),
    ({"not": {"first_purchase_at": {"within": "200d"}}}, {"bob", "cy", "dee"}),
    ({"created_at": {"gt": "2025-01-01"}}, {"cy"}),
    ({"created_at": {"between": ["2024-01-01", "2024-06-01T00:00:00Z"]}}, {"ann", "bob"}),
    ({"last_purchase_at": {"eq": "2025-02-28T19:00:00+01:00"}}, {"bob"}),  # one instant
    ({"birthday": {"eq": "1990-05-17"}}, {"ann"}),
    ({"birthday": {"lt": "2000-01-01"}}, {"ann"}),
    ({"birthday": {"in": ["2000-02-29", "2001-01-01"]}}, {"dee"}),
    ({"birthday": {"is_null": True}}, {"bob", "cy"}),
    # Validation refuses age tests on a yearly date (test_conditions); the SQL of an age test on
    # a date field (whole days, midnight UTC) is still defined, for non-yearly date fields.
    (date_age("within", 9132), {"dee"}),  # 2000-02-29 is exactly 9132 days before
    (date_age("within", 9131), set()),
    (date_age("older_than", 9132), {"ann", "bob", "cy", "dee"}),
    (date_age("older_than", 9133), {"ann", "bob", "cy"}),
]

ATTRIBUTE_CASES = [
    ({"attributes.plan": {"eq": "premium"}}, {"ann"}),
    ({"attributes.plan": {"eq": 5}}, {"cy"}),  # a number value reads JSON numbers
    ({"attributes.plan": {"eq": "5"}}, set()),  # ... a text value only JSON strings
    ({"attributes.plan": {"ne": "premium"}}, {"bob"}),  # cy's number is no text; dee has none
    ({"attributes.plan": {"gt": "basic"}}, {"ann"}),
    ({"attributes.plan": {"contains": "rem"}}, {"ann"}),
    ({"attributes.seats": {"gt": 10}}, {"ann", "dee"}),
    ({"attributes.seats": {"lt": 5}}, {"bob"}),  # the text "3" reads as a number
    ({"attributes.seats": {"eq": 3}}, {"bob"}),
    ({"attributes.seats": {"between": [3, 12]}}, {"ann", "bob"}),
    ({"attributes.seats": {"in": [3, 12.5]}}, {"bob", "dee"}),
    ({"attributes.seats": {"not_in": [3]}}, {"ann", "dee"}),  # "many" is no number
    ({"attributes.seats": {"in": ["many", 12]}}, {"ann", "cy"}),  # each value by its kind
    ({"attributes.seats": {"not_in": ["many", 12]}}, {"bob", "dee"}),
    ({"attributes.seats": {"is_null": True}}, set()),
    ({"attributes.ratio": {"gte": 7.5}}, {"ann"}),
    ({"attributes.ratio": {"is_null": True}}, {"bob", "cy", "dee"}),
    ({"attributes.trial": {"eq": True}}, {"ann"}),
    ({"attributes.trial": {"eq": False}}, {"bob"}),  # the text "false"
    ({"attributes.trial": {"ne": True}}, {"bob"}),
    ({"attributes.code": {"contains": "_"}}, {"ann"}),
    ({"attributes.codes": {"contains": "x"}}, {"ann"}),  # a list attribute: membership
    ({"attributes.renewal": {"within": "7d"}}, {"ann", "bob"}),  # dee's is 01:30 UTC on Mar 1
    ({"attributes.renewal": {"older_than": "4d"}}, {"cy"}),  # Feb 30 is no time: counts as older
    ({"attributes.renewal": {"older_than": "0m"}}, {"ann", "bob", "cy"}),
    ({"attributes.nothing": {"eq": "x"}}, set()),
    ({"attributes.nothing": {"is_null": True}}, ALL),
    ({"not": {"attributes.nothing": {"contains": "x"}}}, ALL),  # false, not NULL, when absent
    ({"not": {"attributes.plan": {"contains": "x"}}}, ALL),
]

EVENTS_AND_COMBINATOR_CASES = [
    ({"events": {"type": "purchase", "count": {"gte": 2}}}, {"ann", "bob"}),
    ({"events": {"type": "purchase", "within": "30d", "count": {"gte": 1}}}, {"bob"}),
    # the window excludes its lower bound: ann's purchase at exactly as_of - 40d is out
    ({"events": {"type": "purchase", "within": "40d", "count": {"gte": 1}}}, {"bob"}),
    ({"events": {"type": "purchase", "within": "41d", "count": {"gte": 1}}}, {"ann", "bob"}),
    ({"events": {"count": {"eq": 0}}}, {"cy"}),
    ({"events": {"type": "purchase", "count": {"between": [1, 1]}}}, {"dee"}),
    ({"events": {"type": "purchase", "sum": {"field": "amount", "gte": 150}}}, {"ann", "dee"}),
    ({"events": {"type": "purchase", "within": "30d", "sum": {"field": "amount", "gt": 0}}},
     {"bob"}),
    ({"events": {"sum": {"field": "amount", "eq": 0}}}, {"cy"}),
    ({"events": {"type": "feedback", "sum": {"field": "score", "gte": 9}}}, {"ann"}),
    ({"events": {"type": "purchase", "sum": {"field": "qty", "gte": 3}}}, {"ann"}),  # 2 + "1"
    ({"events": {"type": "purchase", "count": {"gte": 1, "lte": 1}}}, {"dee"}),
    ({"any": [{"country": {"eq": "NO"}}, {"tags": {"contains": "new"}}]}, {"ann", "cy"}),
    ({"all": [{"segment": {"eq": "gold"}}, {"birthday": {"is_null": False}}]}, {"ann", "dee"}),
    ({"not": {"any": [{"country": {"eq": "NO"}}, {"country": {"eq": "SE"}}]}}, {"cy", "dee"}),
    ({"any": [{"all": [{"segment": {"eq": "gold"}}, {"not": {"country": {"eq": "NO"}}}]},
              {"events": {"type": "feedback", "within": "30d", "count": {"gte": 1}}}]},
     {"bob", "dee"}),
    ({"not": {"not": {"events": {"type": "login", "count": {"gte": 1}}}}}, {"ann", "bob"}),
    ({"all": [{"events": {"type": "purchase", "count": {"gte": 1}}},
              {"events": {"type": "feedback", "count": {"gte": 1}}}]}, {"ann", "bob"}),
]


@pytest.mark.parametrize("cases", [TEXT_CASES, NUMBER_AND_TIME_CASES, ATTRIBUTE_CASES,
                                   EVENTS_AND_COMBINATOR_CASES],
                         ids=["text-and-tags", "numbers-and-times", "attributes", "events"])
def test_operators_on_known_customers(shop: sa.Engine, cases: list[tuple[Any, set[str]]]) -> None:
    check(shop, cases, NOW)


def test_an_empty_all_holds_for_everyone(shop: sa.Engine) -> None:
    empty = ConditionParser().parse_list([], ("when",))
    with shop.connect() as connection:
        got = set(connection.execute(sa.select(customers.c.customer_id)
                                     .where(compile_condition(NOW, empty))).scalars())
    assert got == ALL


HISTORICAL_CASES = [
    ({"purchase_count": {"eq": 1}}, {"ann", "bob", "dee"}),  # ann's Jan 20 purchase is later
    ({"total_spent": {"eq": 100}}, {"ann"}),
    ({"last_purchase_at": {"within": "100d"}}, {"ann"}),
    ({"first_purchase_at": {"is_null": True}}, {"cy"}),
    ({"last_active_at": {"older_than": "30d"}}, {"ann", "bob", "dee"}),  # cy: created Feb 20
    ({"last_feedback_score": {"eq": 9}}, {"ann"}),
    ({"last_feedback_score": {"is_null": True}}, {"bob", "cy", "dee"}),  # bob's is in February
    ({"last_feedback_at": {"is_null": False}}, {"ann"}),
    ({"last_emailed_at": {"is_null": True}}, ALL),
    ({"points_balance": {"eq": 100}}, {"ann"}),  # the -30 entry is in February
    ({"events": {"type": "purchase", "count": {"gte": 2}}}, set()),
]


def test_historical_mode_derives_facts_from_the_events_up_to_as_of(shop: sa.Engine) -> None:
    check(shop, HISTORICAL_CASES, CompileContext(EARLY, historical=True))


def test_present_mode_reads_the_kept_facts(shop: sa.Engine) -> None:
    # The same as_of without historical mode reads today's columns (what a caller must not
    # do when later events exist); events: tests still stop at as_of.
    check(shop, [({"purchase_count": {"eq": 1}}, {"dee"}),
                 ({"points_balance": {"eq": 70}}, {"ann"}),
                 ({"events": {"type": "purchase", "count": {"gte": 2}}}, set())],
          CompileContext(EARLY))


def test_customer_field_gives_kept_or_derived_columns(shop: sa.Engine) -> None:
    def values(ctx: CompileContext, name: str) -> dict[str, Any]:
        query = sa.select(customers.c.customer_id, customer_field(ctx, name).label("v"))
        with shop.connect() as connection:
            return {row.customer_id: row.v for row in connection.execute(query)}

    assert values(NOW, "purchase_count") == {"ann": 2, "bob": 2, "cy": 0, "dee": 1}
    early = CompileContext(EARLY, historical=True)
    assert values(early, "purchase_count") == {"ann": 1, "bob": 1, "cy": 0, "dee": 1}
    assert values(early, "last_active_at")["ann"] == datetime(2024, 12, 1, tzinfo=UTC)
    assert values(early, "last_active_at")["cy"] == datetime(2025, 2, 20, tzinfo=UTC)
    assert values(NOW, "attributes.plan") == {"ann": "premium", "bob": "basic", "cy": 5,
                                              "dee": None}


def test_a_cached_statement_is_rebound_for_another_as_of(shop: sa.Engine) -> None:
    # Same condition, same SQL text: SQLAlchemy reuses the compiled form and must rebind both
    # spellings' parameters (PerDialect keeps both as children for exactly this).
    raw = {"attributes.renewal": {"within": "1d"}}
    assert matching(shop, CompileContext(datetime(2025, 2, 26, tzinfo=UTC)), raw) == {"ann"}
    assert matching(shop, CompileContext(datetime(2025, 2, 28, 12, tzinfo=UTC)), raw) == {"bob"}


EVENT_WHERE_CASES = [
    ({"amount": {"gt": 50}}, {"e1", "e2", "e10"}),
    ({"channel": {"eq": "web"}}, {"e9"}),
    ({"coupon": {"contains": "%"}}, {"e9"}),
    ({"amount": {"is_null": True}}, {"e3", "e4", "e5", "e7", "e8"}),
    ({"score": {"gte": 5}}, {"e3"}),
    ({"qty": {"gte": 2}}, {"e1"}),
    ({"qty": {"lte": 1}}, {"e2", "e10"}),  # the text "1" and the number 1
    ({"not": {"channel": {"eq": "web"}}}, {f"e{n}" for n in range(1, 11)} - {"e9"}),
    ({"any": [{"channel": {"is_null": False}}, {"score": {"lt": 5}}]}, {"e7", "e9", "e10"}),
]


def test_event_where_reads_typed_columns_and_properties(shop: sa.Engine) -> None:
    ev = events.alias("trigger_events")
    wrong = []
    for raw, want in EVENT_WHERE_CASES:
        where = compile_event_condition(NOW, parse(raw, events_scope=True), ev)
        with shop.connect() as connection:
            got = set(connection.execute(sa.select(ev.c.event_id).where(where)).scalars())
        if got != want:
            wrong.append(f"{raw}: want {sorted(want)}, got {sorted(got)}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("raw", "message"), [
    ({"attributes.trial": {"gt": True}}, "compare numbers or text"),
    ({"attributes.seats": {"between": [1, "z"]}}, "two numbers or two texts"),
    ({"attributes.codes": {"contains": True}}, "not true or false"),
    ({'attributes.a"b': {"eq": 1}}, "quotes"),
])
def test_unsupported_attribute_tests_are_refused_with_their_path(raw: Any, message: str) -> None:
    with pytest.raises(PlaybookError, match=message) as caught:
        compile_condition(NOW, parse(raw))
    assert str(caught.value).startswith("when[0].")


def test_events_are_refused_in_an_event_where() -> None:
    condition = ConditionParser().parse({"events": {"count": {"gt": 0}}}, ("where", 0))
    with pytest.raises(PlaybookError, match="events: is not available"):
        compile_event_condition(NOW, condition, events)


def test_every_operator_owns_its_sql() -> None:
    """Each registered operator class overrides `compile` beside `fits` (no table apart)."""
    missing = [name for name, cls in OPERATORS.items() if cls.compile is Operator.compile]
    assert not missing


def test_as_of_must_be_aware() -> None:
    with pytest.raises(ValueError, match="aware"):
        CompileContext(datetime(2025, 1, 1))  # noqa: DTZ001  (the mistake under test)


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-12-31T00:00:00Z", datetime(2024, 12, 31, tzinfo=UTC)),  # "Z" with no fraction
    ("2024-12-31T00:00:00.5Z", datetime(2024, 12, 31, 0, 0, 0, 500000, tzinfo=UTC)),
    ("2024-12-31T00:00:00+01:00", datetime(2024, 12, 30, 23, tzinfo=UTC)),
    ("2024-12-31T00:00:00.Z", None),
])
def test_json_time_reading_of_zoned_text(db: sa.Engine, text: str,
                                         expected: datetime | None) -> None:
    from engine.store.dialect import json_reading

    table = sa.table("zoned", sa.column("p", sa.JSON))
    with db.connect() as connection:
        kind = "jsonb" if connection.dialect.name == "postgresql" else "json"  # as in tables.py
        connection.exec_driver_sql(f"create temporary table zoned (p {kind})")
        connection.execute(sa.text("insert into zoned values (:p)"), {"p": f'{{"t": "{text}"}}'})
        found = connection.execute(sa.select(json_reading(table.c.p, "t", "time"))).scalar()
    assert found == expected
