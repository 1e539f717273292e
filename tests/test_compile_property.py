"""Property test: compiled conditions select exactly whom a plain Python reading of the spec selects.

`expected` below is engine/format/compile.py's module docstring in executable form, written without
looking at the SQL: random customers (every field kind, with NULLs), events, points and random
valid conditions go through both, and the two answers must agree on SQLite and PostgreSQL.
Numbers are quarters and times whole seconds or simple fractions, so no float rounding decides.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.format.compile import CompileContext, compile_condition, compile_event_condition
from engine.format.conditions import (
    OPERATORS,
    AllOf,
    AnyOf,
    Condition,
    ConditionParser,
    EventsTest,
    FieldTest,
    Not,
    event_property_type,
)
from engine.format.fields import CUSTOMER_FIELDS, YEARLY_DATE_FIELDS, FieldType
from engine.store.facts import ENGINE_EVENT_TYPES, RFM_SEGMENTS, customers, events, points

T = FieldType
BASE = datetime(2025, 1, 1, tzinfo=UTC)
TIMES = [BASE + timedelta(hours=h) for h in (-720, -48, -24, -12, -1, 0, 1, 12, 24, 36, 48, 72)]
TIMES += [BASE + timedelta(hours=47, minutes=30), BASE + timedelta(seconds=1, microseconds=250000)]
AS_OF = [BASE, BASE + timedelta(hours=48), BASE + timedelta(hours=72, minutes=30)]
DATES = [date(2024, 2, 29), date(2024, 12, 30), date(2024, 12, 31), date(2025, 1, 1),
         date(2025, 1, 2), date(2025, 1, 3)]
AGE_TESTS = ("within", "older_than")  # on a yearly date (birthday) validation refuses them
DURATIONS = ["0m", "30m", "1h", "12h", "1d", "2d", "3d", "30d", "2w"]
TEXTS = ["", "a", "ab", "A", "b%", "_", "a_b", "é", "Ab%c", "gold"]
NUMBERS = [-2, 0, 0.25, 1, 2.5, 3, 12, 100.75]
TAGS = ["vip", "new", "a%", "x_y"]
EVENT_TYPES = ["purchase", "feedback", "login", "email_sent", "points_awarded"]
ISO_TEXTS = [f(t) for t in TIMES[::2] + TIMES[1::5] for f in (
    lambda t: t.date().isoformat(), lambda t: f"{t:%Y-%m-%dT%H:%M:%S}Z",
    lambda t: f"{t:%Y-%m-%d %H:%M:%S}", lambda t: t.astimezone(timezone(timedelta(hours=2))).isoformat(),
    lambda t: f"{t:%Y-%m-%dT%H:%M:%S}.5-01:30")]
ISO_TEXTS += ["2025-02-30", "2024-12-31T24:00:00", "2025-01-01T10:00", "2025-01-01T10:00:00.1234567",
              "0000-01-01", "2025-01-01T10:00:00+15:00", "2025-01-01T10:00:00z", "2025-01-01+02:00",
              "20250101", "2024-12-31T23:59:60", "2025-01-01T00:00:00.000001+14:00"]
ODD_VALUES = [None, True, False, "true", "false", "True", "3", "-2.5", "12", "1.", ".5", "1e3",
              " 3", "--1", "1.2.3", ["a", "b"], ["ab", 3, True], {"k": 1}]
ANYTHING = NUMBERS + TEXTS + ODD_VALUES + ISO_TEXTS
NATURAL = {"plan": ["a", "ab", "gold", "b%"], "seats": [0, 2.5, 3, "3", "-2", "12"],
           "when": ISO_TEXTS, "flag": [True, False, "true", "false"]}
"""Each attribute mostly holds values of its own kind (so tests on it often match), and
sometimes anything at all (so every reading meets values it must refuse)."""
NATURAL.update(channel=NATURAL["plan"], qty=NATURAL["seats"])
ATTRIBUTE_KEYS = ["plan", "seats", "when", "flag"]
FACTS = ("last_active_at", "first_purchase_at", "last_purchase_at", "purchase_count",
         "total_spent", "last_feedback_score", "last_feedback_at", "points_balance",
         "last_emailed_at")
EVENT_FIELDS = {"amount": T.NUMBER, "score": T.NUMBER, "channel": T.ANY, "qty": T.ANY,
                "when": T.ANY}
MISSING = object()
NUMBER_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")
ISO_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
                      r"(\.[0-9]{1,6})?(Z|[+-](0[0-9]|1[0-4]):[0-5][0-9])?)?")


@dataclass
class World:
    """Customers, events and points rows as stored, plus the instant of evaluation."""

    customers: list[dict[str, Any]]
    events: list[dict[str, Any]]
    points: list[dict[str, Any]]
    as_of: datetime
    historical: bool


# ---- the reference: the spec, read plainly ---------------------------------------------------


def kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, int | float) else "text"


def read(raw: Any, how: str) -> Any:
    """An attribute or property as a number, text, bool or time; None when it is not one."""
    if how == "number":
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        return float(raw) if isinstance(raw, str) and NUMBER_TEXT.fullmatch(raw) else None
    if how == "text":
        return raw if isinstance(raw, str) else None
    if how == "bool":
        if isinstance(raw, bool):
            return raw
        return raw == "true" if isinstance(raw, str) and raw in ("true", "false") else None
    if not (isinstance(raw, str) and ISO_TIME.fullmatch(raw)):
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def as_time(raw: Any, field_type: FieldType, document: bool) -> datetime | None:
    if document:
        return read(raw, "time")
    if field_type == T.DATE and raw is not None:
        return datetime.combine(raw, time(0), UTC)
    return raw


COMPARE = {"eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gte": operator.ge,
           "lt": operator.lt, "lte": operator.le}


def holds(op: str, raw: Any, field_type: FieldType, value: Any, as_of: datetime) -> bool:
    """One operator on one stored value (`raw`: a column value, or a JSON value for `any`)."""
    document = field_type == T.ANY

    def reading(how: str) -> Any:
        return read(raw, how) if document else raw

    if op in COMPARE:
        x = reading(kind(value))
        return x is not None and COMPARE[op](x, value)
    if op == "in":
        return any(holds("eq", raw, field_type, item, as_of) for item in value)
    if op == "not_in":
        present = any(reading(kind(item)) is not None for item in value)
        return present and not holds("in", raw, field_type, value, as_of)
    if op == "between":
        x = reading(kind(value[0]))
        return x is not None and value[0] <= x <= value[1]
    if op == "contains":
        if field_type == T.LIST:
            return isinstance(raw, list) and value in raw
        needle = str(value)
        return (isinstance(raw, str) and needle in raw) or (isinstance(raw, list) and any(
            isinstance(item, str) and item == needle for item in raw))
    if op == "is_null":
        empty = (not raw) if field_type == T.LIST else (raw is None or raw is MISSING)
        return empty == value
    moment = as_time(raw, field_type, document)
    if op == "older_than":
        return moment is None or moment <= as_of - value
    return moment is not None and as_of - value <= moment <= as_of  # within


def stored_fact(world: World, customer: dict[str, Any], name: str) -> Any:
    """A derived fact as engine/store/facts.py defines it, from the events and points up to as_of."""
    mine = [e for e in world.events
            if e["customer_id"] == customer["customer_id"] and e["occurred_at"] <= world.as_of]

    def times(kind_: str) -> list[datetime]:
        return [e["occurred_at"] for e in mine if e["type"] == kind_]

    purchases = [e for e in mine if e["type"] == "purchase"]
    feedback = sorted((e for e in mine if e["type"] == "feedback"),
                      key=lambda e: (e["occurred_at"], e["id"]))
    activity = [e["occurred_at"] for e in mine if e["type"] not in ENGINE_EVENT_TYPES]
    return {
        "last_active_at": max(activity, default=customer["created_at"]),
        "first_purchase_at": min(times("purchase"), default=None),
        "last_purchase_at": max(times("purchase"), default=None),
        "purchase_count": len(purchases),
        "total_spent": sum((e["amount"] for e in purchases if e["amount"] is not None), 0.0),
        "last_feedback_at": max(times("feedback"), default=None),
        "last_feedback_score": feedback[-1]["score"] if feedback else None,
        "last_emailed_at": max(times("email_sent"), default=None),
        "points_balance": sum(p["amount"] for p in world.points
                              if p["customer_id"] == customer["customer_id"]
                              and p["created_at"] <= world.as_of),
    }[name]


def ntile5(ids_by_value: list[tuple[Any, str]]) -> dict[str, int]:
    """SQL's NTILE(5) over (value, customer_id) ascending: the first n % 5 buckets get one more."""
    ordered = [customer_id for _, customer_id in sorted(ids_by_value)]
    base, extra = divmod(len(ordered), 5)
    buckets, start = {}, 0
    for bucket in range(1, 6):
        size = base + (1 if bucket <= extra else 0)
        buckets.update((customer_id, bucket) for customer_id in ordered[start:start + size])
        start += size
    return buckets


def rfm_as_of(world: World, customer_id: str) -> dict[str, str | None]:
    """DESIGN 1's RFM ranked over every customer with a purchase by as_of, from their events."""
    values = {c["customer_id"]: (stored_fact(world, c, "last_purchase_at"),
                                 stored_fact(world, c, "purchase_count"),
                                 round(stored_fact(world, c, "total_spent"), 4))
              for c in world.customers if stored_fact(world, c, "purchase_count") > 0}
    if customer_id not in values:
        return {"rfm_score": None, "rfm_segment": None}
    r, f, m = (ntile5([(v[i], cid) for cid, v in values.items()])[customer_id] for i in range(3))
    segment = next(name for rs, fs, name in RFM_SEGMENTS
                   if rs[0] <= r <= rs[1] and fs[0] <= f <= fs[1])
    return {"rfm_score": f"{r}{f}{m}", "rfm_segment": segment}


def events_measure(world: World, customer_id: str, test: EventsTest) -> float:
    chosen = [e for e in world.events if e["customer_id"] == customer_id
              and e["occurred_at"] <= world.as_of and test.type in (None, e["type"])
              and (test.within is None or e["occurred_at"] > world.as_of - test.within)]
    if test.measure == "count":
        return len(chosen)
    values = [e[test.sum_field] if test.sum_field in ("amount", "score")
              else read(e["properties"].get(test.sum_field, MISSING), "number") for e in chosen]
    return sum((v for v in values if v is not None), 0.0)


def expected(world: World, condition: Condition, row: dict[str, Any], scope: str) -> bool:
    """Whether `row` (a customer, or an event in `scope` "event") satisfies `condition`."""
    if isinstance(condition, AllOf):
        return all(expected(world, item, row, scope) for item in condition.items)
    if isinstance(condition, AnyOf):
        return any(expected(world, item, row, scope) for item in condition.items)
    if isinstance(condition, Not):
        return not expected(world, condition.item, row, scope)
    if isinstance(condition, EventsTest):
        measure = events_measure(world, row["customer_id"], condition)
        return all(holds(op, measure, T.NUMBER, value, world.as_of)
                   for op, value in condition.tests)
    assert isinstance(condition, FieldTest)
    name = condition.field
    if scope == "event":
        raw = row[name] if name in ("amount", "score") else row["properties"].get(name, MISSING)
    elif name.startswith("attributes."):
        raw = row["attributes"].get(name.removeprefix("attributes."), MISSING)
    elif world.historical and name in FACTS:
        raw = stored_fact(world, row, name)
    elif world.historical and name in ("rfm_score", "rfm_segment"):
        raw = rfm_as_of(world, row["customer_id"])[name]
    else:
        raw = row[name]
    return holds(condition.operator, raw, condition.field_type, condition.value, world.as_of)


# ---- generating worlds and conditions ----------------------------------------------------------

maybe_text = st.none() | st.sampled_from(TEXTS)
maybe_time = st.none() | st.sampled_from(TIMES)
quarters = st.sampled_from(NUMBERS) | st.integers(-8, 400).map(lambda n: n / 4)


@st.composite
def documents(draw: st.DrawFn, keys: list[str]) -> dict[str, Any]:
    """Attributes or properties: some of these keys, each with a value mostly of its kind."""
    values = {key: draw(st.sampled_from([*NATURAL[key], MISSING]) | st.sampled_from(ANYTHING))
              for key in keys}
    return {key: value for key, value in values.items() if value is not MISSING}


@st.composite
def worlds(draw: st.DrawFn, max_customers: int = 5, max_events: int = 10) -> World:
    ids = [f"c{n}" for n in range(draw(st.integers(2, max_customers)))]
    people = [{
        "customer_id": cid, **{name: draw(maybe_text) for name in (
            "email", "name", "timezone", "country", "segment", "rfm_score", "rfm_segment")},
        "created_at": draw(maybe_time), "birthday": draw(st.none() | st.sampled_from(DATES)),
        "tags": draw(st.none() | st.lists(st.sampled_from(TAGS), unique=True, max_size=3)),
        "attributes": draw(documents(ATTRIBUTE_KEYS)),
        **{name: draw(maybe_time) for name in (
            "last_active_at", "first_purchase_at", "last_purchase_at", "last_feedback_at",
            "last_emailed_at")},
        "purchase_count": draw(st.integers(0, 3)), "total_spent": draw(quarters),
        "points_balance": draw(st.integers(-5, 5)),
        "last_feedback_score": draw(st.none() | st.sampled_from(NUMBERS)),
    } for cid in ids]
    happenings = [{
        "id": n + 1, "event_id": f"e{n + 1}", "customer_id": draw(st.sampled_from(ids)),
        "type": draw(st.sampled_from(EVENT_TYPES)), "occurred_at": draw(st.sampled_from(TIMES)),
        "amount": draw(st.none() | quarters), "score": draw(st.none() | st.integers(0, 10).map(float)),
        "properties": draw(documents(["channel", "qty", "when"])),
    } for n in range(draw(st.integers(0, max_events)))]
    ledger = [{"idempotency_key": f"p{n}", "customer_id": draw(st.sampled_from(ids)),
               "amount": draw(st.integers(-50, 50)), "created_at": draw(st.sampled_from(TIMES))}
              for n in range(draw(st.integers(0, 3)))]
    return World(people, happenings, ledger, draw(st.sampled_from(AS_OF)), draw(st.booleans()))


def scalars(field_type: FieldType, ordered: bool, key: str = "") -> st.SearchStrategy[Any]:
    if field_type == T.TEXT:
        return st.sampled_from(TEXTS)
    if field_type == T.NUMBER:
        return st.sampled_from(NUMBERS)
    if field_type == T.TIME:
        return st.sampled_from(TIMES).map(datetime.isoformat)
    if field_type == T.DATE:
        return st.sampled_from(DATES).map(date.isoformat)
    natural = [v for v in NATURAL.get(key, TEXTS) if not (ordered and isinstance(v, bool))]
    plain = st.sampled_from(natural) | st.sampled_from(NUMBERS) | st.sampled_from(TEXTS)
    return plain if ordered else plain | st.booleans()


def operands(field_type: FieldType, op: str, key: str = "") -> st.SearchStrategy[Any]:
    """A valid value for `op` on a field of this type (`key`: the attribute or property name)."""
    if op in ("older_than", "within"):
        return st.sampled_from(DURATIONS)
    if op == "is_null":
        return st.booleans()
    if op == "contains":
        if field_type == T.LIST:
            return st.sampled_from(TAGS + ["ne"])
        return scalars(field_type if field_type == T.ANY else T.TEXT, True, key)
    if op in ("in", "not_in"):
        return st.lists(scalars(field_type, False, key), min_size=1, max_size=3)
    if op == "between":
        same = [field_type] if field_type != T.ANY else [T.NUMBER, T.TEXT]  # one kind
        pair = st.sampled_from(same).flatmap(lambda t: st.lists(scalars(t, True), min_size=2,
                                                                 max_size=2))
        return pair.map(lambda p: sorted(p, key=lambda v: datetime.fromisoformat(v)
                                         if field_type in (T.TIME, T.DATE) else v))
    return scalars(field_type, op in ("gt", "gte", "lt", "lte"), key)


@st.composite
def field_tests(draw: st.DrawFn, fields: dict[str, FieldType]) -> dict[str, Any]:
    name = draw(st.sampled_from(list(fields)))
    op = draw(st.sampled_from([n for n, cls in OPERATORS.items() if fields[name] in cls.fits
                               and not (name in YEARLY_DATE_FIELDS and n in AGE_TESTS)]))
    key = name.removeprefix("attributes.")
    return {name: {op: draw(operands(fields[name], op, key))}}


@st.composite
def events_tests(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["type"] = draw(st.sampled_from(EVENT_TYPES))
    if draw(st.booleans()):
        body["within"] = draw(st.sampled_from(DURATIONS))
    measure = draw(st.sampled_from(["count", "sum"]))
    ops = draw(st.lists(st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in",
                                         "between", "is_null"]), min_size=1, max_size=2,
                        unique=True))
    body[measure] = {op: draw(operands(T.NUMBER, op)) for op in ops}
    if measure == "sum":
        body["sum"]["field"] = draw(st.sampled_from(["amount", "score", "qty", "channel"]))
    return {"events": body}


def conditions(leaf: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.recursive(leaf, lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda items: {"all": items}),
        st.lists(inner, min_size=1, max_size=3).map(lambda items: {"any": items}),
        inner.map(lambda item: {"not": item})), max_leaves=5)


CUSTOMER_SCOPE = {**{f"attributes.{key}": T.ANY for key in ATTRIBUTE_KEYS}, **CUSTOMER_FIELDS,
                  "attributes.absent": T.ANY}  # hypothesis favours the first choices
customer_conditions = conditions(field_tests(CUSTOMER_SCOPE) | events_tests())
event_conditions = conditions(field_tests(EVENT_FIELDS))


# ---- running both ----------------------------------------------------------------------------


def store(engine: sa.Engine, world: World) -> None:
    with engine.begin() as connection:
        for table in (points, events, customers):
            connection.execute(sa.delete(table))
        connection.execute(sa.insert(customers), world.customers)
        if world.events:
            connection.execute(sa.insert(events), world.events)
        if world.points:
            connection.execute(sa.insert(points), world.points)


def parsed(raw: dict[str, Any], parser: ConditionParser) -> Condition:
    condition = parser.parse(raw, ("when", 0))
    assert condition is not None and not parser.problems, parser.problems
    return condition


def check_customers(engine: sa.Engine, world: World, raw: dict[str, Any]) -> None:
    store(engine, world)
    condition = parsed(raw, ConditionParser())
    ctx = CompileContext(world.as_of, world.historical)
    with engine.connect() as connection:
        got = set(connection.execute(sa.select(customers.c.customer_id)
                                     .where(compile_condition(ctx, condition))).scalars())
    want = {c["customer_id"] for c in world.customers if expected(world, condition, c, "customer")}
    assert got == want, f"{raw}: SQL {sorted(got)}, reference {sorted(want)}"


def check_events(engine: sa.Engine, world: World, raw: dict[str, Any]) -> None:
    store(engine, world)
    condition = parsed(raw, ConditionParser(event_property_type, allow_events=False))
    ev = events.alias("trigger_events")
    where = compile_event_condition(CompileContext(world.as_of), condition, ev)
    with engine.connect() as connection:
        got = set(connection.execute(sa.select(ev.c.id).where(where)).scalars())
    want = {e["id"] for e in world.events if expected(world, condition, e, "event")}
    assert got == want, f"{raw}: SQL {sorted(got)}, reference {sorted(want)}"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(world=worlds(), raw=customer_conditions)
def test_customer_conditions_match_the_reference(db: sa.Engine, world: World,
                                                 raw: dict[str, Any]) -> None:
    check_customers(db, world, raw)  # one database per backend, its rows rewritten per example


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(world=worlds(max_customers=2), raw=event_conditions)
def test_event_conditions_match_the_reference(db: sa.Engine, world: World,
                                              raw: dict[str, Any]) -> None:
    check_events(db, world, raw)


def hand_world() -> World:
    """Seven customers whose RFM as of AS_OF[0] differs from their (garbage) stored RFM."""
    as_of = AS_OF[0]
    blank = {name: None for name in ("email", "name", "timezone", "country", "segment",
                                     "birthday", "tags", "last_active_at", "first_purchase_at",
                                     "last_purchase_at", "last_feedback_at", "last_emailed_at",
                                     "last_feedback_score")}
    people = [{**blank, "customer_id": f"c{n}", "created_at": as_of - timedelta(days=400),
               "attributes": {}, "purchase_count": 9, "total_spent": 999.0, "points_balance": 0,
               "rfm_score": "" if n % 2 else "555", "rfm_segment": "" if n % 2 else "champion"}
              for n in range(7)]
    happenings, n = [], 0
    for i in range(6):  # c6 never buys before as_of; c0-c5 buy i+1 times, the last i days ago
        for j in range(i + 1):
            n += 1
            happenings.append({"id": n, "event_id": f"e{n}", "customer_id": f"c{i}",
                               "type": "purchase", "amount": 10.0 * (6 - i),
                               "occurred_at": as_of - timedelta(days=30 * (6 - i) + j),
                               "score": None, "properties": {}})
    happenings.append({"id": n + 1, "event_id": "late", "customer_id": "c6", "type": "purchase",
                       "amount": 5.0, "occurred_at": as_of + timedelta(days=1), "score": None,
                       "properties": {}})
    return World(people, happenings, [], as_of, True)


@pytest.mark.parametrize("raw", [
    {"rfm_segment": {"eq": "champion"}}, {"rfm_segment": {"eq": ""}},
    {"rfm_segment": {"in": ["hibernating", "at_risk", "loyal", "new_customer"]}},
    {"rfm_score": {"eq": "555"}}, {"rfm_score": {"is_null": True}},
    {"not": {"rfm_segment": {"eq": "potential_loyalist"}}}])
def test_historical_rfm_matches_the_reference(db: sa.Engine, raw: dict[str, Any]) -> None:
    """RFM as of a past instant is ranked from the events then, never read as stored."""
    world = hand_world()
    assert {rfm_as_of(world, c["customer_id"])["rfm_segment"] for c in world.customers} != \
        {c["rfm_segment"] for c in world.customers}
    check_customers(db, world, raw)
