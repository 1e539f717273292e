"""Property: `retain test` finds what `retain sync` + `retain run --as-of` step by step find.

Hypothesis makes small random playbooks (an `inactive`, `first_purchase` or `event` trigger, a
`when` clause or two, email/task/points actions with waits, sometimes a goal, an exit or a
holdout), random settings (an email cap, quiet hours) and random histories (a few customers,
events at random times before the clock, then steps that run, advance the clock, add events
and add or remove a customer's address). Each is run twice:

(a) as a test file, through `retain test`'s own machinery (engine.playtest: load the file, run
    the test's steps in a fresh store, connectors that record);
(b) as a user would: a project folder with a real database, `retain sync customers|events`
    from JSONL files and `retain run --as-of T` at each step, the CLI in-process, emails
    written as .eml files (RETAIN_EMAIL_TRANSPORT=file).

Both must end with the same enrollments (playbook, customer, status, holdout) and the same
actions (playbook, customer, connector, status, reason, when due, rendered subject/title/
amount/recipient). On SQLite, and on PostgreSQL (a scratch schema for each side).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import sqlalchemy as sa
import yaml
from conftest import PG_URL, Cli, require_postgres
from hypothesis import HealthCheck
from hypothesis import strategies as st

from engine.format.durations import parse_duration
from engine.playtest.model import DEFAULT_START, RELATIVE
from engine.playtest.run import read_actions, read_enrollments, run_case
from engine.playtest.stores import PostgresStores, SqliteStores
from engine.playtest.suite import load_suite
from engine.store.open import make_engine
from engine.store.scratch import ScratchServer

EXAMPLES = int(os.environ.get("RETAIN_PROPERTY_EXAMPLES", "25"))
EXAMPLES_PG = max(1, EXAMPLES * 2 // 5)  # ~1.3 s an example on PostgreSQL (two schemas
# migrated), ~0.6 s on SQLite, on this machine
EMAIL_FROM = "Retain test <retain-test@example.com>"
COMPARED = ("subject", "title", "amount", "to")  # rendered payload fields compared

# --- what hypothesis draws -----------------------------------------------------------------------

DURATIONS = ["1h", "12h", "1d", "2d", "3d", "7d", "8d"]  # 10:00 + 12h: in quiet hours
PAST = ["-90d", "-45d", "-31d", "-20d", "-8d", "-2d", "-1d", "-3h", "-30m"]
RECENT = ["now", "-30m", "-2h", "-20h"]


@st.composite
def triggers(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["inactive", "first_purchase", "event"]))
    if kind == "inactive":
        return {"inactive": {"days": draw(st.sampled_from([1, 7, 30]))}}
    if kind == "first_purchase":
        return {"first_purchase": {"lookback": draw(st.sampled_from(["1d", "3d"]))}}
    event: dict[str, Any] = {"type": draw(st.sampled_from(["purchase", "login"])),
                             "lookback": draw(st.sampled_from(["1d", "3d", "8d"]))}
    if event["type"] == "purchase" and draw(st.booleans()):
        event["where"] = [{"amount": {"gt": draw(st.sampled_from([10, 50]))}}]
    return {"event": event}


CLAUSES: list[dict[str, Any]] = [
    {"email": {"is_null": False}},
    {"purchase_count": {"gte": 1}},
    {"total_spent": {"gt": 10}},
    {"last_emailed_at": {"older_than": "3d"}},
    {"name": {"in": ["Ana", "Ben", "Cat"]}},
    {"events": {"type": "login", "within": "30d", "count": {"gte": 1}}},
]


@st.composite
def steps_of_actions(draw: st.DrawFn) -> list[dict[str, Any]]:
    kinds = draw(st.lists(st.sampled_from(["email", "email", "task", "points"]), min_size=1,
                          max_size=3))  # email twice as likely: caps and quiet hours bite
    actions: list[dict[str, Any]] = []
    for index, kind in enumerate(kinds):
        if index and draw(st.booleans()):
            actions.append({"wait": draw(st.sampled_from(["1h", "1d", "3d", "7d"]))})
        if kind == "email":
            actions.append({"email": {"subject": f"Step {index} for {{{{ customer.name }}}}",
                                      "body": "Hello {{ customer.name }}"}})
        elif kind == "task":
            actions.append({"task": {"title": f"Call {{{{ customer.name }}}} ({index})",
                                     "assignee": "team", "due_in": "2d"}})
        else:
            actions.append({"points": {"amount": draw(st.sampled_from([5, 10, -3])),
                                       "reason": f"step {index}"}})
    return actions


@st.composite
def playbooks(draw: st.DrawFn, pid: str) -> dict[str, Any]:
    document: dict[str, Any] = {"id": pid, "name": f"Playbook {pid}",
                                "trigger": draw(triggers()), "actions": draw(steps_of_actions())}
    when = draw(st.lists(st.sampled_from(range(len(CLAUSES))), max_size=2, unique=True))
    if when:
        document["when"] = [CLAUSES[i] for i in when]
    document["reentry"] = draw(st.sampled_from(["once", "always", {"every": "3d"}]))
    if draw(st.booleans()):
        document["exit_when"] = {"event": draw(st.sampled_from(["purchase", "login"]))}
    if draw(st.booleans()):
        document["goal"] = {"event": "purchase", "within": "7d"}
    if draw(st.integers(0, 3)) == 0:
        document["holdout"] = "50%"
    return document


@dataclass
class Story:
    """The playbooks and a history: customers, events before the clock, then steps."""

    playbooks: list[dict[str, Any]]
    customers: list[dict[str, Any]]
    events: list[dict[str, Any]]  # `at` relative to the start
    steps: list[Any]  # "run" | {"advance": "3d"} | {"events": [...]} (`at` relative to then)
    settings: dict[str, dict[str, str]]  # caps and quiet hours: the test's and retain.toml's


CUSTOMERS = ["ana", "ben", "cat", "dan"]


@st.composite
def stories(draw: st.DrawFn) -> Story:
    count = draw(st.sampled_from([1, 2, 2]))
    books = [draw(playbooks(f"prop-{n}")) for n in range(count)]
    people = CUSTOMERS[:draw(st.integers(2, 4))]
    customers = [{"customer_id": cid,
                  "email": f"{cid}@example.com" if draw(st.integers(0, 4)) else None,
                  "name": cid.title(),
                  "created_at": draw(st.sampled_from(["-200d", "-40d", "-10d", "-1d", "now"]))}
                 for cid in people]
    serial = iter(range(1, 1000))

    def event(at: str) -> dict[str, Any]:
        kind = draw(st.sampled_from(["purchase", "login"]))
        row = {"event_id": f"e{next(serial)}", "customer_id": draw(st.sampled_from(people)),
               "type": kind, "at": at}
        if kind == "purchase":
            row["amount"] = draw(st.sampled_from([5, 20, 80]))
        return row

    events = [event(draw(st.sampled_from(PAST))) for _ in range(draw(st.integers(0, 8)))]
    steps: list[Any] = ["run"]
    for _ in range(draw(st.integers(1, 3))):
        steps.append({"advance": draw(st.sampled_from(DURATIONS))})
        added = [event(draw(st.sampled_from(RECENT))) for _ in range(draw(st.integers(0, 3)))]
        if added:
            steps.append({"events": added})
        if draw(st.integers(0, 3)) == 0:  # an address added or removed (created_at as it was)
            who = draw(st.sampled_from(customers))
            steps.append({"customers": [{
                **who, "email": None if who["email"] else f"{who['customer_id']}@example.com",
                "created_at": _at(who["created_at"], DEFAULT_START)}]})
        steps.append("run")
    settings: dict[str, dict[str, str]] = {}
    if draw(st.integers(0, 3)):
        settings["caps"] = {"email": draw(st.sampled_from(["1/3d", "1/7d", "2/7d"]))}
    if draw(st.booleans()):
        settings["quiet_hours"] = {"email": "21:00-08:00"}
    return Story(books, customers, events, steps, settings)


# --- (a): retain test's machinery ----------------------------------------------------------------

Seen = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]


def _seen(engine: sa.Engine) -> Seen:
    enrollments = sorted((e.playbook_id, e.customer_id, e.status, e.holdout)
                         for e in read_enrollments(engine))
    actions = sorted((a.playbook_id, a.customer_id, a.connector, a.status, a.reason or "",
                      a.next_attempt_at.isoformat() if a.next_attempt_at else "",
                      *(json.dumps(a.payload.get(key)) for key in COMPARED))
                     for a in read_actions(engine))
    return enrollments, actions


class Capturing:
    """`retain test`'s fresh stores, reading the store's enrollments and actions at the end."""

    def __init__(self, fresh: Any) -> None:
        self.fresh, self.seen = fresh, None

    @contextmanager
    def __call__(self) -> Iterator[sa.Engine]:
        with self.fresh() as engine:
            yield engine
            self.seen = _seen(engine)


def _write_story(folder: Path, story: Story) -> Path:
    """The playbooks in `folder`, the story as the test file `folder/tests/story.test.yaml`."""
    (folder / "tests").mkdir(parents=True)
    for document in story.playbooks:
        (folder / f"{document['id']}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    test_file = {"playbooks": [p["id"] for p in story.playbooks], "settings": story.settings,
                 "customers": story.customers, "events": story.events,
                 "tests": [{"name": "the story", "steps": story.steps}]}
    (folder / "tests" / "story.test.yaml").write_text(yaml.safe_dump(test_file, sort_keys=False))
    return folder


def through_retain_test(folder: Path, fresh: Any) -> Seen:
    """Load the folder's test file as `retain test` does and run its one test."""
    loaded, found, issues = load_suite([folder])
    assert issues == [], [str(i) for i in issues]
    capturing = Capturing(fresh)
    result = run_case(loaded[0], loaded[0].cases[0], found[loaded[0].playbook_folder],
                      capturing)
    assert result.outcome == "passed", result.to_json()
    assert capturing.seen is not None
    return capturing.seen


def by_test_on_sqlite(folder: Path) -> Seen:
    """`through_retain_test` on SQLite stores of its own."""
    stores = SqliteStores()
    try:
        return through_retain_test(folder, stores.fresh)
    finally:
        stores.close()


# --- (b): retain sync + retain run --as-of, step by step ---------------------------------------

def _at(relative: str, clock: datetime) -> str:
    """A test file's time as ISO 8601 (one already absolute is kept)."""
    if not RELATIVE.match(relative):
        return relative
    moment = clock if relative == "now" else clock + parse_duration(relative, signed=True)
    return moment.isoformat().replace("+00:00", "Z")


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def through_retain_run(root: Path, folder: Path, url: str, story: Story, cli: Cli) -> Seen:
    clock = DEFAULT_START
    files = iter(range(1000))

    def retain(*args: str) -> str:
        code, out, err = cli(["--db", url, *args])
        assert code == 0, f"retain {' '.join(args)} -> {code}\n{out}\n{err}"
        return out

    def sync_events(rows: list[dict[str, Any]]) -> None:
        resolved = [{**{k: v for k, v in row.items() if k != "at"},
                     "occurred_at": _at(row["at"], clock)} for row in rows]
        out = retain("sync", "events", _jsonl(root / f"events-{next(files)}.jsonl", resolved))
        assert "rejected 0" in out, out

    (root / "retain.toml").write_text("".join(
        f'[{table}]\n' + "".join(f'{key} = "{value}"\n' for key, value in values.items())
        for table, values in story.settings.items()), encoding="utf-8")
    customers = [{**row, "created_at": _at(row["created_at"], clock)} for row in story.customers]
    out = retain("sync", "customers", _jsonl(root / "customers.jsonl", customers))
    assert "rejected 0" in out, out
    if story.events:
        sync_events(story.events)
    for step in story.steps:
        if step == "run":
            retain("run", str(folder), "--as-of", clock.isoformat())
        elif "advance" in step:
            clock += parse_duration(step["advance"])
        elif "customers" in step:
            out = retain("sync", "customers", _jsonl(root / f"customers-{next(files)}.jsonl",
                                                     step["customers"]))
            assert "rejected 0" in out, out
        else:
            sync_events(step["events"])
    engine = make_engine(url)
    try:
        return _seen(engine)
    finally:
        engine.dispose()


@contextmanager
def _project(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project folder of its own (the current folder), sending email to .eml files."""
    with tempfile.TemporaryDirectory(prefix="retain-property-") as name, \
            monkeypatch.context() as patch:
        root = Path(name)
        patch.chdir(root)
        for variable in [v for v in os.environ if v.startswith("RETAIN_")]:
            patch.delenv(variable)
        patch.setenv("RETAIN_EMAIL_TRANSPORT", "file")
        patch.setenv("RETAIN_EMAIL_DIR", str(root / "mail"))
        patch.setenv("RETAIN_EMAIL_FROM", EMAIL_FROM)
        yield root


def _check(story: Story, cli: Cli, monkeypatch: pytest.MonkeyPatch, on: str) -> Seen:
    """Run the story both ways on `on`; they must agree (and on PostgreSQL, `retain test`
    must also agree with itself on SQLite). What they saw."""
    with _project(monkeypatch) as root:
        folder = _write_story(root / "playbooks", story)
        by_test = by_test_on_sqlite(folder)
        if on == "sqlite":
            by_run = through_retain_run(root, folder, f"sqlite:///{root / 'retain.db'}", story,
                                        cli)
        else:
            on_sqlite = by_test
            postgres = PostgresStores(PG_URL)
            server = ScratchServer(PG_URL)
            try:
                by_test = through_retain_test(folder, postgres.fresh)
                with server.schema() as url:
                    by_run = through_retain_run(root, folder, url, story, cli)
            finally:
                postgres.close()
                server.close()
            assert by_test == on_sqlite, "retain test differs between SQLite and PostgreSQL"
    assert by_test == by_run
    return by_test


def _tally(seen: Seen) -> None:
    """What the examples exercised (pytest --hypothesis-show-statistics)."""
    hypothesis.event(f"enrollments: {min(len(seen[0]), 3)}+")
    for status in sorted({a[3] for a in seen[1]}):
        hypothesis.event(f"an action {status}")


def _settings(examples: int) -> hypothesis.settings:
    return hypothesis.settings(max_examples=examples, deadline=None, database=None,
                               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                      HealthCheck.too_slow])


@_settings(EXAMPLES)
@hypothesis.given(story=stories())
def test_retain_test_and_retain_run_agree_on_sqlite(story: Story, cli: Cli,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _tally(_check(story, cli, monkeypatch, "sqlite"))


@_settings(EXAMPLES_PG)
@hypothesis.given(story=stories())
def test_retain_test_and_retain_run_agree_on_postgresql(story: Story, cli: Cli,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    require_postgres()
    _tally(_check(story, cli, monkeypatch, "postgresql"))


def test_the_comparison_sees_a_difference(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The property can fail: one more run at the end in (b) than in (a) shows up."""
    story = Story(
        playbooks=[{"id": "prop-0", "name": "Playbook prop-0",
                    "trigger": {"inactive": {"days": 7}},
                    "actions": [{"task": {"title": "Call {{ customer.name }}"}},
                                {"wait": "1d"}, {"points": {"amount": 5}}]}],
        customers=[{"customer_id": "ana", "email": None, "name": "Ana", "created_at": "-40d"}],
        events=[], steps=["run"], settings={})
    with _project(monkeypatch) as root:
        folder = _write_story(root / "playbooks", story)
        by_test = by_test_on_sqlite(folder)
        longer = Story(story.playbooks, story.customers, [], ["run", {"advance": "2d"}, "run"],
                       {})
        by_run = through_retain_run(root, folder, f"sqlite:///{root / 'retain.db'}", longer, cli)
    assert by_test != by_run
    assert [a[2] for a in by_test[1]] == ["task"]
    assert sorted(a[2] for a in by_run[1]) == ["points", "task"]
