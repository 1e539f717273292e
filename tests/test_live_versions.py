"""Playbook versions across live runs, through the CLI and a real aiosmtpd, on both databases
(docs/PLAYBOOKS.md "Versions"): an in-flight enrollment finishes with the templates it entered
with even after the file is edited; a comment-only edit is not a new version; `on_change: exit`
ends in-flight enrollments once the version changes.
"""

from __future__ import annotations

import pytest
from live_support import Mailbox, Project, customer, mailbox, project, purchase, smtp_env

from engine.store import status as st
from engine.store.tables import actions, enrollments, versions

__all__ = ["mailbox", "project"]  # fixtures
T0 = "2024-05-01T10:00:00Z"
LATER = "2024-05-04T10:00:00Z"
STEPS = """trigger:
  inactive: {{ days: 30 }}
{more}actions:
  - email: {{ subject: "Hi {{{{ customer.name }}}}", template: first }}
  - wait: 3d
  - email: {{ subject: "Still there?", template: second }}
"""


def shop(project: Project, more: str = "") -> None:
    project.playbook("winback", STEPS.format(more=more))
    project.template("first.txt.j2", "First {{ unsubscribe_url }}\n")
    project.template("second.txt.j2", "Second, as written on day one. {{ unsubscribe_url }}\n")
    project.customers(customer("ann"))
    project.events(purchase("p-ann", "ann", "2024-03-01T10:00:00Z"))


def test_an_enrollment_keeps_the_templates_it_entered_with(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    shop(project)
    smtp_env(monkeypatch, mailbox.start().port)
    project.retain("run", "--as-of", T0)
    (entered,) = project.rows(enrollments)
    path = project.root / "playbooks" / "winback.yaml"
    path.write_text("# a comment changes nothing\n" + path.read_text(), encoding="utf-8")
    project.retain("run", "--as-of", "2024-05-02T10:00:00Z")
    assert len(project.rows(versions)) == 1  # comment-only: the same version
    project.template("second.txt.j2", "Second, edited later. {{ unsubscribe_url }}\n")
    project.retain("run", "--as-of", LATER)
    assert len(project.rows(versions)) == 2  # the template edit is a new version
    first, second = mailbox.messages
    assert "Second, as written on day one." in second.get_content()
    assert project.rows(enrollments)[0]["version"] == entered["version"]
    assert {r["status"] for r in project.rows(actions)} == {st.SENT}


def test_on_change_exit_ends_in_flight_enrollments(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    shop(project, more="on_change: exit\n")
    smtp_env(monkeypatch, mailbox.start().port)
    project.retain("run", "--as-of", T0)
    project.template("second.txt.j2", "Second, edited later. {{ unsubscribe_url }}\n")
    line = project.json("run", "--as-of", LATER)["playbooks"][0]
    assert line["exited"] == 1
    (ann,) = project.rows(enrollments)
    assert ann["status"] == st.EXITED and ann["end_reason"]
    assert len(mailbox.received) == 1  # the second email never went
    assert [r["stage"] for r in project.rows(actions)] == [0]
