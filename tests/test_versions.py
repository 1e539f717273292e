"""Playbook versions: the hash of the parsed document and its templates, recorded at run time,
reloaded with their templates after the files changed, `on_change: exit`, and the report that
judges each enrollment by its own version's goal. Real SQLite and PostgreSQL (`db`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from outbox_support import insert_actions, select_actions

from engine.config import Settings
from engine.errors import PlaybookError
from engine.format.playbook import Playbook
from engine.format.registry import load_connectors
from engine.format.templates import has_template, make_environment
from engine.format.validation import templates_dir
from engine.outbox.versions import exit_changed, record_versions, version_lookup
from engine.plan.planner import Planner, action_key
from engine.query.checks import load_valid_playbooks
from engine.query.versions import Versions, load_version, version_environment
from engine.reports import playbooks as report
from engine.store import status as st
from engine.store.tables import Customer, Enrollment, Event, actions, enrollments, versions

T1 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
T2 = T1 + timedelta(days=7)
WINBACK = """\
# Win back customers who went quiet.
id: winback
name: Win back
trigger:
  inactive: { days: 30 }
goal: { event: purchase, within: 14d }
actions:
  - email: { subject: "We miss you, {{ customer.name }}", template: winback }
  - wait: 3d
  - task: { title: "Call {{ customer.name }}" }
"""
TEXT = "Hello {{ customer.name }}, come back.\n{% include 'footer.txt.j2' %}"
HTML = "<p>Hello {{ customer.name }}</p>\n"
FOOTER = "-- The shop\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """playbooks/winback.yaml with templates/winback.{txt,html}.j2 (the text one includes a
    footer) and a template no action uses."""
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "templates").mkdir()
    write(tmp_path, "playbooks/winback.yaml", WINBACK)
    write(tmp_path, "templates/winback.txt.j2", TEXT)
    write(tmp_path, "templates/winback.html.j2", HTML)
    write(tmp_path, "templates/footer.txt.j2", FOOTER)
    write(tmp_path, "templates/unused.txt.j2", "Not used\n")
    return tmp_path / "playbooks"


def write(root: Path, name: str, text: str) -> None:
    (root / name).write_text(text, encoding="utf-8")


def load(folder: Path) -> Playbook:
    (playbook,) = load_valid_playbooks([folder], env={})
    return playbook


def edit(folder: Path, name: str, old: str, new: str) -> None:
    path = folder.parent / name
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


# --- the version ------------------------------------------------------------------------------

def test_version_ignores_comments_whitespace_and_key_order(folder: Path) -> None:
    first = load(folder)
    edit(folder, "playbooks/winback.yaml", "# Win back customers who went quiet.\n",
         "# Reworded comment.\n\n")
    edit(folder, "playbooks/winback.yaml", "trigger:\n  inactive: { days: 30 }\n",
         "trigger:   # still 30 days\n  inactive:\n    days: 30\n")
    edit(folder, "playbooks/winback.yaml", "id: winback\nname: Win back\n",
         "name: 'Win back'\nid: winback\n")
    assert load(folder).version == first.version
    edit(folder, "playbooks/winback.yaml", "days: 30", "days: 31")
    assert load(folder).version != first.version


@pytest.mark.parametrize("name", ["templates/winback.txt.j2", "templates/winback.html.j2",
                                  "templates/footer.txt.j2"])
def test_a_template_the_actions_use_is_part_of_the_version(folder: Path, name: str) -> None:
    """Each body file, and the footer the text one includes, changes the version; so the keys
    of a changed message differ from the old message's."""
    first = load(folder)
    assert dict(first.templates or {}) == {"footer.txt.j2": FOOTER, "winback.html.j2": HTML,
                                           "winback.txt.j2": TEXT}
    assert first.source == WINBACK
    edit(folder, name, "\n", " \n")
    changed = load(folder)
    assert changed.version != first.version
    assert action_key(changed, "c1", "o", 0, 0) != action_key(first, "c1", "o", 0, 0)


def test_a_file_an_inline_template_includes_is_part_of_the_version(folder: Path) -> None:
    """`note: "{% include 'script.txt.j2' %}"`: the file is recorded with the version (a
    resumed enrollment renders it from the record) and editing it is a new version."""
    write(folder.parent, "templates/script.txt.j2", "Ask how the last order went.\n")
    edit(folder, "playbooks/winback.yaml", 'title: "Call {{ customer.name }}"',
         'title: "Call {{ customer.name }}", note: "{% include \'script.txt.j2\' %}"')
    first = load(folder)
    assert (first.templates or {}).get("script.txt.j2") == "Ask how the last order went.\n"
    edit(folder, "templates/script.txt.j2", "last order", "latest order")
    assert load(folder).version != first.version


def test_a_template_no_action_uses_is_not(folder: Path) -> None:
    first = load(folder)
    edit(folder, "templates/unused.txt.j2", "Not used", "Still not used")
    assert load(folder).version == first.version


def test_only_files_inside_the_templates_folder_are_read(folder: Path) -> None:
    """An include that names a file outside templates/ (never rendered here) is not read into
    the version, so it never reaches the database."""
    write(folder.parent, "secret.txt", "s3cr3t\n")
    edit(folder, "templates/winback.html.j2", "</p>",
         "</p>{% if false %}{% include '../secret.txt' %}{% endif %}")
    templates = load(folder).templates or {}
    assert sorted(templates) == ["footer.txt.j2", "winback.html.j2", "winback.txt.j2"]
    assert not any("s3cr3t" in text for text in templates.values())


# --- recording ----------------------------------------------------------------------------------

def stored(db: sa.Engine) -> list[dict[str, Any]]:
    with db.connect() as connection:
        return [dict(row) for row in connection.execute(
            sa.select(versions).order_by(versions.c.id)).mappings()]


def test_recording_twice_keeps_one_row_and_the_first_enable(db: sa.Engine, folder: Path) -> None:
    first = load(folder)
    with db.begin() as connection:
        changes = record_versions(connection, [first], T1)
    assert [(c.playbook_id, c.version, c.previous) for c in changes.values()] == [
        ("winback", first.version, None)]
    with db.begin() as connection:
        assert record_versions(connection, [load(folder)], T2) == {}
    [row] = stored(db)
    assert (row["version"], row["source"], row["templates"]) == (
        first.version, WINBACK, dict(first.templates or {}))
    assert row["enabled_at"] == row["created_at"] == T1.replace(tzinfo=row["enabled_at"].tzinfo)

    edit(folder, "templates/winback.html.j2", "Hello", "Hi")
    second = load(folder)
    with db.begin() as connection:
        changes = record_versions(connection, [second], T2)
    assert changes["winback"].previous == first.version
    rows = stored(db)
    assert [r["version"] for r in rows] == [first.version, second.version]
    assert rows[0]["enabled_at"] == rows[0]["created_at"]  # the first enable did not move
    assert rows[1]["templates"]["winback.html.j2"] == "<p>Hi {{ customer.name }}</p>\n"


def test_a_disabled_playbook_is_not_recorded(db: sa.Engine, folder: Path) -> None:
    edit(folder, "playbooks/winback.yaml", "name: Win back\n", "name: Win back\nenabled: false\n")
    with db.begin() as connection:
        assert record_versions(connection, [load(folder)], T1) == {}
    assert stored(db) == []


# --- reloading ----------------------------------------------------------------------------------

def test_a_recorded_version_renders_its_own_templates_after_the_files_change(
        db: sa.Engine, folder: Path) -> None:
    old = load(folder)
    with db.begin() as connection:
        record_versions(connection, [old], T1)
    edit(folder, "templates/winback.txt.j2", "come back", "CHANGED")
    edit(folder, "templates/footer.txt.j2", "The shop", "CHANGED")
    (folder.parent / "templates" / "winback.html.j2").unlink()
    (folder / "winback.yaml").unlink()

    with db.connect() as connection:
        reloaded = load_version(connection, "winback", old.version)
        environment = version_environment(connection, "winback", old.version)
    assert reloaded.version == old.version and reloaded.document == old.document
    assert reloaded.file == f"winback@{old.version} (recorded version)"
    assert has_template(environment, "winback.html.j2")
    assert not has_template(environment, "unused.txt.j2")
    connectors = {kind: cls() for kind, cls in load_connectors().items()}
    planner = Planner(reloaded, T2, connectors, environment)
    customer = {"customer_id": "c1", "email": "ann@example.com", "name": "Ann"}
    renderer = planner.renderer(customer, None)
    assert renderer.file("winback.txt.j2") == "Hello Ann, come back.\n-- The shop\n"
    assert renderer.file("winback.html.j2") == "<p>Hello Ann</p>\n"
    enrollment = planner.enrollment("c1", "o", customer, None, {})
    assert [a.status for a in enrollment.actions] == ["planned", "planned"]
    assert enrollment.actions[1].key == action_key(old, "c1", "o", 1, 2)  # the same keys

    # The files as they are now render otherwise: the reload did not read them.
    now = make_environment(templates_dir(folder / "winback.yaml"))
    assert Planner(reloaded, T2, connectors, now).renderer(customer, None).file(
        "winback.txt.j2") == "Hello Ann, CHANGED.\n-- CHANGED\n"


def test_unknown_or_broken_versions_say_which(db: sa.Engine, folder: Path) -> None:
    with db.connect() as connection, pytest.raises(PlaybookError,
                                                   match="version nope of playbook 'winback'"):
        load_version(connection, "winback", "nope")
    with db.begin() as connection:
        connection.execute(sa.insert(versions), [{
            "playbook_id": "gone", "version": "v1", "templates": {}, "created_at": T1,
            "source": "id: gone\nname: Gone\ntrigger:\n  segment: {}\nactions:\n"
                      "  - sms: { text: hi }\n"}])
    with db.connect() as connection, pytest.raises(PlaybookError) as caught:
        Versions().load(connection, "gone", "v1")
    assert caught.value.args[0] == "the recorded version v1 of playbook 'gone' no longer loads"
    assert str(caught.value).startswith(
        "gone@v1 (recorded version):6:5: actions[0].sms: unknown action 'sms'")
    lookup = version_lookup(db, [])
    assert lookup("gone", "v1") is None and lookup("winback", "nope") is None


def test_lookup_gives_the_current_playbook_or_the_recorded_one(db: sa.Engine,
                                                               folder: Path) -> None:
    old = load(folder)
    with db.begin() as connection:
        record_versions(connection, [old], T1)
    edit(folder, "templates/winback.txt.j2", "come back", "return")
    current = load(folder)
    lookup = version_lookup(db, [current])
    found = lookup("winback", current.version)
    assert found is not None and found[0] is current
    earlier = lookup("winback", old.version)
    assert earlier is not None and earlier[0].version == old.version
    assert "come back" in (earlier[0].templates or {})["winback.txt.j2"]
    assert lookup("winback", old.version) is earlier  # parsed once


# --- on_change: exit ---------------------------------------------------------------------------

def enrollment_rows(db: sa.Engine, old: str, new: str) -> None:
    """Customers a-d: a (old, active) b (old, waiting) c (old, completed) d (new, active), each
    with a planned, a deferred, a claimed and a sent action."""
    people = [("a", old, st.ACTIVE), ("b", old, st.WAITING_STEP), ("c", old, st.COMPLETED),
              ("d", new, st.ACTIVE)]
    with db.begin() as connection:
        connection.execute(sa.insert(Customer.__table__), [{"customer_id": c} for c, *_ in people])
        connection.execute(sa.insert(Enrollment.__table__), [
            {"id": n, "playbook_id": "winback", "version": version, "customer_id": cid,
             "occurrence_key": "o", "status": status, "entered_at": T1}
            for n, (cid, version, status) in enumerate(people, 1)])
        insert_actions(connection, [
            {"enrollment_id": n, "playbook_id": "winback", "customer_id": cid, "connector": "task",
             "status": status, "idempotency_key": f"{cid}-{status}", "created_at": T1,
             "payload": {}}
            for n, (cid, *_rest) in enumerate(people, 1)
            for status in (st.PLANNED, st.DEFERRED, st.CLAIMED, st.SENT)])


def statuses(db: sa.Engine) -> tuple[dict[str, Any], dict[str, Any]]:
    with db.connect() as connection:
        ended = {r.customer_id: (r.status, r.end_reason)
                 for r in connection.execute(sa.select(enrollments))}
        done = {r.idempotency_key: (r.status, r.reason)
                for r in connection.execute(sa.select(actions))}
    return ended, done


def test_on_change_exit_ends_older_versions_and_cancels_what_is_pending(
        db: sa.Engine, folder: Path) -> None:
    edit(folder, "playbooks/winback.yaml", "actions:", "on_change: exit\nactions:")
    playbook = load(folder)
    enrollment_rows(db, "old", playbook.version)
    with db.begin() as connection:
        assert exit_changed(connection, playbook, T2) == 3
    ended, done = statuses(db)
    why = f"playbook changed to version {playbook.version}"
    assert ended == {"a": (st.EXITED, why), "b": (st.EXITED, why),  # c: completed, but its
                     "c": (st.EXITED, why), "d": (st.ACTIVE, None)}  # last actions pending
    for cid in "abc":
        assert done[f"{cid}-planned"] == done[f"{cid}-deferred"] == (st.CANCELLED, why)
        assert done[f"{cid}-claimed"] == (st.CLAIMED, None)  # being sent: left to its outcome
        assert done[f"{cid}-sent"] == (st.SENT, None)
    assert done["d-planned"] == (st.PLANNED, None)
    with db.begin() as connection:
        assert exit_changed(connection, playbook, T2) == 0  # nothing left to end


def test_on_change_keep_changes_nothing(db: sa.Engine, folder: Path) -> None:
    playbook = load(folder)
    assert playbook.document.on_change == "keep"
    enrollment_rows(db, "old", playbook.version)
    before = statuses(db)
    with db.begin() as connection:
        assert exit_changed(connection, playbook, T2) == 0
    assert statuses(db) == before


# --- the report ---------------------------------------------------------------------------------

def enroll(db: sa.Engine, version: str, prefix: str, count: int, converted: dict[str, int],
           holdout: bool = False) -> None:
    """`count` enrollments of `version`; `converted` gives how many get each event type a day
    after entering."""
    rows, events = [], []
    for i in range(count):
        cid = f"{prefix}{i}"
        rows.append({"playbook_id": "winback", "version": version, "customer_id": cid,
                     "occurrence_key": "o", "status": st.COMPLETED, "holdout": holdout,
                     "entered_at": T1})
        for n, (kind, many) in enumerate(converted.items()):
            if i < many:
                events.append({"event_id": f"{cid}-{kind}", "customer_id": cid, "type": kind,
                               "occurred_at": T1 + timedelta(days=1, minutes=n),
                               "properties": {}})
    with db.begin() as connection:
        connection.execute(sa.insert(Customer.__table__), [{"customer_id": r["customer_id"]}
                                                           for r in rows])
        connection.execute(sa.insert(Enrollment.__table__), rows)
        if events:
            connection.execute(sa.insert(Event.__table__), events)


def test_the_report_judges_each_enrollment_by_its_versions_goal(db: sa.Engine,
                                                                folder: Path) -> None:
    """Version 1 measures purchases, version 2 (today's file) signups; version 3 has no goal.
    Each group's conversions follow the goal its enrollments entered with, even though the
    loaded file now names another goal."""
    v1 = load(folder)
    edit(folder, "playbooks/winback.yaml", "goal: { event: purchase, within: 14d }\n", "")
    v3 = load(folder)
    edit(folder, "playbooks/winback.yaml", "actions:", "goal: { event: signup, within: 7d }\n"
         "actions:")
    v2 = load(folder)
    with db.begin() as connection:
        for version, at in ((v1, T1), (v2, T1), (v3, T1)):
            record_versions(connection, [version], at)
    enroll(db, v1.version, "p", 10, {"purchase": 6, "signup": 1})
    enroll(db, v2.version, "s", 10, {"purchase": 5, "signup": 2})
    enroll(db, v3.version, "n", 4, {"purchase": 4})
    enroll(db, v1.version, "h", 5, {"purchase": 1}, holdout=True)
    with db.connect() as connection:
        line = report.build(connection, [v2], now=T2 + timedelta(days=30)).to_json()
    [winback] = line["playbooks"]
    treatment, holdout = winback["groups"]["treatment"], winback["groups"]["holdout"]
    assert (treatment["entered"], treatment["measured"], treatment["converted"]) == (24, 20, 8)
    assert (holdout["measured"], holdout["converted"]) == (5, 1)
    assert winback["goal"] == {"event": "signup", "within": "1w"}  # the file's, which judged some
    assert winback["statement"].endswith(
        "; 4 enrollments of a version without a goal, not measured; versions differ in goal: "
        "each enrollment is judged by its version's")

    # With every file gone the recorded goals still judge; the latest one used is shown.
    with db.connect() as connection:
        gone = report.build(connection, [], now=T2 + timedelta(days=30)).to_json()
    [winback] = gone["playbooks"]
    assert winback["groups"]["treatment"]["converted"] == 8
    assert winback["goal"] == {"event": "signup", "within": "1w"}


def test_enrollments_of_a_version_without_a_goal_are_not_measured(db: sa.Engine,
                                                                  folder: Path) -> None:
    edit(folder, "playbooks/winback.yaml", "goal: { event: purchase, within: 14d }\n", "")
    without = load(folder)
    with db.begin() as connection:
        record_versions(connection, [without], T1)
    enroll(db, without.version, "n", 3, {"purchase": 3})
    edit(folder, "playbooks/winback.yaml", "actions:",
         "goal: { event: purchase, within: 14d }\nactions:")
    with db.connect() as connection:  # today's file has a goal; these entered without one
        document = report.build(connection, [load(folder)], now=T2 + timedelta(days=30))
    [winback] = document.to_json()["playbooks"]
    assert winback["conclusion"] == "no_goal"
    assert winback["statement"].startswith(
        "no goal defined (the versions these enrollments entered with have no `goal:`)")


# --- with the live cycle ----------------------------------------------------------------------

STEPS = """\
id: steps
name: Two steps
trigger:
  segment: {}
actions:
  - task: { title: "First call {{ customer.customer_id }}" }
  - wait: 3d
  - task: { title: "Second call {{ customer.customer_id }}" }
"""
RUN_SETTINGS = Settings()


@pytest.mark.parametrize("on_change", ["keep", "exit"])
def test_a_run_resumes_in_flight_enrollments_on_their_version(
        db: sa.Engine, tmp_path: Path, on_change: str) -> None:
    """After the second task's title is edited, enrollments made before the edit get the old
    title (keep), or end and get nothing more (exit); a new customer gets the new title."""
    run = pytest.importorskip("engine.outbox.run")  # the live cycle (issue 12, run part)
    (tmp_path / "playbooks").mkdir()
    path = tmp_path / "playbooks" / "steps.yaml"
    path.write_text(STEPS.replace("actions:", f"on_change: {on_change}\nactions:"))
    with db.begin() as connection:
        connection.execute(sa.insert(Customer.__table__), [{"customer_id": "a"}])
    (first,) = load_valid_playbooks([path], env={})
    run.run_cycle(db, [first], T1, RUN_SETTINGS, dispatch=False)
    path.write_text(path.read_text().replace("Second call", "Changed call"))
    with db.begin() as connection:
        connection.execute(sa.insert(Customer.__table__), [{"customer_id": "b"}])
    (second,) = load_valid_playbooks([path], env={})
    assert second.version != first.version
    run.run_cycle(db, [second], T1 + timedelta(days=4), RUN_SETTINGS, dispatch=False)
    with db.connect() as connection:
        titles = sorted((r.customer_id, r.payload["title"], r.status)
                        for r in connection.execute(select_actions()))
        ended = {r.customer_id: r.status for r in connection.execute(sa.select(enrollments))}
    if on_change == "keep":
        assert ("a", "Second call a", st.PLANNED) in titles
        assert ended["a"] == st.COMPLETED
    else:
        assert [t for t in titles if t[0] == "a"] == [("a", "First call a", st.CANCELLED)]
        assert ended["a"] == st.EXITED
    assert ("b", "First call b", st.PLANNED) in titles and ended["b"] == st.WAITING_STEP
