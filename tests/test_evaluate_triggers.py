"""Triggers, re-entry, backfill, --as-of and the plan, on hand-made data with known answers.

Everything goes through the public API on both databases (the `db` fixture): playbooks are parsed
from YAML text written to `tmp_path` (the same loader `retain validate` and dry-run use),
customers and events are synced with `ingest_customers` / `ingest_events` (so the derived facts
are the ones sync keeps), and enrollments / playbook versions are inserted directly. Then:

    moment = prepare(connection, as_of, [playbook])
    rows = candidates(connection, playbook_query(playbook, moment.trigger_context(playbook.id)))

gives who enters and for which occurrence key; `make_plan` and the `retain dry-run` CLI are
checked on top. Sections follow DESIGN 2.1 (triggers), 2.2 (conditions, re-entry, backfill),
3 (the plan) and 5 (--as-of, the CLI); engine/format/triggers.py's docstring is the semantics table.

Most tests evaluate at AS_OF (2024-05-01T08:30:00Z) with every event at or before it, so the
kept facts describe the instant; section 10 adds later events on purpose (historical mode).
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Cli

from engine.clock import iso
from engine.format.playbook import Playbook
from engine.format.validation import load_valid_playbooks
from engine.plan.build import Plan, make_plan
from engine.plan.planner import PlannedAction, PlannedEnrollment
from engine.query.evaluate import candidates, playbook_query, prepare
from engine.store.facts import customers
from engine.store.tables import Enrollment, PlaybookVersion, Suppression
from engine.sync.ingest import ingest_customers, ingest_events

AS_OF = datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
SYNCED = datetime(2019, 1, 1, tzinfo=UTC)  # first_synced_at: never equal to a given created_at
LONG_AGO = "2020-01-01T00:00:00Z"  # created_at of customers whose creation does not matter
TASK = '  - task: { title: "Call {{ customer.customer_id }}" }\n'

enrollments: sa.Table = Enrollment.__table__  # type: ignore[assignment]
versions: sa.Table = PlaybookVersion.__table__  # type: ignore[assignment]
suppressions: sa.Table = Suppression.__table__  # type: ignore[assignment]
_files = itertools.count(1)


# ---- helpers -----------------------------------------------------------------------------------


def ago(**delta: float) -> datetime:
    """An instant before AS_OF: `ago(days=31)`."""
    return AS_OF - timedelta(**delta)


def customer(customer_id: str, created: datetime | str = LONG_AGO, **fields: Any) -> dict[str, Any]:
    """A customer row as a customer file spells it."""
    created_text = created if isinstance(created, str) else iso(created)
    return {"customer_id": customer_id, "created_at": created_text, **fields}


def add_customers(db: sa.Engine, *rows: dict[str, Any]) -> None:
    report = ingest_customers(db, list(enumerate(rows, 2)), "customers", now=SYNCED)
    assert not report.rejected, report.rejected
    assert report.inserted + report.updated == len(rows)


Ev = tuple[str, str, str, datetime, dict[str, Any]]  # event_id, customer_id, type, time, properties


def add_events(db: sa.Engine, *rows: Ev) -> None:
    report = ingest_events(db, [(n, {"event_id": eid, "customer_id": cid, "type": kind,
                                     "occurred_at": iso(when), "properties": props})
                                for n, (eid, cid, kind, when, props) in enumerate(rows, 2)],
                           "events")
    assert not report.rejected, report.rejected
    assert report.inserted == len(rows)


def playbook(tmp_path: Path, trigger: str, *, when: list[str] | None = None, more: str = "",
             actions: str = TASK, pid: str = "pb") -> Playbook:
    """A playbook from YAML text: `trigger` and each `when` item are one-line YAML mappings."""
    text = f"id: {pid}\nname: Test playbook {pid}\ntrigger:\n  {trigger}\n"
    if when:
        text += "when:\n" + "".join(f"  - {item}\n" for item in when)
    text += more + "actions:\n" + actions
    folder = tmp_path / "playbooks"
    folder.mkdir(exist_ok=True)
    path = folder / f"{pid}-{next(_files)}.yaml"
    path.write_text(text, encoding="utf-8")
    loaded = load_valid_playbooks([path], env={})
    assert len(loaded) == 1
    return loaded[0]


def entering_rows(db: sa.Engine, pb: Playbook, as_of: datetime = AS_OF) -> list[tuple[str, str]]:
    """(customer_id, occurrence) of every row the playbook's one query gives, sorted."""
    with db.connect() as connection:
        moment = prepare(connection, as_of, [pb])
        rows = list(candidates(connection, playbook_query(pb, moment.trigger_context(pb.id))))
    return sorted((row.customer_id, row.occurrence) for row in rows)


def entering(db: sa.Engine, pb: Playbook, as_of: datetime = AS_OF) -> dict[str, str]:
    """customer_id -> occurrence, for tests where a customer enters at most once."""
    rows = entering_rows(db, pb, as_of)
    found = dict(rows)
    assert len(found) == len(rows), f"a customer entered twice: {rows}"
    return found


def enroll(db: sa.Engine, customer_id: str, occurrence: str, entered_at: datetime, *,
           playbook_id: str = "pb", left_at: datetime | None = None) -> None:
    """An enrollment row as a live run would have written it."""
    with db.begin() as connection:
        connection.execute(sa.insert(enrollments).values(
            playbook_id=playbook_id, version="v1", customer_id=customer_id,
            occurrence_key=occurrence, entered_at=entered_at, status="active", holdout=False,
            step=0, left_at=left_at))


def enable(db: sa.Engine, enabled_at: datetime | None, playbook_id: str = "pb") -> None:
    """A playbook_versions row: the playbook was first enabled live at `enabled_at`."""
    with db.begin() as connection:
        connection.execute(sa.insert(versions).values(
            playbook_id=playbook_id, version="v1", source="id: pb\n", enabled_at=enabled_at,
            created_at=enabled_at or AS_OF))


def plan_of(db: sa.Engine, pbs: list[Playbook], as_of: datetime = AS_OF) -> Plan:
    with db.connect() as connection:
        return make_plan(connection, pbs, as_of)


def by_customer(plan: Plan) -> dict[str, PlannedEnrollment]:
    (only,) = plan.playbooks
    found = {e.customer_id: e for e in only.shown}
    assert len(found) == len(only.shown)
    return found


# ---- 1. inactive -------------------------------------------------------------------------------


@pytest.fixture
def inactive_shop(db: sa.Engine) -> sa.Engine:
    """Customers around the 30-day line, with odd seconds so the key's spelling is checked."""
    add_customers(db,
                  customer("a31", created=ago(days=100)),
                  customer("a29", created=ago(days=100)),
                  customer("a30", created=ago(days=100)),
                  customer("new40", created=ago(days=40, minutes=1)),
                  customer("new20", created=ago(days=20)),
                  customer("buyer", created=ago(days=100)),
                  customer("mailed", created=ago(days=100)))
    add_events(db,
               ("l-a31", "a31", "login", ago(days=31, hours=3, minutes=7, seconds=5), {}),
               ("l-a29", "a29", "login", ago(days=29), {}),
               ("l-a30", "a30", "login", ago(days=30), {}),  # exactly on the line: enters
               ("l-buyer", "buyer", "login", ago(days=40), {}),
               ("p-buyer", "buyer", "purchase", ago(days=5), {"amount": 10}),
               ("p-mailed", "mailed", "purchase", ago(days=35), {"amount": 10}),
               ("m-mailed", "mailed", "email_sent", ago(days=2), {}))
    return db


def test_inactive_enters_past_the_threshold_keyed_by_last_activity(
        inactive_shop: sa.Engine, tmp_path: Path) -> None:
    pb = playbook(tmp_path, "inactive: { days: 30 }")
    assert entering(inactive_shop, pb) == {
        "a31": "2024-03-31T05:22:55Z",  # 31 days 3:07:05 before AS_OF
        "a30": "2024-04-01T08:30:00Z",
        "new40": "2024-03-22T08:29:00Z",  # no events: created_at is the last activity
        "mailed": "2024-03-27T08:30:00Z",  # its later email_sent is the engine's, not activity
    }  # a29 (29 days), new20 (created 20 days ago) and buyer (purchase 5 days ago) stay out


def test_inactive_with_activity_types_reads_only_those_events(
        inactive_shop: sa.Engine, tmp_path: Path) -> None:
    pb = playbook(tmp_path, "inactive: { days: 30, activity: [login] }")
    assert entering(inactive_shop, pb) == {
        "a31": "2024-03-31T05:22:55Z",
        "a30": "2024-04-01T08:30:00Z",
        "new40": "2024-03-22T08:29:00Z",
        "buyer": "2024-03-22T08:30:00Z",  # the purchase 5 days ago is not a login
        "mailed": "2024-01-22T08:30:00Z",  # no login at all: created_at
    }


def test_inactive_key_follows_the_episode(inactive_shop: sa.Engine, tmp_path: Path) -> None:
    # a29 crosses the line two days later, keyed by the same login time.
    pb = playbook(tmp_path, "inactive: { days: 30 }")
    assert entering(inactive_shop, pb, AS_OF + timedelta(days=1))["a29"] == \
        "2024-04-02T08:30:00Z"
    assert "a29" not in entering(inactive_shop, pb, AS_OF + timedelta(hours=23))


# ---- 2. first_purchase -------------------------------------------------------------------------


@pytest.fixture
def purchase_shop(db: sa.Engine) -> sa.Engine:
    add_customers(db, customer("fresh"), customer("repeat"), customer("twodays"),
                  customer("none"), customer("edge"), customer("now"))
    add_events(db,
               ("p-fresh", "fresh", "purchase", ago(hours=5), {"amount": 20}),
               ("p-repeat-1", "repeat", "purchase", ago(days=60), {"amount": 20}),
               ("p-repeat-2", "repeat", "purchase", ago(hours=2), {"amount": 20}),
               ("p-twodays", "twodays", "purchase", ago(days=2), {"amount": 20}),
               ("l-none", "none", "login", ago(hours=1), {}),
               ("p-edge", "edge", "purchase", ago(days=1), {"amount": 20}),  # window is open here
               ("p-now", "now", "purchase", AS_OF, {"amount": 20}))  # ... and closed here
    return db


def test_first_purchase_in_the_lookback_enters_keyed_by_event_id(
        purchase_shop: sa.Engine, tmp_path: Path) -> None:
    pb = playbook(tmp_path, "first_purchase: {}")
    # repeat bought 60 days earlier; twodays and edge (exactly 1 day back) are outside (as_of - 1d,
    # as_of]; the non-purchase event of `none` is ignored
    assert entering(purchase_shop, pb) == {"fresh": "p-fresh", "now": "p-now"}


def test_first_purchase_lookback_widens_the_window(purchase_shop: sa.Engine,
                                                   tmp_path: Path) -> None:
    pb = playbook(tmp_path, "first_purchase: { lookback: 3d }")
    assert entering(purchase_shop, pb) == {"fresh": "p-fresh", "now": "p-now",
                                           "edge": "p-edge", "twodays": "p-twodays"}


# ---- 3. negative_feedback ----------------------------------------------------------------------


def test_negative_feedback_fires_at_or_below_max_score(db: sa.Engine, tmp_path: Path) -> None:
    add_customers(db, customer("six"), customer("seven"), customer("blank"), customer("two"),
                  customer("old"))
    add_events(db,
               ("f-six", "six", "feedback", ago(hours=3), {"score": 6}),
               ("f-seven", "seven", "feedback", ago(hours=3), {"score": 7}),
               ("f-blank", "blank", "feedback", ago(hours=3), {"comment": "meh"}),
               ("f-two-a", "two", "feedback", ago(hours=5), {"score": 0}),
               ("f-two-b", "two", "feedback", ago(hours=4), {"score": 3}),
               ("f-old", "old", "feedback", ago(days=3), {"score": 1}))
    pb = playbook(tmp_path, "negative_feedback: { max_score: 6 }")
    # Each event is its own occurrence: two detractor answers, two rows.
    assert entering_rows(db, pb) == [("six", "f-six"), ("two", "f-two-a"), ("two", "f-two-b")]
    default = playbook(tmp_path, "negative_feedback: {}", pid="default")  # max_score 6
    assert entering_rows(db, default) == entering_rows(db, pb)
    strict = playbook(tmp_path, "negative_feedback: { max_score: 2 }", pid="strict")
    assert entering_rows(db, strict) == [("two", "f-two-a")]


# ---- 4. event ----------------------------------------------------------------------------------


def test_event_trigger_matches_type_and_properties(db: sa.Engine, tmp_path: Path) -> None:
    add_customers(db, customer("hi"), customer("lo"), customer("other"), customer("nopri"))
    add_events(db,
               ("t-hi", "hi", "support_ticket", ago(hours=2), {"priority": "high"}),
               ("t-lo", "lo", "support_ticket", ago(hours=2), {"priority": "low"}),
               ("x-other", "other", "complaint", ago(hours=2), {"priority": "high"}),
               ("t-nopri", "nopri", "support_ticket", ago(hours=2), {}))
    pb = playbook(tmp_path, "event: { type: support_ticket, where: [{ priority: { eq: high } }] }")
    assert entering(db, pb) == {"hi": "t-hi"}
    every_ticket = playbook(tmp_path, "event: { type: support_ticket }", pid="all-tickets")
    assert entering(db, every_ticket) == {"hi": "t-hi", "lo": "t-lo", "nopri": "t-nopri"}


def test_event_trigger_where_reads_the_typed_amount(db: sa.Engine, tmp_path: Path) -> None:
    add_customers(db, customer("paid"), customer("free"), customer("refund"), customer("noamt"))
    add_events(db,
               ("r-paid", "paid", "renewal", ago(hours=1), {"amount": 12.5}),
               ("r-free", "free", "renewal", ago(hours=1), {"amount": 0}),
               ("r-refund", "refund", "renewal", ago(hours=1), {"amount": -5}),
               ("r-noamt", "noamt", "renewal", ago(hours=1), {"plan": "x"}))
    pb = playbook(tmp_path, "event: { type: renewal, where: [{ amount: { gt: 0 } }] }")
    assert entering(db, pb) == {"paid": "r-paid"}


# ---- 5. date -----------------------------------------------------------------------------------


@pytest.fixture
def birthdays(db: sa.Engine) -> sa.Engine:
    add_customers(db,
                  customer("berlin", birthday="1990-05-01", timezone="Europe/Berlin"),
                  customer("newyork", birthday="1990-05-01", timezone="America/New_York"),
                  customer("nozone", birthday="1985-05-01"),
                  customer("yesterday", birthday="1980-04-30"),
                  customer("twodays", birthday="1980-04-29"),
                  customer("nextweek", birthday="1992-05-08", timezone="Europe/Berlin"),
                  customer("nobirthday"))
    return db


def test_birthday_fires_at_nine_local_within_the_lookback(birthdays: sa.Engine,
                                                         tmp_path: Path) -> None:
    pb = playbook(tmp_path, "date: { field: birthday }")
    # 08:30Z: 09:00 Berlin (07:00Z) has passed, 09:00 New York (13:00Z) and 09:00 UTC have not;
    # yesterday's 09:00 UTC is 23.5 hours back, inside the 1-day lookback.
    assert entering(birthdays, pb) == {"berlin": "2024", "yesterday": "2024"}


def test_birthday_without_time_zone_is_utc(birthdays: sa.Engine, tmp_path: Path) -> None:
    pb = playbook(tmp_path, "date: { field: birthday }")
    assert entering(birthdays, pb, datetime(2024, 5, 1, 9, 30, tzinfo=UTC)) == {
        "berlin": "2024", "nozone": "2024"}  # yesterday's 09:00 is now more than a day back
    assert entering(birthdays, pb, datetime(2024, 5, 1, 13, 0, tzinfo=UTC)) == {
        "berlin": "2024", "nozone": "2024", "newyork": "2024"}


def test_birthday_lookback_and_offset(birthdays: sa.Engine, tmp_path: Path) -> None:
    wide = playbook(tmp_path, "date: { field: birthday, lookback: 3d }")
    assert entering(birthdays, wide) == {"berlin": "2024", "yesterday": "2024",
                                         "twodays": "2024"}
    early = playbook(tmp_path, "date: { field: birthday, offset: -7d }", pid="early")
    # 7 days before May 8, 09:00 Berlin = May 1 07:00Z; berlin's fired a week ago.
    assert entering(birthdays, early) == {"nextweek": "2024"}


def test_february_29_falls_on_february_28_in_other_years(db: sa.Engine, tmp_path: Path) -> None:
    add_customers(db, customer("leap", birthday="2000-02-29"),
                  customer("feb28", birthday="1999-02-28"),
                  customer("mar1", birthday="1999-03-01"))
    pb = playbook(tmp_path, "date: { field: birthday }")
    assert entering(db, pb, datetime(2023, 2, 28, 10, tzinfo=UTC)) == {"leap": "2023",
                                                                       "feb28": "2023"}
    assert entering(db, pb, datetime(2024, 2, 28, 10, tzinfo=UTC)) == {"feb28": "2024"}
    assert entering(db, pb, datetime(2024, 2, 29, 10, tzinfo=UTC)) == {"leap": "2024"}
    assert entering(db, pb, datetime(2023, 3, 1, 10, tzinfo=UTC)) == {"mar1": "2023"}


# ---- 6. schedule -------------------------------------------------------------------------------


@pytest.fixture
def countries(db: sa.Engine) -> sa.Engine:
    add_customers(db, customer("se1", country="SE"), customer("se2", country="SE"),
                  customer("no1", country="NO"), customer("none"))
    return db


def test_schedule_tick_enters_everyone_matching_when(countries: sa.Engine,
                                                    tmp_path: Path) -> None:
    pb = playbook(tmp_path, 'schedule: { cron: "0 9 * * *" }', when=["country: { eq: SE }"])
    at_930 = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    assert entering(countries, pb, at_930) == {"se1": "2024-05-01T09:00:00Z",
                                               "se2": "2024-05-01T09:00:00Z"}
    (part,) = plan_of(countries, [pb], at_930).playbooks
    assert part.entering == 2 and part.note == "tick 2024-05-01T09:00:00Z"
    enroll(countries, "se2", "2024-05-01T09:00:00Z", at_930)  # this tick is done for se2
    assert entering(countries, pb, at_930) == {"se1": "2024-05-01T09:00:00Z"}
    next_day = datetime(2024, 5, 2, 9, 0, tzinfo=UTC)  # a tick exactly at as_of is due
    assert entering(countries, pb, next_day) == {"se1": "2024-05-02T09:00:00Z",
                                                 "se2": "2024-05-02T09:00:00Z"}


def test_schedule_skips_a_tick_more_than_an_hour_late(countries: sa.Engine,
                                                     tmp_path: Path) -> None:
    pb = playbook(tmp_path, 'schedule: { cron: "0 9 * * *" }', when=["country: { eq: SE }"])
    at_1100 = datetime(2024, 5, 1, 11, 0, tzinfo=UTC)
    assert entering(countries, pb, at_1100) == {}
    (part,) = plan_of(countries, [pb], at_1100).playbooks
    assert part.entering == 0 and part.shown == []
    assert part.note == ("no tick due: the last was 2024-05-01T09:00:00Z, more than 1 hour "
                         "before as-of")


# ---- 7. segment --------------------------------------------------------------------------------


def test_segment_enters_those_without_an_open_membership(db: sa.Engine, tmp_path: Path) -> None:
    add_customers(db, *(customer(cid, segment="gold") for cid in ("new", "inside", "left",
                                                                  "elsewhere")),
                  customer("silver", segment="silver"))
    enroll(db, "inside", "2024-04-01T00:00:00Z", ago(days=30))  # still in the segment
    enroll(db, "left", "2024-03-01T00:00:00Z", ago(days=60), left_at=ago(days=10))
    enroll(db, "elsewhere", "2024-04-01T00:00:00Z", ago(days=30), playbook_id="other")
    pb = playbook(tmp_path, "segment: {}", when=["segment: { eq: gold }"])
    key = "2024-05-01T08:30:00Z"  # the entry time
    assert entering(db, pb) == {"new": key, "left": key, "elsewhere": key}


# ---- 8. re-entry -------------------------------------------------------------------------------


@pytest.fixture
def lapsed(db: sa.Engine) -> sa.Engine:
    """Five customers, each last active exactly 40 days ago (key 2024-03-22T08:30:00Z)."""
    add_customers(db, *(customer(cid, created=ago(days=40)) for cid in
                        ("fresh", "same", "other", "recent", "old")))
    return db


KEY = "2024-03-22T08:30:00Z"
EARLIER_KEY = "2023-11-01T00:00:00Z"


def test_reentry_once_is_per_occurrence_key(lapsed: sa.Engine, tmp_path: Path) -> None:
    enroll(lapsed, "same", KEY, ago(days=10))
    enroll(lapsed, "other", EARLIER_KEY, ago(days=10))  # an earlier episode
    enroll(lapsed, "recent", KEY, ago(days=10), playbook_id="another")  # another playbook
    pb = playbook(tmp_path, "inactive: { days: 30 }", more="reentry: once\n")
    assert sorted(entering(lapsed, pb)) == ["fresh", "old", "other", "recent"]
    # `always` keeps the key rule: the same episode never enters twice
    always = playbook(tmp_path, "inactive: { days: 30 }", more="reentry: always\n")
    assert sorted(entering(lapsed, always)) == ["fresh", "old", "other", "recent"]


def test_reentry_every_is_per_window_whatever_the_key(lapsed: sa.Engine, tmp_path: Path) -> None:
    enroll(lapsed, "same", KEY, ago(days=100))  # same key: still out, however long ago
    enroll(lapsed, "recent", EARLIER_KEY, ago(days=10))
    enroll(lapsed, "old", EARLIER_KEY, ago(days=100))
    pb = playbook(tmp_path, "inactive: { days: 30 }", more="reentry: { every: 90d }\n")
    assert entering(lapsed, pb) == {"fresh": KEY, "other": KEY, "old": KEY}


# ---- 9. conditions in `when` -------------------------------------------------------------------


@pytest.fixture
def people(db: sa.Engine) -> sa.Engine:
    add_customers(db,
                  customer("c1", created=ago(days=300), email="c1@example.com", country="SE",
                           segment="gold", tags=["vip"],
                           attributes={"plan": "premium", "seats": 10}),
                  customer("c2", created=ago(days=50), country="NO", segment="silver",
                           attributes={"plan": "basic"}),
                  customer("c3", created=ago(days=5)))
    add_events(db,
               ("p1", "c1", "purchase", ago(days=200), {"amount": 500}),
               ("p2", "c1", "purchase", ago(days=20), {"amount": 40}),
               ("p3", "c1", "purchase", ago(days=3), {"amount": 70}),
               ("p4", "c2", "purchase", ago(days=10), {"amount": 5}))
    return db


WHEN_CASES: list[tuple[str, set[str]]] = [
    ("country: { eq: SE }", {"c1"}),
    ("country: { ne: SE }", {"c2"}),  # c3 has no country: neither equal nor unequal
    ("purchase_count: { gt: 1 }", {"c1"}),
    ("purchase_count: { gte: 1 }", {"c1", "c2"}),
    ("purchase_count: { lt: 1 }", {"c3"}),
    ("purchase_count: { lte: 1 }", {"c2", "c3"}),
    ("segment: { in: [gold, silver] }", {"c1", "c2"}),
    ("segment: { not_in: [gold] }", {"c2"}),
    ("tags: { contains: vip }", {"c1"}),
    ("email: { is_null: true }", {"c2", "c3"}),
    ("total_spent: { between: [5, 110] }", {"c2"}),  # c1 spent 610
    ("created_at: { older_than: 30d }", {"c1", "c2"}),
    ("created_at: { within: 30d }", {"c3"}),
    ("attributes.plan: { eq: premium }", {"c1"}),
    ("attributes.seats: { gte: 10 }", {"c1"}),
    ("any: [{ country: { eq: 'NO' } }, { tags: { contains: vip } }]", {"c1", "c2"}),
    ("all: [{ segment: { eq: gold } }, { country: { eq: SE } }]", {"c1"}),
    ("not: { country: { eq: SE } }", {"c2", "c3"}),
    ("events: { type: purchase, within: 30d, count: { gte: 2 } }", {"c1"}),
    ("events: { type: purchase, within: 90d, sum: { field: amount, gte: 100 } }", {"c1"}),
    ("events: { type: purchase, sum: { field: amount, gte: 600 } }", {"c1"}),
    ("events: { count: { eq: 0 } }", {"c3"}),
]


def test_when_operators_through_a_playbook_query(people: sa.Engine, tmp_path: Path) -> None:
    wrong = []
    for n, (item, want) in enumerate(WHEN_CASES):
        pb = playbook(tmp_path, "segment: {}", when=[item], pid=f"case-{n}")
        got = set(entering(people, pb))
        if got != want:
            wrong.append(f"{item}: want {sorted(want)}, got {sorted(got)}")
    assert not wrong, "\n".join(wrong)


def test_every_when_item_must_hold(people: sa.Engine, tmp_path: Path) -> None:
    pb = playbook(tmp_path, "segment: {}", when=["purchase_count: { gte: 1 }",
                                                 "email: { is_null: true }"])
    assert set(entering(people, pb)) == {"c2"}


# ---- 10. --as-of: only events up to it ---------------------------------------------------------


@pytest.fixture
def time_travel(db: sa.Engine) -> sa.Engine:
    """hx: a login 40 days before AS_OF, a first purchase a day after; hz: bought before and after.
    """
    add_customers(db, customer("hx", created=ago(days=60)), customer("hz", created=ago(days=60)))
    add_events(db,
               ("l-hx", "hx", "login", ago(days=40), {}),
               ("hx-p1", "hx", "purchase", AS_OF + timedelta(days=1), {"amount": 100}),
               ("hz-p1", "hz", "purchase", ago(hours=2), {"amount": 30}),
               ("hz-p2", "hz", "purchase", AS_OF + timedelta(days=1), {"amount": 70}))
    return db


def test_as_of_before_the_latest_event_is_historical(time_travel: sa.Engine) -> None:
    with time_travel.connect() as connection:
        assert prepare(connection, AS_OF, []).historical is True
        assert prepare(connection, AS_OF + timedelta(days=2), []).historical is False
        kept = dict(connection.execute(sa.select(customers.c.customer_id,
                                                 customers.c.purchase_count)).all())
    assert kept == {"hx": 1, "hz": 2}  # the kept facts describe the present


def test_first_purchase_as_of_sees_only_earlier_events(time_travel: sa.Engine,
                                                      tmp_path: Path) -> None:
    pb = playbook(tmp_path, "first_purchase: {}")
    assert entering(time_travel, pb) == {"hz": "hz-p1"}
    assert entering(time_travel, pb, AS_OF + timedelta(days=1, hours=1)) == {"hx": "hx-p1"}


@pytest.mark.parametrize(("item", "want"), [
    ("events: { type: purchase, count: { gte: 1 } }", {"hz"}),
    ("events: { type: purchase, sum: { field: amount, eq: 30 } }", {"hz"}),
    ("purchase_count: { eq: 0 }", {"hx"}),
    ("purchase_count: { eq: 1 }", {"hz"}),
    ("total_spent: { eq: 30 }", {"hz"}),
    ("total_spent: { gte: 100 }", set()),  # the kept facts would say both
    ("last_active_at: { older_than: 30d }", {"hx"}),
])
def test_when_as_of_sees_only_earlier_events(time_travel: sa.Engine, tmp_path: Path, item: str,
                                             want: set[str]) -> None:
    pb = playbook(tmp_path, "segment: {}", when=[item])
    assert set(entering(time_travel, pb)) == want


def test_inactive_as_of_computes_last_activity_then(time_travel: sa.Engine,
                                                   tmp_path: Path) -> None:
    pb = playbook(tmp_path, "inactive: { days: 30 }")
    assert entering(time_travel, pb) == {"hx": "2024-03-22T08:30:00Z"}  # its login, 40 days back
    assert entering(time_travel, pb, AS_OF + timedelta(days=2)) == {}  # both bought since


# ---- 11. backfill: false -----------------------------------------------------------------------


@pytest.fixture
def thresholds(db: sa.Engine) -> sa.Engine:
    """Last activity 29, 32 and 40 days before AS_OF (no events: created_at)."""
    add_customers(db, customer("b29", created=ago(days=29)), customer("b32", created=ago(days=32)),
                  customer("b40", created=ago(days=40)))
    return db


def test_backfill_true_enrolls_everyone_already_past(thresholds: sa.Engine,
                                                    tmp_path: Path) -> None:
    pb = playbook(tmp_path, "inactive: { days: 30 }")
    assert sorted(entering(thresholds, pb)) == ["b32", "b40"]


def test_backfill_false_before_the_first_enable_enrolls_nobody(thresholds: sa.Engine,
                                                              tmp_path: Path) -> None:
    pb = playbook(tmp_path, "inactive: { days: 30 }", more="backfill: false\n")
    assert entering(thresholds, pb) == {}
    enable(thresholds, None)  # a version row that was never enabled changes nothing
    assert entering(thresholds, pb) == {}


def test_backfill_false_enrolls_only_crossings_after_the_enable(thresholds: sa.Engine,
                                                               tmp_path: Path) -> None:
    pb = playbook(tmp_path, "inactive: { days: 30 }", more="backfill: false\n")
    enable(thresholds, ago(days=5))  # b32 crossed 2 days ago; b40 10 days ago, before it
    assert entering(thresholds, pb) == {"b32": "2024-03-30T08:30:00Z"}
    enable(thresholds, ago(days=1), playbook_id="unrelated")  # another playbook's enable
    assert entering(thresholds, pb) == {"b32": "2024-03-30T08:30:00Z"}


# ---- 12. make_plan -----------------------------------------------------------------------------


def test_holdout_is_deterministic_and_gets_no_actions(db: sa.Engine, tmp_path: Path) -> None:
    add_customers(db, *(customer(f"h{n:03}", email=f"h{n:03}@example.com") for n in range(200)))
    pb = playbook(tmp_path, "segment: {}", more="holdout: 50%\n",
                  actions='  - email: { subject: "Hi", body: "Hello" }\n')
    first, second = plan_of(db, [pb]), plan_of(db, [pb])
    groups = {e.customer_id: e.holdout for e in by_customer(first).values()}
    assert len(groups) == 200
    assert groups == {e.customer_id: e.holdout for e in by_customer(second).values()}
    held = [cid for cid, holdout in groups.items() if holdout]
    assert 60 <= len(held) <= 140
    for enrollment in by_customer(first).values():
        if enrollment.holdout:
            assert enrollment.actions == ()
        else:
            assert [a.kind for a in enrollment.actions] == ["email"]
            assert enrollment.actions[0].status == "planned"


def test_limits_mark_the_playbook_over_with_the_numbers(db: sa.Engine, tmp_path: Path) -> None:
    add_customers(db, *(customer(cid, country="SE") for cid in ("a", "b", "c")),
                  customer("d", country="NO"))
    over = playbook(tmp_path, "segment: {}", when=["country: { eq: SE }"],
                    more="limits: { max_enrollments: 2 }\n")
    (part,) = plan_of(db, [over]).playbooks
    assert part.entering == 3
    assert part.over_limit is not None
    assert "3 would enter" in part.over_limit and "max_enrollments 2" in part.over_limit
    fits = playbook(tmp_path, "segment: {}", when=["country: { eq: SE }"],
                    more="limits: { max_enrollments: 3 }\n", pid="fits")
    assert plan_of(db, [fits]).playbooks[0].over_limit is None
    share = playbook(tmp_path, "segment: {}", when=["country: { eq: SE }"],
                     more="limits: { max_percent: 50% }\n", pid="share")
    message = plan_of(db, [share]).playbooks[0].over_limit
    assert message is not None and "max_percent 50% = 2 of 4 customers" in message


@pytest.fixture
def mail_plan(db: sa.Engine, tmp_path: Path) -> dict[str, PlannedEnrollment]:
    """ann's address is suppressed (stored lower-cased), bob has none, cy gets everything."""
    add_customers(db, customer("ann", email="Ann@Example.COM", name="Ann"),
                  customer("bob", name="Bob"),
                  customer("cy", email="cy@example.com", name="Cy"))
    with db.begin() as connection:
        connection.execute(sa.insert(suppressions).values(
            email="ann@example.com", reason="unsubscribed", created_at=ago(days=3)))
    pb = playbook(tmp_path, "segment: {}", actions=(
        '  - email: { subject: "Hello {{ customer.name }}", body: "We miss you" }\n'
        "  - wait: 3d\n"
        '  - task: { title: "Call {{ customer.name }}", assignee: team, due_in: 2d }\n'))
    plan = plan_of(db, [pb])
    assert plan.errors == []
    return by_customer(plan)


def test_email_is_skipped_without_address_and_suppressed_in_any_case(
        mail_plan: dict[str, PlannedEnrollment]) -> None:
    assert sorted(mail_plan) == ["ann", "bob", "cy"]
    email = {cid: e.actions[0] for cid, e in mail_plan.items()}
    assert (email["bob"].status, email["bob"].reason) == ("skipped", "no email address")
    assert email["ann"].status == "suppressed"
    assert email["ann"].reason == "address is suppressed (unsubscribed)"
    assert email["ann"].fields["to"] == "Ann@Example.COM"
    assert email["cy"].status == "planned" and email["cy"].reason is None
    # the task does not need an address: planned for everyone
    assert {cid: e.actions[1].status for cid, e in mail_plan.items()} == {
        "ann": "planned", "bob": "planned", "cy": "planned"}


def test_actions_are_rendered_and_timed_after_waits(
        mail_plan: dict[str, PlannedEnrollment]) -> None:
    email, task = mail_plan["cy"].actions
    assert isinstance(email, PlannedAction) and isinstance(task, PlannedAction)
    assert (email.kind, email.step, email.run_at) == ("email", 0, AS_OF)
    assert email.fields["subject"] == "Hello Cy" and email.fields["to"] == "cy@example.com"
    assert (task.kind, task.step, task.run_at) == ("task", 2, AS_OF + timedelta(days=3))
    assert task.fields["due_at"] == AS_OF + timedelta(days=5)  # due 2 days after it runs
    assert task.fields["title"] == "Call Cy" and task.fields["assignee"] == "team"
    assert mail_plan["bob"].actions[1].fields["title"] == "Call Bob"


# ---- 13. the CLI -------------------------------------------------------------------------------


@pytest.fixture
def cli_project(db: sa.Engine, tmp_path: Path) -> Path:
    """A welcome playbook; ann and bob made their first purchase in the last day, cy earlier."""
    add_customers(db, customer("ann", email="ann@example.com", name="Ann"),
                  customer("bob", email="bob@example.com", name="Bob"),
                  customer("cy", email="cy@example.com", name="Cy"))
    add_events(db,
               ("p-ann", "ann", "purchase", ago(hours=2), {"amount": 10}),
               ("p-bob", "bob", "purchase", ago(hours=20), {"amount": 10}),
               ("p-cy", "cy", "purchase", ago(days=9), {"amount": 10}))
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "welcome.yaml").write_text(
        "id: welcome\nname: Welcome\ntrigger:\n  first_purchase: {}\nactions:\n"
        '  - email: { subject: "Welcome {{ customer.name }}", body: "Thanks" }\n'
        "  - wait: 1d\n"
        '  - task: { title: "Check on {{ customer.name }}", due_in: 2d }\n', encoding="utf-8")
    return folder


def test_cli_dry_run_json_lists_enrollments_and_actions(cli_project: Path, db_url: str,
                                                       cli: Cli) -> None:
    code, out, err = cli(["--db", db_url, "dry-run", str(cli_project), "--as-of",
                          "2024-05-01T08:30:00Z", "--json"])
    assert code == 0, err
    document = json.loads(out)
    assert document["as_of"] == "2024-05-01T08:30:00Z" and document["historical"] is False
    (welcome,) = document["playbooks"]
    assert (welcome["id"], welcome["entering"]) == ("welcome", 2)
    found = {e["customer_id"]: e for e in welcome["enrollments"]}
    assert sorted(found) == ["ann", "bob"]
    ann = found["ann"]
    assert (ann["occurrence"], ann["event_id"], ann["holdout"]) == ("p-ann", "p-ann", False)
    email, task = ann["actions"]
    key = email.pop("key")
    assert key.startswith("welcome/ann/0.0/") and len(key) <= 255
    assert email == {"type": "email", "step": 0, "stage": 0, "commit_now": True,
                     "run_at": "2024-05-01T08:30:00Z",
                     "status": "planned", "fields": {"to": "ann@example.com",
                                                     "subject": "Welcome Ann",
                                                     "body": "inline text"}}
    assert (task["type"], task["fields"]["title"], task["run_at"], task["fields"]["due_at"]) == (
        "task", "Check on Ann", "2024-05-02T08:30:00Z", "2024-05-04T08:30:00Z")
    assert (task["stage"], task["commit_now"]) == (1, False)  # written when the wait ends
    assert task["key"].startswith("welcome/ann/1.2/")
    # a re-plan gives the same keys
    _, again, _ = cli(["--db", db_url, "dry-run", str(cli_project), "--as-of",
                       "2024-05-01T08:30:00Z", "--json"])
    (rerun,) = json.loads(again)["playbooks"]
    keys = {e["customer_id"]: [a["key"] for a in e["actions"]] for e in rerun["enrollments"]}
    assert keys["ann"] == [key, task["key"]]


def test_cli_dry_run_for_one_customer(cli_project: Path, db_url: str, cli: Cli) -> None:
    code, out, err = cli(["--db", db_url, "dry-run", str(cli_project), "--as-of",
                          "2024-05-01T08:30:00Z", "--customer", "bob", "--json"])
    assert code == 0, err
    (welcome,) = json.loads(out)["playbooks"]
    assert welcome["entering"] == 1
    assert [(e["customer_id"], e["occurrence"]) for e in welcome["enrollments"]] == [
        ("bob", "p-bob")]


def test_cli_dry_run_refuses_unknown_customer_and_bad_as_of(cli_project: Path, db_url: str,
                                                           cli: Cli) -> None:
    code, out, err = cli(["--db", db_url, "dry-run", str(cli_project), "--customer", "zed",
                          "--as-of", "2024-05-01", "--json"])
    assert code == 1 and out == ""
    assert "customer 'zed' not found" in err
    code, out, err = cli(["--db", db_url, "dry-run", str(cli_project), "--as-of", "last tuesday"])
    assert code == 2 and out == ""
    assert "--as-of" in err
