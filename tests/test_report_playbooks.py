"""`retain report playbooks` on real SQLite and PostgreSQL: entered, holdout, actions, goal
conversion per group, uplift with Newcombe's interval, and the statements when it cannot tell.

Enrollments, actions and events are inserted directly (live runs that write them are another
issue), with conversion counts known by construction.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Cli
from outbox_support import insert_actions

from engine.format.playbook import Playbook
from engine.format.validation import load_valid_playbooks
from engine.reports import playbooks as report
from engine.store.tables import Action, Customer, Enrollment, Event

T0 = datetime(2024, 3, 1, 9, 30, 0, 123456, tzinfo=UTC)  # a fraction: SQLite compares text
GOAL = timedelta(days=14)
LATE = datetime(2024, 9, 1, tzinfo=UTC)  # the latest event and now: every window above ended

WINBACK = """\
id: winback
name: Win back
trigger:
  inactive: { days: 30 }
holdout: 10%
goal: { event: purchase, within: 14d }
actions:
  - task: { title: "Call {{ customer.name }}" }
"""
NO_HOLDOUT = WINBACK.replace("id: winback", "id: plain").replace("holdout: 10%\n", "")
NO_GOAL = WINBACK.replace("id: winback", "id: nogoal").replace(
    "goal: { event: purchase, within: 14d }\n", "")


def z95() -> float:
    """The 97.5% normal quantile, by bisection on erf: independent of the module's constant."""
    low, high = 1.0, 3.0
    for _ in range(100):
        middle = (low + high) / 2
        if 0.5 * (1 + math.erf(middle / math.sqrt(2))) < 0.975:
            low = middle
        else:
            high = middle
    return low


def expected_interval(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Newcombe (1998) method 10, written out here from the paper, in percentage points."""
    z = z95()

    def wilson(x: int, n: int) -> tuple[float, float]:
        p = x / n
        root = z * math.sqrt(z * z + 4 * n * p * (1 - p))
        return ((2 * n * p + z * z - root) / (2 * (n + z * z)),
                (2 * n * p + z * z + root) / (2 * (n + z * z)))

    p1, p2 = x1 / n1, x2 / n2
    (l1, u1), (l2, u2) = wilson(x1, n1), wilson(x2, n2)
    d = p1 - p2
    return (100 * (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)),
            100 * (d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A playbooks folder with `winback` (goal, holdout), `plain` (goal, no holdout share) and
    `nogoal`."""
    path = tmp_path / "playbooks"
    path.mkdir()
    for name, text in (("winback", WINBACK), ("plain", NO_HOLDOUT), ("nogoal", NO_GOAL)):
        (path / f"{name}.yaml").write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def loaded(folder: Path) -> list[Playbook]:
    return load_valid_playbooks([folder])


class Data:
    """Rows to insert: customers, enrollments, events and actions, with ids handed out here."""

    def __init__(self) -> None:
        self.customers: list[dict[str, Any]] = []
        self.enrollments: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []

    def enroll(self, playbook: str, count: int, converted: int, *, holdout: bool = False,
               at: datetime = T0, prefix: str | None = None) -> list[str]:
        """`count` enrollments, the first `converted` of them with a purchase a day later."""
        prefix = prefix or f"{playbook}-{'h' if holdout else 't'}-{at:%Y%m%d}"
        ids = [f"{prefix}-{i}" for i in range(count)]
        for i, customer_id in enumerate(ids):
            self.customers.append({"customer_id": customer_id})
            self.enrollments.append({
                "id": len(self.enrollments) + 1, "playbook_id": playbook, "version": "v1",
                "customer_id": customer_id, "occurrence_key": "k", "holdout": holdout,
                "status": "completed", "entered_at": at})
            if i < converted:
                self.event(customer_id, "purchase", at + timedelta(days=1))
        return ids

    def event(self, customer_id: str, kind: str, at: datetime) -> None:
        self.events.append({"event_id": f"e{len(self.events)}", "customer_id": customer_id,
                            "type": kind, "occurred_at": at, "properties": {}})

    def act(self, enrollment_id: int, connector: str, status: str) -> None:
        self.actions.append({
            "enrollment_id": enrollment_id, "customer_id": "x", "connector": connector,
            "status": status, "idempotency_key": f"a{len(self.actions)}", "created_at": T0,
            "payload": {}})

    def write(self, db: sa.Engine, latest: datetime | None = LATE) -> None:
        if latest is not None:  # the latest event
            self.customers.append({"customer_id": "clock"})
            self.event("clock", "login", latest)
        with db.begin() as connection:
            for model, rows in ((Customer, self.customers), (Enrollment, self.enrollments),
                                (Event, self.events), (Action, self.actions)):
                if rows and model is Action:
                    insert_actions(connection, rows)
                elif rows:
                    connection.execute(sa.insert(model.__table__), rows)


def build(db: sa.Engine, loaded: list[Playbook], **kwargs: Any) -> dict[str, Any]:
    """The report's JSON by playbook id, as of LATE unless told otherwise."""
    kwargs.setdefault("now", LATE)
    with db.connect() as connection:
        document = report.build(connection, loaded, **kwargs).to_json()
    return {p["playbook_id"]: p for p in document["playbooks"]}


def test_uplift_and_its_interval_from_known_counts(db: sa.Engine, loaded: list[Playbook]) -> None:
    data = Data()
    data.enroll("winback", 100, 40)
    data.enroll("winback", 100, 20, holdout=True)
    data.write(db)
    winback = build(db, loaded)["winback"]
    assert (winback["entered"], winback["holdout"]) == (200, 100)
    assert winback["groups"]["treatment"] | {"ci": None} == {
        "entered": 100, "open": 0, "measured": 100, "converted": 40, "rate": 40.0, "ci": None}
    assert winback["groups"]["holdout"]["converted"] == 20
    assert winback["groups"]["holdout"]["rate"] == 20.0
    assert winback["uplift_pp"] == 20.0
    low, high = expected_interval(40, 100, 20, 100)
    assert winback["uplift_ci_pp"] == pytest.approx([low, high], abs=1e-4)
    assert winback["uplift_ci_pp"] == pytest.approx([7.31, 31.85], abs=0.01)
    assert winback["conclusion"] == "higher"
    assert winback["statement"] == ("converts better than the holdout: +20.0 pp "
                                    "(95% CI +7.3 to +31.9)")
    # Each group's error bar is its Wilson interval; by hand for 40/100 with z = 1.96:
    # centre (0.4 + 1.96^2/200) / (1 + 1.96^2/100) = 0.4037, half-width 0.0943.
    assert winback["groups"]["treatment"]["ci"] == pytest.approx([30.94, 49.80], abs=0.01)


def test_unequal_groups_and_a_difference_the_interval_cannot_tell(
        db: sa.Engine, loaded: list[Playbook]) -> None:
    data = Data()
    data.enroll("winback", 300, 60)
    data.enroll("winback", 40, 6, holdout=True)
    data.write(db)
    winback = build(db, loaded)["winback"]
    assert winback["uplift_pp"] == 5.0
    assert winback["uplift_ci_pp"] == pytest.approx(list(expected_interval(60, 300, 6, 40)),
                                                    abs=1e-4)
    assert winback["conclusion"] == "unclear"
    assert winback["statement"].startswith("no clear difference from the holdout: +5.0 pp")


def test_the_interval_matches_newcombes_published_examples() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10.
    for counts, published in (((56, 70, 48, 80), (0.0524, 0.3339)),
                              ((9, 10, 3, 10), (0.1705, 0.8090)),
                              ((5, 56, 0, 29), (-0.0381, 0.1926))):
        assert report.newcombe(*counts) == pytest.approx(published, abs=5e-5)


def test_only_goal_events_inside_the_window_count(db: sa.Engine, loaded: list[Playbook]) -> None:
    data = Data()
    ids = data.enroll("winback", 8, 0, prefix="w")
    data.event(ids[0], "purchase", T0 + GOAL)  # the last instant of the window: counts
    data.event(ids[1], "purchase", T0 + timedelta(microseconds=1))  # just after entering: counts
    data.event(ids[2], "purchase", T0)  # at entry, not after it
    data.event(ids[3], "purchase", T0 + GOAL + timedelta(microseconds=1))  # just too late
    data.event(ids[4], "purchase", T0 - timedelta(days=1))  # before
    data.event(ids[5], "login", T0 + timedelta(days=1))  # not the goal's type
    data.event(ids[0], "purchase", T0 + timedelta(days=2))  # a second one converts no more
    data.event("w-other", "purchase", T0 + timedelta(days=1))  # someone not enrolled
    data.customers.append({"customer_id": "w-other"})
    data.write(db)
    treatment = build(db, loaded)["winback"]["groups"]["treatment"]
    assert (treatment["measured"], treatment["converted"]) == (8, 2)


def test_windows_not_yet_ended_are_open_not_failures(db: sa.Engine,
                                                     loaded: list[Playbook]) -> None:
    data = Data()
    data.enroll("winback", 40, 10)
    data.enroll("winback", 40, 10, holdout=True)
    late = LATE - GOAL + timedelta(seconds=1)  # its window ends a second after now
    data.enroll("winback", 5, 5, at=late)
    data.enroll("winback", 3, 0, holdout=True, at=late)
    data.write(db)
    winback = build(db, loaded)["winback"]
    assert winback["entered"] == 88
    treatment, holdout = winback["groups"]["treatment"], winback["groups"]["holdout"]
    assert (treatment["entered"], treatment["open"], treatment["measured"],
            treatment["converted"]) == (45, 5, 40, 10)
    assert (holdout["entered"], holdout["open"], holdout["measured"]) == (43, 3, 40)
    assert winback["statement"].endswith(
        "; 8 more enrollments still inside the goal window, not counted yet")
    # A window ending exactly at the cutoff has ended.
    closed = build(db, loaded, now=LATE + timedelta(seconds=1))["winback"]
    assert closed["groups"]["treatment"]["open"] == 0


def test_a_window_that_ended_counts_however_old_the_latest_event(
        db: sa.Engine, loaded: list[Playbook]) -> None:
    """No event was synced after the conversions of 2024-03-02, but every goal window ended
    long before now: each is measured (no goal event = not converted), not left open, and the
    report says how old the latest event is. (Cutting at the latest event left all 80 open.)"""
    data = Data()
    data.enroll("winback", 40, 10)
    data.enroll("winback", 40, 5, holdout=True)
    data.write(db, latest=None)
    with db.connect() as connection:
        document = report.build(connection, loaded, now=LATE).to_json()
    winback = next(p for p in document["playbooks"] if p["playbook_id"] == "winback")
    treatment, holdout = winback["groups"]["treatment"], winback["groups"]["holdout"]
    assert (treatment["open"], treatment["measured"], treatment["converted"]) == (0, 40, 10)
    assert (holdout["open"], holdout["measured"], holdout["converted"]) == (0, 40, 5)
    assert (document["cutoff"], document["latest_event"]) == (
        "2024-09-01T00:00:00Z", "2024-03-02T09:30:00Z")
    assert document["notes"] == ["latest event 2024-03-02, 183 days before the cutoff: "
                                 "enrollments with no goal event by then count as not converted"]


def test_as_of_hides_later_enrollments_and_keeps_their_windows_open(
        db: sa.Engine, loaded: list[Playbook]) -> None:
    """As of T0 + 10 days, enrollments entered at T0 are open (their 14-day window runs on) and
    the ones entered later do not exist yet."""
    data = Data()
    data.enroll("winback", 40, 10)
    data.enroll("winback", 7, 0, at=T0 + timedelta(days=11))
    data.write(db)
    winback = build(db, loaded, now=T0 + timedelta(days=10))["winback"]
    assert winback["entered"] == 40
    assert (winback["groups"]["treatment"]["open"], winback["groups"]["treatment"]["measured"]) \
        == (40, 0)


def test_too_few_enrollments_says_so_instead_of_an_uplift(
        db: sa.Engine, loaded: list[Playbook]) -> None:
    data = Data()
    data.enroll("winback", 29, 15)
    data.enroll("winback", 200, 50, holdout=True)
    data.write(db)
    winback = build(db, loaded)["winback"]
    assert winback["conclusion"] == "too_few_enrollments"
    assert winback["statement"].startswith(
        "too few enrollments to say anything (need at least 30 in each group")
    assert winback["uplift_pp"] is None and winback["uplift_ci_pp"] is None
    assert winback["groups"]["treatment"]["rate"] == pytest.approx(100 * 15 / 29, abs=1e-4)


def test_too_few_conversions_says_so(db: sa.Engine, loaded: list[Playbook]) -> None:
    data = Data()
    data.enroll("winback", 100, 40)
    data.enroll("winback", 100, 4, holdout=True)
    data.write(db)
    winback = build(db, loaded)["winback"]
    assert winback["conclusion"] == "too_few_conversions"
    assert winback["statement"].startswith("too few conversions to say anything (need at least 5")
    assert winback["uplift_pp"] is None


def test_no_holdout_and_no_goal_statements(db: sa.Engine, loaded: list[Playbook]) -> None:
    data = Data()
    data.enroll("plain", 100, 30)
    data.enroll("nogoal", 3, 3)
    data.enroll("deleted", 2, 0)
    data.write(db)
    found = build(db, loaded)
    plain = found["plain"]
    assert plain["conclusion"] == "no_holdout" and plain["holdout"] == 0
    assert plain["statement"].startswith("no holdout")
    assert plain["groups"]["treatment"]["rate"] == 30.0 and plain["uplift_pp"] is None
    nogoal, deleted = found["nogoal"], found["deleted"]
    assert nogoal["statement"].startswith("no goal defined")
    assert nogoal["entered"] == 3 and nogoal["groups"]["treatment"]["converted"] is None
    assert deleted["statement"].startswith("no goal defined")
    assert (deleted["entered"], deleted["name"], deleted["goal"]) == (2, None, None)
    assert found["winback"]["conclusion"] == "no_enrollments"  # a file without enrollments


def test_a_holdout_share_that_caught_no_one_says_so(db: sa.Engine,
                                                    loaded: list[Playbook]) -> None:
    data = Data()
    data.enroll("winback", 40, 10)
    data.write(db)
    winback = build(db, loaded)["winback"]
    assert winback["conclusion"] == "no_holdout"
    assert winback["statement"].startswith(
        "no holdout: none of the 40 enrollments fell in the control group (holdout: 10%)")


def test_actions_by_connector_and_status(db: sa.Engine, loaded: list[Playbook]) -> None:
    data = Data()
    data.enroll("winback", 3, 0)
    data.enroll("deleted", 1, 0)
    for status in ("sent", "sent", "failed", "dead"):
        data.act(1, "email", status)
    data.act(2, "task", "sent")
    data.act(3, "task", "suppressed")
    data.act(4, "webhook", "pending")
    data.write(db)
    with db.begin() as connection:  # an action without an enrollment belongs to no playbook
        insert_actions(connection, [{
            "enrollment_id": None, "customer_id": "x", "connector": "email", "status": "sent",
            "idempotency_key": "orphan", "created_at": T0, "payload": {}}])
    found = build(db, loaded)
    assert found["winback"]["actions"] == {"email": {"sent": 2, "failed": 1, "dead": 1},
                                           "task": {"sent": 1, "suppressed": 1}}
    assert found["winback"]["actions_total"] == 6
    assert found["deleted"]["actions"] == {"webhook": {"pending": 1}}
    assert found["plain"]["actions"] == {}


def test_from_and_to_choose_enrollments_by_entry_time(db: sa.Engine,
                                                      loaded: list[Playbook]) -> None:
    data = Data()
    data.enroll("winback", 4, 1, at=datetime(2024, 1, 31, 23, 59, tzinfo=UTC))
    data.enroll("winback", 5, 2, at=datetime(2024, 2, 1, tzinfo=UTC))
    data.enroll("winback", 6, 3, holdout=True, at=datetime(2024, 2, 29, 23, 59, tzinfo=UTC))
    data.enroll("winback", 7, 0, at=datetime(2024, 3, 1, tzinfo=UTC))
    data.act(5, "email", "sent")  # the first of February's enrollments
    data.act(1, "email", "sent")  # January's
    data.write(db)
    february = build(db, loaded, start=datetime(2024, 2, 1, tzinfo=UTC),
                     end=datetime(2024, 3, 1, tzinfo=UTC))["winback"]
    assert (february["entered"], february["holdout"]) == (11, 6)
    assert february["groups"]["treatment"]["converted"] == 2
    assert february["groups"]["holdout"]["converted"] == 3
    assert february["actions"] == {"email": {"sent": 1}}
    assert build(db, loaded)["winback"]["entered"] == 22


def test_cli_json_text_and_html(cli: Cli, db: sa.Engine, db_url: str, folder: Path,
                                tmp_path: Path) -> None:
    data = Data()
    data.enroll("winback", 100, 40)
    data.enroll("winback", 100, 20, holdout=True)
    data.act(1, "email", "sent")
    data.write(db)
    base = ["--db", db_url, "report", "playbooks", "--playbooks", str(folder)]
    code, out, err = cli([*base, "--json", "--as-of", "2024-09-02"])
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert set(document) == {"from", "to", "cutoff", "latest_event", "notes", "confidence",
                             "method", "minimum", "message", "playbooks"}
    assert document["cutoff"] == "2024-09-02T00:00:00Z" and document["message"] is None
    assert document["notes"] == []  # the latest event is a day old
    assert [p["playbook_id"] for p in document["playbooks"]] == ["nogoal", "plain", "winback"]
    winback = document["playbooks"][2]
    assert set(winback) == {"playbook_id", "name", "file", "goal", "holdout_share", "entered",
                            "holdout", "groups", "actions", "actions_total", "uplift_pp",
                            "uplift_ci_pp", "conclusion", "statement"}
    assert winback["goal"] == {"event": "purchase", "within": "2w"}  # 14d, spelled shortest
    assert winback["holdout_share"] == 0.1
    assert winback["uplift_pp"] == 20.0 and winback["actions"] == {"email": {"sent": 1}}

    page = tmp_path / "report.html"
    code, out, err = cli([*base, "--from", "2024-03-01", "--to", "2024-03-02",
                          "--html", str(page)])
    assert code == 0 and f"Wrote {page}" in err
    for text in ("winback", "treatment", "40.0%", "20.0%", "+20.0 pp", "converts better",
                 "no goal defined", "email"):
        assert text in out, text
    html = page.read_text(encoding="utf-8")
    assert '<img class="chart"' in html and "converts better than the holdout" in html

    code, out, _ = cli([*base, "--from", "2024-04-01", "--json"])
    assert code == 0 and json.loads(out)["message"].startswith("No playbook enrollments")


def test_empty_database_is_a_clear_message(cli: Cli, db: sa.Engine, db_url: str, folder: Path,
                                           tmp_path: Path) -> None:
    base = ["--db", db_url, "report", "playbooks", "--playbooks", str(folder)]
    page = tmp_path / "empty.html"
    code, out, err = cli([*base, "--html", str(page)])
    assert code == 0
    assert "No playbook enrollments in the database: nothing to report yet." in " ".join(
        out.split())
    assert "No playbook enrollments" in page.read_text(encoding="utf-8")
    code, out, _ = cli([*base, "--json"])
    document = json.loads(out)
    assert code == 0 and document["cutoff"].endswith("Z") and document["latest_event"] is None
    assert {p["conclusion"] for p in document["playbooks"]} == {"no_enrollments", "no_goal"}


def test_without_a_playbooks_folder_enrollments_still_show(
        cli: Cli, db: sa.Engine, db_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no playbooks/ here
    data = Data()
    data.enroll("winback", 2, 1)
    data.write(db)
    code, out, _ = cli(["--db", db_url, "report", "playbooks", "--json"])
    assert code == 0
    [winback] = json.loads(out)["playbooks"]
    assert winback["entered"] == 2 and winback["conclusion"] == "no_goal"


def test_bad_dates_are_usage_errors(cli: Cli, sqlite_url: str) -> None:
    code, _, err = cli(["--db", sqlite_url, "report", "playbooks", "--from", "March"])
    assert code == 2 and "--from" in err
    code, _, err = cli(["--db", sqlite_url, "report", "playbooks", "--from", "2024-03-01",
                        "--to", "2024-03-01"])
    assert code == 2 and "the window is empty" in err
