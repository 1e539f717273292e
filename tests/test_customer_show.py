"""`retain customer show ID` on real SQLite and PostgreSQL: facts, timeline, engine work, errors."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Cli
from outbox_support import insert_actions
from test_sync import FIXTURES, NOW

from engine.clock import iso
from engine.query.customer_view import customer_view
from engine.store.facts import customers
from engine.store.tables import Action, Enrollment, Event, PointsEntry, Suppression, Task
from engine.sync.ingest import sync_customers, sync_events

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def synced(db: sa.Engine, db_url: str) -> str:
    """The sync fixtures (customers c1-c4, events e1-e8) in a fresh database; its URL."""
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)
    sync_events(db, FIXTURES / "events.csv")
    return db_url


def show(cli: Cli, url: str, *args: str) -> tuple[int, str, str]:
    return cli(["--db", url, "customer", "show", *args])


def show_json(cli: Cli, url: str, *args: str) -> dict[str, Any]:
    code, out, err = show(cli, url, *args, "--json")
    assert (code, err) == (0, "")
    return json.loads(out)


def timeline_ids(out: str) -> list[str]:
    """The event ids of the timeline table, top to bottom."""
    return re.findall(r"│ (e\d+) +│", out)


def insert(engine: sa.Engine, model: Any, *rows: dict[str, Any]) -> None:
    with engine.begin() as connection:
        if model is Action:  # the payload goes to its own table
            insert_actions(connection, rows)
        else:
            connection.execute(sa.insert(model.__table__), list(rows))


def test_json_has_the_profile_facts_and_newest_events_first(cli: Cli, synced: str) -> None:
    view = show_json(cli, synced, "c2")
    assert set(view) == {"customer", "facts", "events", "enrollments", "actions", "tasks",
                         "points", "suppressed"}
    assert view["customer"] == {
        "customer_id": "c2", "email": "bjorn@example.org", "name": "Bjorn Berg",
        "created_at": "2024-02-01T12:30:00Z", "birthday": None, "timezone": "Europe/Oslo",
        "country": "NO", "segment": "silver", "tags": ["newsletter"],
        "file_tags": ["newsletter"], "tags_added": [], "tags_removed": [],
        "attributes": {"plan": "basic"}, "first_synced_at": iso(NOW)}
    facts = view["facts"]
    assert facts["purchase_count"] == 2
    assert facts["total_spent"] == 49.99
    assert facts["first_purchase_at"] == "2024-04-05T12:00:00Z"
    assert facts["last_purchase_at"] == "2024-04-06T12:00:00Z"
    assert facts["last_emailed_at"] == "2024-04-07T09:00:00Z"
    assert facts["last_active_at"] == "2024-04-08T12:00:00Z"  # the return, not the email
    assert view["events"]["total"] == 4
    shown = view["events"]["shown"]
    assert [e["event_id"] for e in shown] == ["e8", "e6", "e5", "e4"]
    assert shown[0] == {"event_id": "e8", "type": "return",
                        "occurred_at": "2024-04-08T12:00:00Z", "amount": -19.99,
                        "score": None, "properties": {"channel": "app"}}
    assert view["enrollments"] == view["actions"] == view["tasks"] == []
    assert view["points"] == {"balance": 0, "entries": []}
    assert view["suppressed"] is None


def test_text_shows_facts_and_the_timeline_newest_first(cli: Cli, synced: str) -> None:
    code, out, err = show(cli, synced, "c1")
    assert (code, err) == (0, "")
    assert "Ada Lovelace" in out and "vip, newsletter" in out and "attributes.plan" in out
    assert re.search(r"total_spent +│ 120\.50", out)
    assert re.search(r"last_feedback_score +│ 4 ", out)
    assert "Customer c1 (times in UTC)" in out
    assert re.search(r"first_purchase_at +│ 2024-04-02 08:15 ", out)  # +02:00 in the file
    assert timeline_ids(out) == ["e3", "e2", "e1"]
    assert "3 events" in out and "--events N" not in out
    for section in ("Enrollments", "Actions", "Tasks", "Points"):
        assert f"{section}: none yet" in out


def test_events_option_limits_the_timeline_and_says_how_many_are_hidden(
        cli: Cli, synced: str) -> None:
    code, out, _ = show(cli, synced, "c2", "--events", "2")
    assert code == 0
    assert timeline_ids(out) == ["e8", "e6"]
    assert "showing 2 of 4 events; --events N for more" in out
    view = show_json(cli, synced, "c2", "--events", "0")
    assert view["events"] == {"total": 4, "shown": []}


def test_a_long_history_is_counted_but_only_the_newest_are_loaded(
        cli: Cli, synced: str, db: sa.Engine) -> None:
    insert(db, Event, *({"event_id": f"bulk{i}", "customer_id": "c3", "type": "page_view",
                         "occurred_at": T0 + timedelta(minutes=i), "properties": {}}
                        for i in range(1234)))
    code, out, _ = show(cli, synced, "c3")
    assert code == 0
    assert "showing 50 of 1,235 events; --events N for more" in out
    view = customer_view(db, "c3", events_limit=3)
    assert view is not None
    assert [e["event_id"] for e in view["events"]["shown"]] == ["bulk1233", "bulk1232", "bulk1231"]
    assert view["events"]["total"] == 1235


def test_a_customer_without_events_says_so(cli: Cli, synced: str) -> None:
    code, out, _ = show(cli, synced, "c4")
    assert code == 0
    assert "Timeline: no events yet" in out


def test_an_unknown_id_is_exit_1_naming_it(cli: Cli, synced: str, db: sa.Engine) -> None:
    code, out, err = show(cli, synced, "C1")  # ids are case-sensitive
    assert (code, out) == (1, "")
    assert "customer 'C1' not found" in err
    code, out, err = show(cli, synced, "nobody", "--json")
    assert (code, out) == (1, "") and "customer 'nobody' not found" in err
    assert customer_view(db, "nobody") is None


def test_enrollments_actions_tasks_and_points_show_up(
        cli: Cli, synced: str, db: sa.Engine) -> None:
    insert(db, Enrollment, {"id": 7, "playbook_id": "winback-30d", "version": "abc123",
                            "customer_id": "c1", "occurrence_key": "2024-05", "step": 1,
                            "wake_at": T0 + timedelta(days=3), "entered_at": T0})
    insert(db, Action,
           {"enrollment_id": 7, "customer_id": "c1", "step": 0, "connector": "email",
            "payload": {"subject": "We miss you, Ada", "body": "x" * 1000},
            "idempotency_key": "k-email", "status": "sent", "reason": None, "attempts": 1,
            "created_at": T0},
           {"enrollment_id": 7, "customer_id": "c1", "step": 1, "connector": "task",
            "payload": {"title": "Call Ada"}, "idempotency_key": "k-task",
            "status": "skipped", "reason": "quiet hours", "attempts": 0,
            "created_at": T0 + timedelta(hours=1)})
    insert(db, Task, {"idempotency_key": "k-task", "customer_id": "c1", "title": "Call Ada",
                      "assignee": "sam", "due_at": T0 + timedelta(days=2),
                      "created_at": T0 + timedelta(hours=1)})
    insert(db, PointsEntry,
           {"idempotency_key": "p1", "customer_id": "c1", "amount": 100, "reason": "welcome",
            "created_at": T0},
           {"idempotency_key": "p2", "customer_id": "c1", "amount": -30, "reason": "redeemed",
            "created_at": T0 + timedelta(days=1)},
           {"idempotency_key": "p3", "customer_id": "c2", "amount": 999, "reason": None,
            "created_at": T0})

    view = show_json(cli, synced, "c1")
    assert view["enrollments"] == [{
        "playbook_id": "winback-30d", "version": "abc123", "occurrence_key": "2024-05",
        "status": "active", "step": 1, "holdout": False, "entered_at": "2024-05-01T09:00:00Z",
        "wake_at": "2024-05-04T09:00:00Z", "ended_at": None, "end_reason": None}]
    assert [(a["connector"], a["summary"], a["status"], a["reason"], a["playbook_id"])
            for a in view["actions"]] == [
        ("task", "Call Ada", "skipped", "quiet hours", "winback-30d"),
        ("email", "We miss you, Ada", "sent", None, "winback-30d")]
    assert "payload" not in view["actions"][0]  # bodies stay out of the view
    assert view["tasks"] == [{"title": "Call Ada", "assignee": "sam", "note": None,
                              "due_at": "2024-05-03T09:00:00Z", "status": "open",
                              "created_at": "2024-05-01T10:00:00Z"}]
    assert view["points"]["balance"] == 70  # c2's points are not c1's
    assert [(p["amount"], p["reason"]) for p in view["points"]["entries"]] == [
        (-30, "redeemed"), (100, "welcome")]

    code, out, _ = show(cli, synced, "c1")
    assert code == 0
    assert "none yet" not in out
    for text in ("winback-30d", "We miss you", "quiet hours", "Call Ada", "balance 70",
                 "redeemed"):
        assert text in out, text


def test_a_suppressed_address_matches_whatever_its_case(
        cli: Cli, synced: str, db: sa.Engine) -> None:
    with db.begin() as connection:
        connection.execute(sa.update(customers).where(customers.c.customer_id == "c1")
                           .values(email="Ada@Example.COM"))
    insert(db, Suppression, {"email": "ada@example.com", "reason": "unsubscribed",
                             "created_at": T0})
    view = show_json(cli, synced, "c1")
    assert view["suppressed"] == {"email": "ada@example.com", "reason": "unsubscribed",
                                  "created_at": "2024-05-01T09:00:00Z"}
    assert show_json(cli, synced, "c2")["suppressed"] is None
    _, out, _ = show(cli, synced, "c1")
    assert re.search(r"suppressed +│ yes: unsubscribed since 2024-05-01 09:00 ", out)


def test_values_from_the_data_are_never_read_as_markup(
        cli: Cli, synced: str, db: sa.Engine) -> None:
    with db.begin() as connection:
        connection.execute(sa.update(customers).where(customers.c.customer_id == "c3")
                           .values(name="[bold]Chen[/]"))
    _, out, _ = show(cli, synced, "c3")
    assert "[bold]Chen[/]" in out


def test_json_money_is_in_cents_and_times_in_whole_seconds(cli: Cli, synced: str,
                                                          db: sa.Engine) -> None:
    """A float sum of amounts carries binary noise (10.42 + 145.26 is 155.67999999999998), and a
    time synced with microseconds would print them: JSON shows cents and `...:SSZ` (clock.iso)."""
    insert(db, Event, *({"event_id": f"m{i}", "customer_id": "c4", "type": "purchase",
                         "occurred_at": T0 + timedelta(microseconds=123456 * i), "amount": amount,
                         "properties": {}} for i, amount in enumerate((10.42, 145.26), 1)))
    with db.begin() as connection:
        connection.execute(sa.update(customers).where(customers.c.customer_id == "c4")
                           .values(total_spent=10.42 + 145.26))
    view = show_json(cli, synced, "c4")
    assert view["facts"]["total_spent"] == 155.68
    times = [e["occurred_at"] for e in view["events"]["shown"]]
    assert times[:2] == ["2024-05-01T09:00:00Z", "2024-05-01T09:00:00Z"]
    stamps = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    values = [*view["customer"].values(), *view["facts"].values(),
              *(e["occurred_at"] for e in view["events"]["shown"])]
    assert all(stamps.match(v) for v in values if isinstance(v, str) and v[:2] in ("19", "20")
               and "T" in v)
