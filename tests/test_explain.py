"""`retain explain`: holdout, the trigger's window, an event trigger's `where` against the event,
money to the cent, and the far-past as-of warning; on both databases (the `db` fixture).

Data is hand-made through sync (tests/test_evaluate_triggers.py helpers), so the facts are the
ones sync keeps; playbooks are YAML written to tmp_path and loaded like `retain validate` does.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import Cli
from test_evaluate_triggers import AS_OF, add_customers, add_events, ago, customer, playbook

from engine.clock import iso
from engine.plan.build import make_plan
from engine.plan.planner import in_holdout
from engine.query.explain import Explanation, explain
from engine.query.staleness import stale_as_of_warning

TICKET = ("event: { type: support_ticket, lookback: 2d, "
          "where: [{ priority: { eq: high } }, { amount: { gte: 10 } }] }")


def explained(db: sa.Engine, pb: object, customer_id: str, as_of=AS_OF) -> Explanation:
    with db.connect() as connection:
        return explain(connection, pb, customer_id, as_of, holdout=in_holdout)  # type: ignore[arg-type]


@pytest.fixture
def crowd(db: sa.Engine) -> sa.Engine:
    """Twelve customers, each with a purchase of 155.68 made of amounts whose float sum is noisy."""
    add_customers(db, *(customer(f"k{n:02d}") for n in range(12)))
    add_events(db, *((f"k{n:02d}-{i}", f"k{n:02d}", "purchase", ago(days=40 + i), {"amount": a})
                     for n in range(12) for i, a in enumerate((10.42, 145.26))))
    return db


def test_holdout_is_said_and_agrees_with_the_plan(crowd: sa.Engine, tmp_path: Path) -> None:
    pb = playbook(tmp_path, "inactive: { days: 30 }", more="holdout: 50%\n")
    with crowd.connect() as connection:
        (plan,) = make_plan(connection, [pb], AS_OF).playbooks
        planned = {e.customer_id: e.holdout for e in plan.enrollments()}
    assert set(planned.values()) == {True, False}  # the 12 hashes fall on both sides
    for customer_id, held in planned.items():
        result = explained(crowd, pb, customer_id)
        assert result.entering and bool(result.holdout) is held
        assert result.to_json()["holdout"] is held


def test_cli_explain_says_holdout_gets_nothing(crowd: sa.Engine, db_url: str, tmp_path: Path,
                                              cli: Cli) -> None:
    pb = playbook(tmp_path, "inactive: { days: 30 }", more="holdout: 50%\n")
    held = next(f"k{n:02d}" for n in range(12)
                if in_holdout(pb, f"k{n:02d}", explained(crowd, pb, f"k{n:02d}").entering[0]))
    free = next(f"k{n:02d}" for n in range(12)
                if not in_holdout(pb, f"k{n:02d}", explained(crowd, pb, f"k{n:02d}").entering[0]))
    args = ["--db", db_url, "explain", "pb", "--playbooks", pb.file, "--as-of", iso(AS_OF)]
    code, out, _ = cli([*args[:4], held, *args[4:]])
    assert code == 0 and "ENTERS (holdout: gets nothing)" in out
    code, out, _ = cli([*args[:4], free, *args[4:]])
    assert code == 0 and "ENTERS for" in out and "holdout" not in out
    code, out, _ = cli([*args[:4], held, *args[4:], "--json"])
    assert json.loads(out)["holdout"] is True


def test_inactive_window_bounds(crowd: sa.Engine, tmp_path: Path) -> None:
    pb = playbook(tmp_path, "inactive: { days: 30 }")
    window = explained(crowd, pb, "k00").to_json()["window"]
    assert window["from"] is None and window["to"] == iso(AS_OF - timedelta(days=30))
    assert "30 days before as-of 2024-05-01T08:30:00Z" in window["text"]


def test_money_is_shown_to_the_cent(crowd: sa.Engine, tmp_path: Path, db_url: str,
                                   cli: Cli) -> None:
    pb = playbook(tmp_path, "inactive: { days: 30 }", when=[
        "total_spent: { gte: 100 }",
        "events: { type: purchase, sum: { field: amount, gte: 100 } }"])
    clauses = explained(crowd, pb, "k00").to_json()["clauses"]
    assert [c["actual"] for c in clauses[1:3]] == [155.68, 155.68]
    code, out, _ = cli(["--db", db_url, "explain", "pb", "k00", "--playbooks", pb.file,
                        "--as-of", iso(AS_OF)])
    assert code == 0 and "155.68 " in out and "155.67999" not in out


@pytest.fixture
def tickets(db: sa.Engine) -> sa.Engine:
    """lo: a low-priority ticket a day back; hi: a high one; old: a high one 5 days back."""
    add_customers(db, customer("lo"), customer("hi"), customer("old"))
    add_events(db,
               ("t-lo", "lo", "support_ticket", ago(days=1), {"priority": "low", "amount": 12}),
               ("t-hi", "hi", "support_ticket", ago(hours=3), {"priority": "high", "amount": 12}),
               ("t-old", "old", "support_ticket", ago(days=5), {"priority": "high",
                                                                "amount": 12}))
    return db


def test_event_where_clauses_against_the_event(tickets: sa.Engine, tmp_path: Path) -> None:
    pb = playbook(tmp_path, TICKET)
    low = explained(tickets, pb, "lo").to_json()
    assert not low["enters"] and low["trigger_event"]["event_id"] == "t-lo"
    where = {c["path"]: (c["wanted"], c["actual"], c["result"]) for c in low["clauses"]
             if ".where" in c["path"]}
    assert where == {"trigger.event.where[0].priority.eq": ("eq high", "low", False),
                     "trigger.event.where[1].amount.gte": ("gte 10", 12, True)}
    high = explained(tickets, pb, "hi").to_json()
    assert high["enters"] and high["trigger_event"]["event_id"] == "t-hi"
    assert all(c["result"] for c in high["clauses"])
    assert high["window"] == {"from": iso(AS_OF - timedelta(days=2)), "to": iso(AS_OF),
                              "text": "support_ticket events in (2024-04-29T08:30:00Z, "
                                      "2024-05-01T08:30:00Z] (lookback 2d)"}


def test_event_outside_the_window_is_still_shown(tickets: sa.Engine, tmp_path: Path) -> None:
    result = explained(tickets, playbook(tmp_path, TICKET), "old").to_json()
    assert not result["enters"] and result["trigger_event"]["event_id"] == "t-old"
    assert result["clauses"][0]["result"] is False  # the trigger: not in the window


def test_no_event_at_all(tickets: sa.Engine, tmp_path: Path) -> None:
    result = explained(tickets, playbook(tmp_path, "negative_feedback: {}"), "hi").to_json()
    assert result["trigger_event"] is None
    assert result["clauses"][1] == {"path": "trigger.negative_feedback.event", "depth": 1,
                                    "wanted": "a feedback event", "actual": None,
                                    "result": False}


def test_negative_feedback_shows_the_score(db: sa.Engine, tmp_path: Path) -> None:
    add_customers(db, customer("f"))
    add_events(db, ("fb", "f", "feedback", ago(hours=1), {"score": 8}))  # made-up NPS score
    result = explained(db, playbook(tmp_path, "negative_feedback: { max_score: 6 }"), "f")
    line = result.clauses[1]
    assert (line.path, line.wanted, line.actual, line.result) == (
        "trigger.negative_feedback.event", "with score <= 6", 8, False)


# ---- the far-past as-of warning ----------------------------------------------------------------


def test_stale_warning_names_the_day_after_the_latest_event() -> None:
    latest = AS_OF.replace(year=1998, month=6, day=30, hour=0, minute=0)
    assert stale_as_of_warning(latest + timedelta(days=90), latest) is None
    text = stale_as_of_warning(latest + timedelta(days=91), latest)
    assert text is not None and text.startswith(
        "latest event 1998-06-30: did you mean --as-of 1998-07-01?")
    assert stale_as_of_warning(AS_OF, None) is None


def test_dry_run_and_explain_warn_on_a_far_past_as_of(crowd: sa.Engine, db_url: str,
                                                     tmp_path: Path, cli: Cli) -> None:
    pb = playbook(tmp_path, "inactive: { days: 30 }")
    late = iso(AS_OF + timedelta(days=400))
    latest_day = (AS_OF - timedelta(days=40)).date()
    code, out, err = cli(["--db", db_url, "dry-run", pb.file, "--as-of", late])
    assert code == 0 and f"latest event {latest_day}: did you mean --as-of" in err
    assert "did you mean" not in out
    assert max(len(line) for line in err.splitlines()) <= 80  # folded, not one long line
    code, out, err = cli(["--db", db_url, "dry-run", pb.file, "--as-of", late, "--json"])
    (warning,) = (w for w in json.loads(out)["warnings"] if w["path"] == "--as-of")
    assert warning["message"].startswith(f"latest event {latest_day}")
    code, out, _ = cli(["--db", db_url, "dry-run", pb.file, "--as-of", iso(AS_OF), "--json"])
    assert not [w for w in json.loads(out)["warnings"] if w["path"] == "--as-of"]
    code, out, err = cli(["--db", db_url, "explain", "pb", "k00", "--playbooks", pb.file,
                          "--as-of", late])
    assert code == 0 and "did you mean --as-of" in err
    code, out, _ = cli(["--db", db_url, "explain", "pb", "k00", "--playbooks", pb.file,
                        "--as-of", late, "--json"])
    assert json.loads(out)["warnings"][0]["message"].startswith(f"latest event {latest_day}")


def test_date_and_backfill_windows(crowd: sa.Engine, tmp_path: Path) -> None:
    birthday = playbook(tmp_path, "date: { field: birthday, lookback: 3d }", pid="bday")
    window = explained(crowd, birthday, "k00").to_json()["window"]
    assert (window["from"], window["to"]) == (iso(AS_OF - timedelta(days=3)), iso(AS_OF))
    assert window["text"].startswith("month and day of birthday at 09:00 local in (")
    late = playbook(tmp_path, "inactive: { days: 30 }", more="backfill: false\n", pid="late")
    window = explained(crowd, late, "k00").to_json()["window"]
    assert window["from"] == iso(AS_OF - timedelta(days=30))  # never enabled: as-of stands in
    assert "backfill: false" in window["text"]
    segment = playbook(tmp_path, "segment: {}", pid="seg")
    assert explained(crowd, segment, "k00").window is None
