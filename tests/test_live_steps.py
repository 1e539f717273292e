"""A multi-step playbook through successive `retain run`s at later `--as-of`, on both databases:
an email (deferred by quiet hours), a 3-day wait, then a task and points; `exit_when` between
runs ends one enrollment and cancels what it had pending; `customer show` tells the whole story.
"""

from __future__ import annotations

import pytest
from live_support import Mailbox, Project, customer, mailbox, project, purchase, smtp_env

from engine.store import status as st
from engine.store.tables import actions, enrollments, points, tasks

__all__ = ["mailbox", "project"]  # fixtures
T = "2024-05-01T22:00:00Z"  # inside the quiet hours: the email is deferred to 08:00
STEPS = """trigger:
  inactive: { days: 30 }
exit_when: { event: refund }
actions:
  - email:
      subject: "We miss you, {{ customer.name }}"
      body: "Hello. Unsubscribe: {{ unsubscribe_url }}"
  - wait: 3d
  - task: { title: "Call {{ customer.name }}", assignee: retention }
  - points: { amount: 25, reason: come back }
"""


def statuses(project: Project, cid: str) -> list[tuple[int, str]]:
    return [(a["stage"], a["status"]) for a in project.rows(actions)
            if a["customer_id"] == cid]


def test_wait_resume_and_exit_across_runs(project: Project, mailbox: Mailbox,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    project.toml('[quiet_hours]\nemail = "21:00-08:00"\n')
    project.playbook("winback", STEPS)
    project.customers(customer("ann"), customer("bob"))
    project.events(purchase("p-ann", "ann", "2024-03-01T10:00:00Z"),
                   purchase("p-bob", "bob", "2024-03-01T10:00:00Z"))
    smtp_env(monkeypatch, mailbox.start().port)

    first = project.json("run", "--as-of", T)["playbooks"][0]
    assert (first["entered"], first["committed"]) == (2, {st.DEFERRED: 2})
    assert mailbox.received == []
    project.events({"event_id": "r-bob", "customer_id": "bob", "type": "refund",
                    "occurred_at": "2024-05-01T23:00:00Z", "amount": -20}, name="refund.jsonl")

    exits = project.json("run", "--as-of", "2024-05-02T00:00:00Z")["playbooks"][0]
    assert exits["exited"] == 1
    assert statuses(project, "bob") == [(0, st.CANCELLED)]
    bob = project.rows(enrollments, enrollments.c.customer_id == "bob")[0]
    assert bob["status"] == st.EXITED and "refund" in bob["end_reason"]
    cancelled = project.rows(actions, actions.c.customer_id == "bob")[0]
    assert "refund" in (cancelled["reason"] or "")

    project.retain("run", "--as-of", "2024-05-02T20:00:00Z")  # the deferred email only
    assert mailbox.recipients == [["ann@example.com"]]
    assert statuses(project, "ann") == [(0, st.SENT)]
    assert project.rows(tasks) == []

    project.retain("run", "--as-of", "2024-05-04T21:59:00Z")  # a minute early: still waiting
    assert project.rows(tasks) == []
    resumed = project.json("run", "--as-of", "2024-05-04T22:00:00Z")["playbooks"][0]
    assert resumed["dispatched"] == {st.SENT: 2}
    assert statuses(project, "ann") == [(0, st.SENT), (1, st.SENT), (1, st.SENT)]
    assert [(t["customer_id"], t["title"]) for t in project.rows(tasks)] == [("ann", "Call Ann")]
    assert [(p["customer_id"], p["amount"]) for p in project.rows(points)] == [("ann", 25)]
    ann = project.rows(enrollments, enrollments.c.customer_id == "ann")[0]
    assert ann["status"] == st.COMPLETED
    assert statuses(project, "bob") == [(0, st.CANCELLED)]
    project.retain("run", "--as-of", "2024-05-09T00:00:00Z")
    assert len(project.rows(actions)) == 4 and len(mailbox.received) == 1

    shown = project.json("customer", "show", "ann")
    assert [(e["playbook_id"], e["status"]) for e in shown["enrollments"]] == [
        ("winback", st.COMPLETED)]
    assert sorted((a["connector"], a["status"]) for a in shown["actions"]) == [
        ("email", st.SENT), ("points", st.SENT), ("task", st.SENT)]
    assert [t["title"] for t in shown["tasks"]] == ["Call Ann"]
    assert shown["points"]["balance"] == 25
    assert shown["facts"]["last_emailed_at"] == "2024-05-02T20:00:00Z"
    _, text, _ = project.retain("customer", "show", "bob")
    assert "exited" in text and "cancelled" in text


TWO_EMAILS = """trigger:
  inactive: { days: 30 }
actions:
  - email: { subject: "One", body: "One. {{ unsubscribe_url }}" }
  - wait: 1d
  - email: { subject: "Two", body: "Two. {{ unsubscribe_url }}" }
"""


def test_a_step_resumed_late_at_night_waits_for_the_quiet_hours_to_end(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second email is due a day after the first (12:00), but the run that resumes the
    enrollment comes at 23:00, inside the quiet hours: it is deferred to 08:00, not sent."""
    project.toml('[quiet_hours]\nemail = "21:00-08:00"\n')
    project.playbook("two", TWO_EMAILS)
    project.customers(customer("ann"))
    project.events(purchase("p-ann", "ann", "2024-03-01T10:00:00Z"))
    smtp_env(monkeypatch, mailbox.start().port)
    project.retain("run", "--as-of", "2024-05-01T12:00:00Z")
    assert len(mailbox.received) == 1
    project.retain("run", "--as-of", "2024-05-02T23:00:00Z")
    second = [a for a in project.rows(actions) if a["stage"] == 1]
    assert [(a["status"], a["next_attempt_at"].strftime("%Y-%m-%dT%H:%M")) for a in second] == [
        (st.DEFERRED, "2024-05-03T08:00")]
    assert len(mailbox.received) == 1
    project.retain("run", "--as-of", "2024-05-03T08:00:00Z")
    assert [str(m["Subject"]) for m in mailbox.messages] == ["One", "Two"]


def test_a_late_dispatch_does_not_send_inside_quiet_hours(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    project.toml('[quiet_hours]\nemail = "21:00-08:00"\n')
    project.playbook("two", TWO_EMAILS)
    project.customers(customer("ann"))
    project.events(purchase("p-ann", "ann", "2024-03-01T10:00:00Z"))
    smtp_env(monkeypatch, mailbox.start().port)
    project.retain("run", "--no-dispatch", "--as-of", "2024-05-01T12:00:00Z")
    project.retain("dispatch", "--as-of", "2024-05-01T23:00:00Z")
    assert mailbox.received == []
    (row,) = project.rows(actions)
    assert (row["status"], row["attempts"], row["next_attempt_at"].strftime("%Y-%m-%dT%H:%M")
            ) == (st.DEFERRED, 0, "2024-05-02T08:00")
    assert "quiet hours 21:00-08:00" in row["reason"]
    project.retain("dispatch", "--as-of", "2024-05-02T08:00:00Z")
    assert [str(m["Subject"]) for m in mailbox.messages] == ["One"]
