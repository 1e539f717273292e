"""Property test: a generated playbook is either refused by `validate` with a location, or it
dry-runs cleanly on SQLite and PostgreSQL (issue 11, section 4: validate accepts only what runs).

Playbooks are drawn with random triggers and random conditions: known and unknown fields,
every operator (and unknown ones), values of every kind including wrong ones (booleans to order,
mixed lists, nulls, mappings, odd strings), nested any/all/not and events tests. Each is written
as a YAML file, loaded as `retain validate` loads it, and, when accepted, planned as `retain
dry-run` plans it, at a present and at a historical as-of, on both databases.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from engine.format.fields import CUSTOMER_FIELDS
from engine.format.operators import OPERATORS
from engine.plan.build import make_plan
from engine.query.checks import load_playbooks
from engine.store.open import open_store
from engine.sync.ingest import ingest_customers, ingest_events

PRESENT = datetime(2025, 3, 1, tzinfo=UTC)
PAST = datetime(2025, 1, 15, tzinfo=UTC)  # before some events: historical facts
FIELDS = [*CUSTOMER_FIELDS, "attributes.plan", "attributes.seats", "attributes.when",
          "attributes.q\"uote", "nosuchfield", "attributes."]
OPERATOR_NAMES = [*(name for name, _ in OPERATORS.items()), "gtt", "like"]
EVENT_TYPES = ["purchase", "feedback", "support_ticket", "login", ""]
PROPERTIES = ["amount", "score", "priority", "channel", "q'uote", "a.b"]

scalars = st.one_of(
    st.integers(-5, 500), st.floats(-10, 1000, allow_nan=False, allow_infinity=False),
    st.booleans(), st.none(),
    st.sampled_from(["gold", "", "2025-01-10", "2025-01-10T10:00:00Z", "7d", "30d", "1990-05-17",
                     "not a date", "%_", "0 9 * * 1", "Europe/Oslo", "yes", "NO"]))
values = st.one_of(
    scalars, st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["a", "gt"]), scalars, max_size=1))


GOOD: dict[str, list[Any]] = {  # values of each field type that the operators accept
    "text": ["gold", "x", 7], "number": [1, 2.5, 100], "time": ["2025-01-10", "2025-02-28T10:00:00Z"],
    "date": ["1990-03-01"], "list": ["vip"], "any": ["gold", 5, 12.5, True, "2025-01-10"]}


def operator_map(draw: st.DrawFn, kind: str | None = None) -> dict[str, Any]:
    """Operators and values: for a known field type mostly well typed, else anything at all."""
    if kind is None or draw(st.integers(0, 3)) == 0:
        return draw(st.dictionaries(st.sampled_from(OPERATOR_NAMES), values, min_size=1,
                                    max_size=2))
    name = draw(st.sampled_from([n for n, cls in OPERATORS.items() if kind in cls.fits]))
    good = st.sampled_from(GOOD[kind])
    if name in ("in", "not_in"):
        value: Any = draw(st.lists(good, min_size=1, max_size=3))
    elif name == "between":
        value = sorted(draw(st.lists(good, min_size=2, max_size=2)), key=str)
    elif name in ("within", "older_than"):
        value = draw(st.sampled_from(["7d", "30d", "12h"]))
    elif name == "is_null":
        value = draw(st.booleans())
    else:
        value = draw(good)
    return {name: value}


def field_type(name: str) -> str | None:
    """The catalog type of a customer field or attribute; None for an unknown name."""
    if name.startswith("attributes.") and len(name) > len("attributes."):
        return "any"
    return str(CUSTOMER_FIELDS[name]) if name in CUSTOMER_FIELDS else None


@st.composite
def conditions(draw: st.DrawFn, depth: int = 2, fields: list[str] = FIELDS) -> dict[str, Any]:
    choice = draw(st.integers(0, 9 if depth else 6))
    if choice <= 5:
        name = draw(st.sampled_from(fields))
        kind = field_type(name) if fields is FIELDS else {"amount": "number", "score": "number"}.get(
            name, "any")
        return {name: operator_map(draw, kind)}
    if choice == 6:
        body: dict[str, Any] = {draw(st.sampled_from(["count", "sum"])): operator_map(draw,
                                                                                    "number")}
        if "sum" in body and draw(st.booleans()):
            body["sum"]["field"] = draw(st.sampled_from(PROPERTIES))
        if draw(st.booleans()):
            body["type"] = draw(st.sampled_from(EVENT_TYPES))
        if draw(st.booleans()):
            body["within"] = draw(st.sampled_from(["7d", "1w", "12h", "0d", 3]))
        return {"events": body}
    if choice == 7:
        return {"not": draw(conditions(depth - 1, fields))}
    key = draw(st.sampled_from(["any", "all"]))
    return {key: draw(st.lists(conditions(depth - 1, fields), max_size=3))}


@st.composite
def triggers(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["inactive", "first_purchase", "negative_feedback", "event",
                                 "date", "schedule", "segment"]))
    params: dict[str, Any] = {}
    if kind == "inactive":
        params["days"] = draw(st.sampled_from([30, 1, 0, "x"]))
        if draw(st.booleans()):
            params["activity"] = draw(st.lists(st.sampled_from(EVENT_TYPES), max_size=2))
    elif kind in ("first_purchase", "negative_feedback", "event", "date") and draw(st.booleans()):
        params["lookback"] = draw(st.sampled_from(["1d", "400d", "30d", "2h"]))
    if kind == "negative_feedback" and draw(st.booleans()):
        params["max_score"] = draw(st.sampled_from([0, 6, 10, 11]))
    if kind == "event":
        params["type"] = draw(st.sampled_from(EVENT_TYPES))
        if draw(st.booleans()):
            where = [draw(conditions(1, PROPERTIES)) for _ in range(draw(st.integers(1, 2)))]
            params["where"] = where
    if kind == "date":
        params["field"] = draw(st.sampled_from(["birthday", "created_at", "attributes.when",
                                                "attributes.q\"uote", "last_purchase_at",
                                                "total_spent"]))
        params["offset"] = draw(st.sampled_from(["-7d", "0d", "3d"]))
    if kind == "schedule":
        params["cron"] = draw(st.sampled_from(["0 9 * * 1", "*/5 * * * *", "bad"]))
        params["timezone"] = draw(st.sampled_from(["UTC", "Europe/Berlin", "Mars/Base"]))
    return {kind: params}


@st.composite
def playbooks(draw: st.DrawFn) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": "generated", "name": "Generated", "trigger": draw(triggers()),
        "when": [draw(conditions()) for _ in range(draw(st.integers(0, 3)))],
        "actions": [{"task": {"title": "Call {{ customer.name }}"}}]}
    if draw(st.booleans()):
        document["reentry"] = draw(st.sampled_from(["once", "always", {"every": "30d"}]))
    if draw(st.booleans()):
        document["backfill"] = False
    return document


EXAMPLE: dict[str, Any] = {"id": "generated", "name": "Generated", "trigger": {"segment": {}},
                           "actions": [{"task": {"title": "Call {{ customer.name }}"}}]}
CUSTOMERS = [
    {"customer_id": "ann", "email": "ann@example.com", "created_at": "2024-01-01T00:00:00Z",
     "birthday": "1990-03-01", "timezone": "Europe/Oslo", "tags": ["vip"],
     "attributes": {"plan": "gold", "seats": "12", "when": "2024-03-01"}},
    {"customer_id": "bob", "email": "bob@example.com", "created_at": "2024-06-01T00:00:00Z",
     "timezone": "Mars/Base", "attributes": {"plan": 5, "seats": [1, "x"], "when": True}},
    {"customer_id": "cy", "created_at": "2025-02-01T00:00:00Z"},
]
EVENTS = [
    ("e1", "ann", "purchase", "2025-01-10T10:00:00Z", {"amount": 20, "channel": "web"}),
    ("e2", "ann", "feedback", "2025-02-27T10:00:00Z", {"score": 3, "priority": "high"}),
    ("e3", "bob", "support_ticket", "2025-02-28T20:00:00Z", {"priority": "high", "a": {"b": 1}}),
    ("e4", "bob", "purchase", "2025-02-28T21:00:00Z", {"amount": 5.5}),
    ("e5", "cy", "login", "2025-02-28T22:00:00Z", {"q'uote": "x"}),
]


@pytest.fixture
def engines(sqlite_url: str, pg_url: str) -> Iterator[list[sa.Engine]]:
    """The same customers and events on SQLite and PostgreSQL."""
    found = []
    for url in (sqlite_url, pg_url):
        engine = open_store(url)
        ingest_customers(engine, list(enumerate(CUSTOMERS, 2)), "customers",
                         now=datetime(2025, 2, 1, tzinfo=UTC))
        ingest_events(engine, [(n, {"event_id": eid, "customer_id": cid, "type": kind,
                                    "occurred_at": when, "properties": props})
                               for n, (eid, cid, kind, when, props) in enumerate(EVENTS, 2)],
                      "events")
        found.append(engine)
    yield found
    for engine in found:
        engine.dispose()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(document=playbooks())
@example(document=EXAMPLE | {"when": [{"attributes.plan": {"gt": True}}]})  # the issue's case
@example(document=EXAMPLE | {"when": [{"attributes.plan": {"between": [5, "gold"]}}]})
@example(document=EXAMPLE | {"when": [{"attributes.q\"uote": {"eq": 0}}]})
@example(document=EXAMPLE | {"trigger": {"event": {"type": "purchase",
                                                   "where": [{"channel": {"lt": False}}]}}})
def test_refused_with_a_location_or_runs_on_both_databases(
        document: dict[str, Any], engines: list[sa.Engine], tmp_path: Path) -> None:
    path = tmp_path / "generated.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    result = load_playbooks([path], env={})
    event("refused" if result.issues else "accepted")
    if result.issues:
        for issue in result.issues:
            where = issue.location
            assert where.file == str(path) and where.line >= 1 and where.column >= 1, issue
        return
    [playbook] = result.playbooks
    for engine in engines:
        with engine.connect() as connection:
            for as_of in (PRESENT, PAST):
                make_plan(connection, [playbook], as_of, show=None)
            connection.rollback()
