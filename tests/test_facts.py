"""Derived facts (engine/store/facts.py) on real SQLite and PostgreSQL, against a plain recomputation."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.store.facts import ENGINE_EVENT_TYPES
from engine.store.tables import Customer, PointsEntry
from engine.sync.facts import refresh_facts, refresh_rfm_in_steps
from engine.sync.ingest import ingest_customers, ingest_events

NOW = datetime(2025, 1, 1, tzinfo=UTC)
BASE = datetime(2024, 1, 1, tzinfo=UTC)
FACTS = ("created_at", "last_active_at", "first_purchase_at", "last_purchase_at",
         "purchase_count", "total_spent", "last_feedback_score", "last_feedback_at",
         "points_balance", "last_emailed_at")


def facts(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    """customer_id -> its derived facts (and created_at), as stored."""
    with engine.connect() as connection:
        rows = connection.execute(sa.select(Customer.__table__)).mappings().all()
    return {row["customer_id"]: {name: row[name] for name in FACTS} for row in rows}


def at(day: int, hour: int = 0) -> str:
    return (BASE + timedelta(days=day, hours=hour)).isoformat()


def day(n: int, hour: int = 0) -> datetime:
    return BASE + timedelta(days=n, hours=hour)


def add_points(engine: sa.Engine, customer_id: str, *amounts: int) -> None:
    with engine.begin() as connection:
        connection.execute(sa.insert(PointsEntry), [
            {"idempotency_key": f"{customer_id}-{n}-{amount}", "customer_id": customer_id,
             "amount": amount, "created_at": NOW} for n, amount in enumerate(amounts)])
        refresh_facts(connection, {customer_id})


def events(*specs: tuple[str, str, str, str, dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(n + 2, {"event_id": event_id, "customer_id": cid, "type": kind, "occurred_at": when,
                     "properties": props}) for n, (event_id, cid, kind, when, props) in
            enumerate(specs)]


def test_the_facts_of_one_customer_story(db: sa.Engine) -> None:
    ingest_customers(db, [(2, {"customer_id": "a", "created_at": at(0)})], "c", now=NOW)
    report = ingest_events(db, events(
        ("1", "a", "login", at(31), {}),
        ("2", "a", "purchase", at(35), {"amount": 100}),
        ("3", "a", "purchase", at(60), {"amount": 50.5}),
        ("4", "a", "return", at(61), {"amount": -50.5}),
        ("5", "a", "feedback", at(62), {"score": 9}),
        ("6", "a", "feedback", at(69), {"score": 3}),
        ("7", "a", "email_sent", at(91), {}),
        ("8", "a", "points_awarded", at(92), {}),
    ), "e")
    assert report.inserted == 8
    add_points(db, "a", 100, -30)
    assert facts(db)["a"] == {
        "created_at": day(0), "last_active_at": day(69), "first_purchase_at": day(35),
        "last_purchase_at": day(60), "purchase_count": 2, "total_spent": 150.5,
        "last_feedback_score": 3.0, "last_feedback_at": day(69), "points_balance": 70,
        "last_emailed_at": day(91)}


def test_engine_events_are_not_activity(db: sa.Engine) -> None:
    ingest_customers(db, [(2, {"customer_id": "b", "created_at": at(5)})], "c", now=NOW)
    ingest_events(db, events(*[(kind, "b", kind, at(40), {}) for kind in ENGINE_EVENT_TYPES]),
                  "e")
    got = facts(db)["b"]
    assert got["last_active_at"] == day(5)  # created_at: the engine's own events do not count
    assert got["last_emailed_at"] == day(40)


def test_created_at_comes_from_the_first_event_else_the_first_sync(db: sa.Engine) -> None:
    ingest_customers(db, [(2, {"customer_id": "new"}), (3, {"customer_id": "given",
                                                            "created_at": at(100)})], "c", now=NOW)
    assert facts(db)["new"]["created_at"] == NOW
    assert facts(db)["new"]["last_active_at"] == NOW
    ingest_events(db, events(("1", "new", "login", "2025-03-01T00:00:00Z", {}),
                             ("2", "given", "login", at(120), {})), "e")
    assert facts(db)["new"]["created_at"] == datetime(2025, 3, 1, tzinfo=UTC)
    assert facts(db)["given"]["created_at"] == day(100)  # given, and before its first event
    ingest_events(db, events(("3", "new", "login", at(10), {}),
                             ("4", "given", "login", at(50), {})), "e")  # older history
    assert facts(db)["new"]["created_at"] == day(10)
    assert facts(db)["given"]["created_at"] == day(50)  # nobody acts before existing
    ingest_customers(db, [(2, {"customer_id": "new", "name": "N"})], "c", now=NOW)
    assert facts(db)["new"]["created_at"] == day(10)  # a re-sync without created_at keeps it


def test_a_full_refresh_and_a_large_set_agree_with_incremental_refreshes(db: sa.Engine) -> None:
    customers = [(n, {"customer_id": f"c{n}"}) for n in range(600)]
    ingest_customers(db, customers, "c", now=NOW)
    ingest_events(db, events(*[(f"e{n}", f"c{n % 600}", "purchase", at(n % 50, n % 24),
                                {"amount": n}) for n in range(1500)]), "e")
    incremental = facts(db)
    with db.begin() as connection:
        connection.execute(sa.update(Customer.__table__).values(
            purchase_count=0, total_spent=0.0, last_active_at=None, first_purchase_at=None))
        refresh_facts(connection, {f"c{n}" for n in range(600)})  # > SMALL_SET: a temp table
    assert facts(db) == incremental
    with db.begin() as connection:
        connection.execute(sa.update(Customer.__table__).values(purchase_count=0))
        refresh_facts(connection)
        refresh_facts(connection, set())
    assert facts(db) == incremental


def test_rfm_in_small_steps_equals_the_one_statement_refresh(db: sa.Engine) -> None:
    """The daemon's refresh (a snapshot, then `step` customers a transaction) writes what
    `refresh_rfm` writes: afterwards the one-statement refresh finds nothing to change."""
    ingest_customers(db, [(n, {"customer_id": f"c{n}"}) for n in range(40)], "c", now=NOW)
    ingest_events(db, events(*[(f"e{n}", f"c{n % 30}", "purchase", at(n % 50, n % 24),
                                {"amount": n}) for n in range(120)]), "e")
    rfm = sa.select(Customer.__table__.c.customer_id, Customer.__table__.c.rfm_score,
                    Customer.__table__.c.rfm_segment).order_by(Customer.__table__.c.customer_id)
    with db.connect() as connection:
        want = connection.execute(rfm).all()
    assert any(score is not None for _, score, _ in want) and \
        any(score is None for _, score, _ in want)  # ten customers never bought
    with db.begin() as connection:
        connection.execute(sa.update(Customer.__table__).values(rfm_score="111",
                                                                 rfm_segment="lost"))
    assert refresh_rfm_in_steps(db, step=7) == 40
    with db.connect() as connection:
        assert connection.execute(rfm).all() == want
    assert refresh_rfm_in_steps(db, step=7) == 0


# --- the property: facts equal a straightforward recomputation -------------------------------------

KINDS = ["purchase", "feedback", "login", "return", "email_sent", "task_created"]
ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]


@dataclass
class Story:
    """Random customers, two event files (ids may repeat, customers may be unknown), points."""

    created: list[int | None]
    files: list[list[tuple[int, dict[str, Any]]]]
    points: list[tuple[int, int]] = field(default_factory=list)


@st.composite
def stories(draw: st.DrawFn) -> Story:
    created = draw(st.lists(st.one_of(st.none(), st.integers(-400, 60)), min_size=1, max_size=5))
    event = st.tuples(st.integers(0, 30), st.integers(0, len(created)), st.sampled_from(KINDS),
                      st.integers(0, 60), st.sampled_from(ZONES),
                      st.one_of(st.none(), st.integers(0, 500)),
                      st.one_of(st.none(), st.integers(0, 10)))
    files = []
    for _ in range(2):
        rows = []
        for line, (eid, who, kind, hours, zone, amount, score) in enumerate(
                draw(st.lists(event, max_size=25)), 1):
            props = {k: v for k, v in (("amount", amount), ("score", score)) if v is not None}
            when = (BASE + timedelta(hours=hours)).astimezone(zone)
            text = when.replace(tzinfo=None).isoformat() if zone is UTC else when.isoformat()
            rows.append((line, {"event_id": f"e{eid}", "customer_id": f"c{who}", "type": kind,
                                "occurred_at": text, "properties": props}))
        files.append(rows)
    points = draw(st.lists(st.tuples(st.integers(0, len(created) - 1), st.integers(-50, 50)),
                           max_size=4))
    return Story(created, files, points)


def expected_facts(story: Story) -> dict[str, dict[str, Any]]:
    """The facts as DESIGN 2.1/2.2 define them, computed the obvious way in Python."""
    kept: dict[str, dict[str, Any]] = {}
    known = {f"c{n}" for n in range(len(story.created))}
    for rows in story.files:
        for _, row in rows:
            if row["customer_id"] in known and row["event_id"] not in kept:
                kept[row["event_id"]] = {**row, "at": utc(row["occurred_at"]), "order": len(kept)}
    return {f"c{n}": _facts_of([e for e in kept.values() if e["customer_id"] == f"c{n}"],
                               None if created is None else day(created),
                               sum(amount for who, amount in story.points if who == n))
            for n, created in enumerate(story.created)}


def utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _facts_of(mine: list[dict[str, Any]], given: datetime | None, points: int) -> dict[str, Any]:
    def of(kind: str) -> list[dict[str, Any]]:
        return [e for e in mine if e["type"] == kind]

    first = min((e["at"] for e in mine), default=None)
    created = (NOW if first is None else first) if given is None else min(
        [given] + ([first] if first else []))
    purchases, feedback = of("purchase"), of("feedback")
    activity = [e["at"] for e in mine if e["type"] not in ENGINE_EVENT_TYPES]
    latest = max(feedback, key=lambda e: (e["at"], e["order"]), default=None)
    return {
        "created_at": created, "last_active_at": max(activity, default=created),
        "first_purchase_at": min((e["at"] for e in purchases), default=None),
        "last_purchase_at": max((e["at"] for e in purchases), default=None),
        "purchase_count": len(purchases),
        "total_spent": float(sum(e["properties"].get("amount", 0) for e in purchases)),
        "last_feedback_score": None if latest is None or "score" not in latest["properties"]
        else float(latest["properties"]["score"]),
        "last_feedback_at": None if latest is None else latest["at"],
        "points_balance": points,
        "last_emailed_at": max((e["at"] for e in of("email_sent")), default=None),
    }


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(story=stories())
def test_facts_equal_a_plain_recomputation(db: sa.Engine, story: Story) -> None:
    with db.begin() as connection:
        for table in ("events", "points_ledger", "customers"):
            connection.exec_driver_sql(f"DELETE FROM {table}")
        if story.points:
            connection.execute(sa.insert(PointsEntry), [
                {"idempotency_key": f"p{n}", "customer_id": f"c{who}", "amount": amount,
                 "created_at": NOW} for n, (who, amount) in enumerate(story.points)])
    ingest_customers(db, [(n + 2, {"customer_id": f"c{n}", "created_at":
                                   None if c is None else day(c).isoformat()})
                          for n, c in enumerate(story.created)], "c", now=NOW)
    for n, rows in enumerate(story.files):
        report = ingest_events(db, rows, f"events{n}")
        assert report.read == (report.inserted + report.duplicates + len(report.conflicts)
                               + len(report.rejected))
    want = expected_facts(story)
    assert_close(facts(db), want)
    with db.begin() as connection:
        refresh_facts(connection)
    assert_close(facts(db), want)


def assert_close(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]) -> None:
    assert got.keys() == want.keys()
    for customer_id in want:
        mine, theirs = dict(got[customer_id]), dict(want[customer_id])
        assert mine.pop("total_spent") == pytest.approx(theirs.pop("total_spent")), customer_id
        assert mine == theirs, customer_id
