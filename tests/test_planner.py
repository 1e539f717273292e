"""The pure planner, without a database: holdout, limits, keys, due times, email checks.

Playbooks are parsed from YAML files (no connection); customers and events are plain dicts, as
engine/plan/reader.py hands them over. If one of these needed a database it could not run here:
no fixture here opens one, and `test_planner_imports_no_database_library` keeps it so.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from connectors.email import EmailConnector
from connectors.tasks import TaskConnector
from engine.format.playbook import Playbook
from engine.format.registry import load_connectors
from engine.format.templates import make_environment
from engine.format.validation import load_valid_playbooks, templates_dir
from engine.plan.build import PlaybookPlan
from engine.plan.planner import (
    UNSUBSCRIBE_URL,
    PlannedAction,
    PlannedEnrollment,
    Planner,
    action_key,
    in_holdout,
    over_limit,
    schedule,
)

AS_OF = datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
MAIL = '  - email: { subject: "Hello {{ customer.name }}", body: "We miss you" }\n'
_files = count()


def playbook(tmp_path: Path, more: str = "", actions: str = MAIL, pid: str = "pb") -> Playbook:
    """A segment playbook from YAML text, parsed and validated, nothing else."""
    path = tmp_path / f"{pid}-{next(_files)}.yaml"
    path.write_text(f"id: {pid}\nname: Test {pid}\ntrigger:\n  segment: {{}}\n{more}"
                    f"actions:\n{actions}", encoding="utf-8")
    (loaded,) = load_valid_playbooks([path], env={})
    return loaded


def planner(pb: Playbook) -> Planner:
    connectors = {kind: cls() for kind, cls in load_connectors().items()}
    return Planner(pb, AS_OF, connectors, make_environment(templates_dir(Path(pb.file))))


def person(cid: str, email: str | None = None, name: str = "Ann") -> dict[str, Any]:
    return {"customer_id": cid, "email": email, "name": name}


def test_planner_imports_no_database_library() -> None:
    source = (Path(__file__).parent.parent / "engine" / "plan" / "planner.py").read_text()
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(ast.parse(source))
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"sqlalchemy", "sqlite3", "psycopg", "sqlmodel"}


def test_holdout_is_stable_and_near_its_share(tmp_path: Path) -> None:
    pb = playbook(tmp_path, "holdout: 10%\n")
    keys = [(f"c{n}", f"2024-0{n % 9 + 1}") for n in range(20_000)]
    first = [in_holdout(pb, cid, occurrence) for cid, occurrence in keys]
    assert first == [in_holdout(pb, cid, occurrence) for cid, occurrence in keys]
    assert 0.09 < sum(first) / len(first) < 0.11
    other = playbook(tmp_path, "holdout: 10%\n", pid="other")  # another playbook, other group
    assert first != [in_holdout(other, cid, occurrence) for cid, occurrence in keys]
    none = playbook(tmp_path)
    assert not any(in_holdout(none, cid, occurrence) for cid, occurrence in keys[:1000])


def test_holdout_enrollment_gets_no_actions(tmp_path: Path) -> None:
    pb = playbook(tmp_path, "holdout: 50%\n")
    plan = planner(pb)
    made = [plan.enrollment(f"c{n}", "o", person(f"c{n}", f"c{n}@x.example"), None, {})
            for n in range(40)]
    held = [e for e in made if e.holdout]
    assert 0 < len(held) < 40
    assert all(e.actions == () for e in held)
    assert all(len(e.actions) == 1 for e in made if not e.holdout)


def test_limits_with_numbers(tmp_path: Path) -> None:
    capped = playbook(tmp_path, "limits: { max_enrollments: 2 }\n")
    assert over_limit(capped, 2, None) is None
    message = over_limit(capped, 3, None)
    assert message is not None and "3 would enter, over limits.max_enrollments 2" in message
    share = playbook(tmp_path, "limits: { max_percent: 20% }\n")
    assert over_limit(share, 300, 1500) is None
    message = over_limit(share, 301, 1500)
    assert message is not None and "301 would enter" in message
    assert "max_percent 20% = 300 of 1,500 customers" in message
    assert over_limit(playbook(tmp_path), 10**9, 1) is None  # no limits, never over


def test_over_limit_playbook_streams_no_enrollment(tmp_path: Path) -> None:
    pb = playbook(tmp_path, "limits: { max_enrollments: 1 }\n")
    one = PlannedEnrollment("c1", "o", False, None, ())

    def source(limit: int | None, only: object = None) -> Iterator[list[PlannedEnrollment]]:
        yield [one, one]

    within = PlaybookPlan(pb, entering=2, source=source)
    assert list(within.enrollments()) == [one, one]
    over = PlaybookPlan(pb, entering=2, over_limit=over_limit(pb, 2, None), source=source)
    assert over.over_limit is not None and list(over.batches()) == []


def test_keys_are_stable_short_readable_and_distinct(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    key = action_key(pb, "12347", "2024-05", 0, 0)
    assert key == action_key(pb, "12347", "2024-05", 0, 0)
    assert key.startswith("pb/12347/0.0/")
    variants = {key, action_key(pb, "12348", "2024-05", 0, 0),
                action_key(pb, "12347", "2024-06", 0, 0), action_key(pb, "12347", "2024-05", 1, 0),
                action_key(pb, "12347", "2024-05", 0, 1),
                action_key(playbook(tmp_path, pid="pb2"), "12347", "2024-05", 0, 0)}
    assert len(variants) == 6
    edited = playbook(tmp_path, "description: edited\n")  # same id, new version
    assert edited.version != pb.version
    assert action_key(edited, "12347", "2024-05", 0, 0) != key
    long = action_key(pb, "c" * 1000, "o" * 1000, 0, 0)
    assert len(long) <= 255
    # the hash covers the whole id: two ids sharing their first 48 characters still differ
    assert action_key(pb, "x" * 48 + "a", "o", 0, 0) != action_key(pb, "x" * 48 + "b", "o", 0, 0)


def test_due_times_and_stages_follow_the_waits(tmp_path: Path) -> None:
    pb = playbook(tmp_path, actions=MAIL + "  - wait: 3d\n"
                  '  - task: { title: "Call {{ customer.name }}", due_in: 2d }\n'
                  "  - wait: 12h\n  - points: { amount: 5 }\n"
                  '  - task: { title: "Again", due_in: 1d }\n')
    assert [(s.step, s.stage, s.delay) for s in schedule(pb)] == [
        (0, 0, timedelta(0)), (2, 1, timedelta(days=3)),
        (4, 2, timedelta(days=3, hours=12)), (5, 2, timedelta(days=3, hours=12))]
    made = planner(pb).enrollment("c1", "o", person("c1", "ann@x.example"), None, {})
    email, task, points, again = made.actions
    assert email.run_at == AS_OF and email.commit_now
    assert task.run_at == AS_OF + timedelta(days=3) and not task.commit_now
    assert task.fields["due_at"] == AS_OF + timedelta(days=5)
    assert points.run_at == again.run_at == AS_OF + timedelta(days=3, hours=12)
    assert [a.stage for a in made.actions] == [0, 1, 2, 2]
    assert len({a.key for a in made.actions}) == 4


def test_email_without_address_is_skipped_and_suppressed_in_any_case(tmp_path: Path) -> None:
    pb = playbook(tmp_path, actions=MAIL + '  - task: { title: "Call", due_in: 1d }\n')
    plan = planner(pb)
    blocked = {"ann@example.com": "unsubscribed"}
    ann = plan.enrollment("ann", "o", person("ann", "Ann@Example.COM"), None, blocked)
    bob = plan.enrollment("bob", "o", person("bob", None, "Bob"), None, blocked)
    cy = plan.enrollment("cy", "o", person("cy", "cy@example.com", "Cy"), None, blocked)
    assert (ann.actions[0].status, ann.actions[0].reason) == (
        "suppressed", "address is suppressed (unsubscribed)")
    assert ann.actions[0].fields["to"] == "Ann@Example.COM"  # shown as the customer has it
    assert (bob.actions[0].status, bob.actions[0].reason) == ("skipped", "no email address")
    assert (cy.actions[0].status, cy.actions[0].fields["subject"]) == ("planned", "Hello Cy")
    assert {e.actions[1].status for e in (ann, bob, cy)} == {"planned"}  # tasks need no address


def test_the_email_connector_decides_suppression() -> None:
    """The pure check the planner calls and the dispatcher will call again at send time."""
    email, task = EmailConnector(), TaskConnector()
    suppressed = {"ann@example.com": "bounced"}
    assert email.blocked("ANN@example.com ", suppressed) == "address is suppressed (bounced)"
    assert email.blocked("bob@example.com", suppressed) is None
    assert task.blocked("ann@example.com", suppressed) is None  # sends no mail, blocks nothing


def test_a_failing_template_is_an_error_naming_customer_and_action(tmp_path: Path) -> None:
    pb = playbook(tmp_path, actions='  - email: { subject: "Hi {{ customer.name }}", '
                  'body: "x" }\n')
    made = planner(pb).enrollment("c9", "o", person("c9", "c9@x.example", "A\nB"), None, {})
    (action,) = made.actions
    assert action.status == "dead" and action.error and action.reason is not None
    assert action.reason.startswith("customer c9, actions[0].email: ")
    assert made.errors("pb") == [f"pb: {action.reason}"]


AVERAGE = "Avg {{ customer.total_spent / (customer.purchase_count - 1) }}"


def buyer(cid: str, purchases: int) -> dict[str, Any]:
    return {**person(cid, f"{cid}@x.example"), "total_spent": 90.0, "purchase_count": purchases}


@pytest.mark.parametrize("body", [f'body: "{AVERAGE}"', f'html: "<p>{AVERAGE}</p>"'])
def test_an_inline_body_is_rendered_at_plan_time(tmp_path: Path, body: str) -> None:
    """The body, not only the subject: a one-time buyer's division by zero is this customer's
    error in the plan, where a live send would have failed."""
    pb = playbook(tmp_path, actions=f'  - email: {{ subject: "Hi", {body} }}\n')
    plan = planner(pb)
    (once,) = plan.enrollment("c1", "o", buyer("c1", 1), None, {}).actions
    (twice,) = plan.enrollment("c2", "o", buyer("c2", 3), None, {}).actions
    assert once.status == "dead" and once.error and twice.status == "planned"
    assert once.reason == "customer c1, actions[0].email: cannot render: float division by zero"
    # the plan carries the subject and where the body comes from, never the body's text
    assert "45.0" not in repr(twice.fields) and twice.fields["subject"] == "Hi"


def test_template_files_are_rendered_at_plan_time(tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "avg.txt.j2").write_text(f"Hello {{{{ customer.name }}}},\n{AVERAGE}\n",
                                        encoding="utf-8")
    (folder / "avg.html.j2").write_text("<a href=\"{{ unsubscribe_url }}\">x</a>\n",
                                         encoding="utf-8")
    pb = playbook(tmp_path, actions='  - email: { subject: "Hi", template: avg }\n')
    plan = planner(pb)
    (once,) = plan.enrollment("c1", "o", buyer("c1", 1), None, {}).actions
    (twice,) = plan.enrollment("c2", "o", buyer("c2", 3), None, {}).actions
    assert twice.status == "planned" and twice.fields["template"] == "avg"
    assert once.status == "dead" and once.error
    assert once.reason == (f"customer c1, actions[0].email: {folder / 'avg.txt.j2'}:2: "
                           "cannot render: float division by zero")
    renderer = plan.renderer(buyer("c2", 3), None)  # what preview renders the message with
    assert renderer.file("avg.html.j2") == f'<a href="{UNSUBSCRIBE_URL}">x</a>\n'
    assert renderer.file("gone.txt.j2") is None


def test_a_template_file_removed_after_validate_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "bye.txt.j2").write_text("Bye\n", encoding="utf-8")
    pb = playbook(tmp_path, actions='  - email: { subject: "Hi", template: bye }\n')
    (folder / "bye.txt.j2").unlink()
    (action,) = planner(pb).enrollment("c1", "o", buyer("c1", 2), None, {}).actions
    assert action.status == "dead" and action.error and action.reason is not None
    assert "no template file for 'bye'" in action.reason


GOLDEN = ("id: winback\nname: Win back\ntrigger:\n  segment: {}\nholdout: 30%\nactions:\n"
          '  - email: { subject: "Hello {{ customer.name }}", body: "We miss you" }\n'
          "  - wait: 3d\n"
          '  - task: { title: "Call {{ customer.name }}", due_in: 2d }\n')


def test_keys_and_holdout_are_pinned_across_versions(tmp_path: Path) -> None:
    """Literal keys and holdout groups of a fixed playbook text: a change to `action_key`,
    `in_holdout` or the version hash that would re-key (re-send) or regroup enrollments
    between Retain versions fails here. Re-planning gives the same enrollment. (Re-pinned once,
    in issue 12, when the version became the hash of the parsed document and its templates,
    before any live run had written a key.)"""
    path = tmp_path / "winback.yaml"
    path.write_text(GOLDEN, encoding="utf-8")
    (pb,) = load_valid_playbooks([path], env={})
    assert pb.version == "88b63d9f1c0533a7"
    assert action_key(pb, "12347", "2011-12-10T00:00:00Z", 1, 2) == \
        "winback/12347/1.2/af8d6d4e9eb26df13567543f7562e65a"
    assert [in_holdout(pb, c, "2011-12-10T00:00:00Z") for c in ("12346", "12347", "12348")] == \
        [False, False, True]
    args = ("12347", "2011-12-10T00:00:00Z", person("12347", "a@x.example"), None, {})
    made = planner(pb).enrollment(*args)
    assert made == planner(pb).enrollment(*args)
    assert not made.holdout and [a.key for a in made.actions] == [
        "winback/12347/0.0/157cfb0ad4e913a07ec378ba94678ced",
        "winback/12347/1.2/af8d6d4e9eb26df13567543f7562e65a"]
    held = ("12348", "2011-12-10T00:00:00Z", person("12348", "b@x.example"), None, {})
    assert planner(pb).enrollment(*held) == PlannedEnrollment(
        "12348", "2011-12-10T00:00:00Z", True, None, ())


def test_action_json_nests_the_connector_fields() -> None:
    """A connector's fields never mix with the plan's keys: a points `reason` is not a skip
    reason, and a field called `key` cannot overwrite the idempotency key."""
    points = PlannedAction(0, 0, "points", AS_OF, "planned",
                           {"amount": 5, "reason": "purchase", "key": "theirs"}, "k1")
    assert points.to_json() == {
        "type": "points", "step": 0, "stage": 0, "key": "k1", "commit_now": True,
        "run_at": "2024-05-01T08:30:00Z", "status": "planned",
        "fields": {"amount": 5, "reason": "purchase", "key": "theirs"}}
    skipped = PlannedAction(1, 0, "email", AS_OF, "skipped", {"subject": "Hi"}, "k2",
                            "no email address")
    data = skipped.to_json()
    assert (data["reason"], data["fields"]) == ("no email address", {"subject": "Hi"})


def test_a_loaded_playbook_renders_with_the_templates_it_was_loaded_with(tmp_path: Path) -> None:
    """The environment is made once per loaded playbook (the daemon's cycles reuse its
    compiled templates): an edit of the file reaches a playbook loaded after it, never one
    loaded before (that one keeps rendering what its version names)."""
    from engine.plan.build import playbook_environment

    (tmp_path / "templates").mkdir()
    letter = tmp_path / "templates" / "hello.txt.j2"
    letter.write_text("First words {{ unsubscribe_url }}\n", encoding="utf-8")
    email = '  - email: { subject: "Hi {{ customer.name }}", template: hello }\n'
    before = playbook(tmp_path, actions=email)
    environment = playbook_environment(before)
    assert playbook_environment(before) is environment  # made once, kept on the playbook
    letter.write_text("Edited words {{ unsubscribe_url }}\n", encoding="utf-8")
    after = playbook(tmp_path, actions=email)

    def text(pb: Playbook) -> str:
        connectors = {kind: cls() for kind, cls in load_connectors().items()}
        plan = Planner(pb, AS_OF, connectors, playbook_environment(pb),
                       unsubscribe=lambda address: f"https://x.example/u/{address}")
        (action,) = plan.actions("occ", person("c1", "ann@example.com"), None, {}, None)
        return str(action.fields["message"])

    assert "First words" in text(before) and "Edited words" not in text(before)
    assert "Edited words" in text(after)
