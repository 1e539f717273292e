"""`retain run` end to end: the CLI, a project folder with retain.toml, a real aiosmtpd, both
databases (RELIABILITY 8, 21, 22).

What a live run commits is the plan `dry-run --json` printed for the same moment, caps, priority
and quiet hours included; running it again at once sends nothing new; holdout customers get
nothing. Everything goes through `retain ...` as a user types it.
"""

from __future__ import annotations

from typing import Any

import pytest
from live_support import Mailbox, Project, customer, mailbox, project, purchase, smtp_env

from engine.store import status as st
from engine.store.tables import actions, enrollments

__all__ = ["mailbox", "project"]  # fixtures
AS_OF = "2024-05-01T13:00:00Z"  # 22:00 in Tokyo: inside the email quiet hours there
TOML = ('[retain]\ntimezone = "UTC"\n\n[caps]\nemail = "1/7d"\n\n'
        '[quiet_hours]\nemail = "21:00-08:00"\n')
EMAIL = ('actions:\n  - email:\n      subject: "{subject}, {{{{ customer.name }}}}"\n'
         '      body: "Hello {{{{ customer.name }}}}. Unsubscribe: {{{{ unsubscribe_url }}}}"\n')


def inactive(project: Project, pid: str, priority: int, *, when: str = "",
             more: str = "", subject: str = "We miss you") -> None:
    project.playbook(pid, f"priority: {priority}\ntrigger:\n  inactive: {{ days: 30 }}\n"
                     + (f"when:\n  - {when}\n" if when else "") + more
                     + EMAIL.format(subject=subject))


def committed(project: Project) -> dict[str, Any]:
    """The rows a run wrote, in dry-run's terms: enrollments and their stage-0 actions."""
    occurrence = {}
    entered = set()
    for row in project.rows(enrollments):
        occurrence[row["id"]] = row["occurrence_key"]
        entered.add((row["playbook_id"], row["customer_id"], row["occurrence_key"],
                     row["holdout"]))
    done = {(row["playbook_id"], row["customer_id"], occurrence[row["enrollment_id"]],
             row["idempotency_key"], row["status"], row["reason"],
             row["next_attempt_at"].strftime("%Y-%m-%dT%H:%M:%SZ"))
            for row in project.rows(actions)}
    return {"enrollments": entered, "actions": done}


def planned(plan: dict[str, Any]) -> dict[str, Any]:
    """The same, from `dry-run --json`."""
    entered, done = set(), set()
    for playbook in plan["playbooks"]:
        for e in playbook["enrollments"]:
            entered.add((playbook["id"], e["customer_id"], e["occurrence"], e["holdout"]))
            done |= {(playbook["id"], e["customer_id"], e["occurrence"], a["key"], a["status"],
                      a.get("reason"), a["run_at"]) for a in e["actions"] if a["commit_now"]}
    return {"enrollments": entered, "actions": done}


def competing_shop(project: Project) -> None:
    """Two playbooks after the same inactive customers and one email slot a week each.

    `vip-winback` (priority 50) wants the Norwegians, `winback` (priority 10) everyone; Kai
    lives in Tokyo, where 13:00 UTC is 22:00, inside the quiet hours."""
    project.toml(TOML)
    inactive(project, "vip-winback", 50, when="country: { eq: NO }", subject="Come back")
    inactive(project, "winback", 10)
    project.customers(customer("ann", country="NO"), customer("bob", country="NO"),
                      customer("cy", country="SE"), customer("dee", country="SE"),
                      customer("kai", country="NO", timezone="Asia/Tokyo"))
    project.events(*(purchase(f"p-{cid}", cid, "2024-03-01T10:00:00Z")
                     for cid in ("ann", "bob", "cy", "dee", "kai")))


def test_run_commits_the_dry_run_plan_and_a_second_run_sends_nothing(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    competing_shop(project)
    project.playbook("call", "priority: 5\ntrigger:\n  inactive: { days: 30 }\n"
                     "holdout: 50%\nactions:\n  - task: { title: Call, due_in: 1d }\n")
    smtp_env(monkeypatch, mailbox.start().port)
    before = project.json("dry-run", "--as-of", AS_OF)
    plan = planned(before)
    held = {e[1] for e in plan["enrollments"] if e[0] == "call" and e[3]}
    assert held and len(held) < 5  # both groups, so the holdout column is compared too

    project.retain("run", "--no-dispatch", "--as-of", AS_OF)
    assert committed(project) == plan
    assert mailbox.received == []  # --no-dispatch sends nothing
    by_key = {(a[0], a[1]): a for a in plan["actions"]}
    # the plan itself is what this test is about: caps, priority and quiet hours all show
    assert by_key[("vip-winback", "ann")][4] == st.PLANNED
    assert by_key[("winback", "ann")][4] == st.CAPPED
    assert "vip-winback" in by_key[("winback", "ann")][5]  # the loser's reason names the winner
    assert by_key[("winback", "cy")][4] == st.PLANNED
    assert by_key[("vip-winback", "kai")][4] == st.DEFERRED
    assert by_key[("vip-winback", "kai")][6] == "2024-05-01T23:00:00Z"  # 08:00 in Tokyo
    assert by_key[("winback", "kai")][4] == st.CAPPED
    assert ("vip-winback", "cy") not in by_key
    assert {a[1] for a in plan["actions"] if a[0] == "call"} == {
        "ann", "bob", "cy", "dee", "kai"} - held

    report = project.json("run", "--as-of", AS_OF)
    lines = {line["id"]: line for line in report["playbooks"]}
    assert lines["vip-winback"]["entered"] == lines["winback"]["entered"] == 0
    assert lines["call"]["dispatched"] == {st.SENT: 5 - len(held)}
    assert lines["vip-winback"]["dispatched"] == {st.SENT: 2}
    assert lines["winback"]["dispatched"] == {st.SENT: 2}
    assert sorted(r[0] for r in mailbox.recipients) == [
        "ann@example.com", "bob@example.com", "cy@example.com", "dee@example.com"]
    outbox = project.rows(actions)

    again = project.json("run", "--as-of", AS_OF)
    assert all(line["entered"] == 0 and line["dispatched"] == {} and line["committed"] == {}
               for line in again["playbooks"])
    assert len(mailbox.received) == 4
    assert project.rows(actions) == outbox
    after = project.json("dry-run", "--as-of", AS_OF)
    assert after["playbooks"][0]["entering"] == 0
    assert after["historical"] is False  # the email_sent events just recorded are at as-of
    assert project.json("dry-run", "--as-of", "2024-05-02T13:00:00Z")["historical"] is False


def test_a_first_run_with_dispatch_sends_once_and_the_second_sends_nothing(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    competing_shop(project)
    smtp_env(monkeypatch, mailbox.start().port)
    project.retain("run", "--as-of", AS_OF)
    assert len(mailbox.received) == 4
    assert all(n == 1 for n in mailbox.by_message_id().values())
    statuses = sorted(row["status"] for row in project.rows(actions))
    assert statuses == sorted([st.SENT] * 4 + [st.CAPPED] * 3 + [st.DEFERRED])
    project.retain("run", "--as-of", AS_OF)
    assert len(mailbox.received) == 4
    # past Kai's quiet hours, the deferred email goes, once
    project.retain("run", "--as-of", "2024-05-01T23:30:00Z")
    assert [r[0] for r in mailbox.recipients[4:]] == ["kai@example.com"]
    project.retain("run", "--as-of", "2024-05-02T00:30:00Z")
    assert len(mailbox.received) == 5


def test_holdout_customers_get_nothing(project: Project, mailbox: Mailbox,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    smtp_env(monkeypatch, mailbox.start().port)
    inactive(project, "winback", 10, more="holdout: 50%\n")
    names = [f"c{n:02d}" for n in range(12)]
    project.customers(*(customer(cid) for cid in names))
    project.events(*(purchase(f"p-{cid}", cid, "2024-03-01T10:00:00Z") for cid in names))
    report = project.json("run", "--as-of", AS_OF)
    line = report["playbooks"][0]
    rows = project.rows(enrollments)
    held = {row["customer_id"] for row in rows if row["holdout"]}
    treated = {row["customer_id"] for row in rows if not row["holdout"]}
    assert held and treated, "12 customers at 50% should give both groups"
    assert (line["entered"], line["holdout"]) == (12, len(held))
    assert {row["customer_id"] for row in project.rows(actions)} == treated
    assert {r[0].split("@")[0] for r in mailbox.recipients} == treated
    assert all(row["status"] == st.COMPLETED and row["end_reason"] == "holdout"
               for row in rows if row["holdout"])
    shown = project.json("customer", "show", sorted(held)[0])
    assert shown["enrollments"][0]["holdout"] is True


def test_the_run_table_fits_80_columns_with_whole_playbook_ids(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The text summary is read by people: a playbook id (up to 18 characters) on one line,
    every heading whole, within 80 columns (the demo prints this table first)."""
    monkeypatch.setenv("COLUMNS", "80")
    smtp_env(monkeypatch, mailbox.start().port)
    inactive(project, "negative-feedback", 20)
    inactive(project, "birthday-greeting", 10)
    project.customers(customer("ann"))
    project.events(purchase("p-ann", "ann", "2024-03-01T10:00:00Z"))
    _, text, _ = project.retain("run", "--as-of", AS_OF)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    assert any("negative-feedback" in line for line in lines), text
    assert any("birthday-greeting" in line for line in lines), text
    heading = next(line for line in lines if "holdout" in line)
    for name in ("entered", "holdout", "sent", "deferred", "capped", "failed", "dead"):
        assert name in heading, text


LOGIN_MAIL = """trigger:
  event: { type: login }
reentry: always
actions:
  - email:
      subject: "Welcome back, {{ customer.name }}"
      body: "Your share: {{ 100 // event.amount }}. {{ unsubscribe_url }}"
"""


def login(n: int, day: str, amount: int = 1) -> dict[str, Any]:
    return {"event_id": f"l{n}", "customer_id": "ann", "type": "login",
            "occurred_at": f"{day}T09:00:00Z", "amount": amount}


def test_a_cap_of_two_emails_in_seven_days_holds_across_runs(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """RELIABILITY 22: the third email within 7 days is capped with the reason; a dead email
    (its template failed) takes no slot; a week after the first, email goes again."""
    project.toml('[caps]\nemail = "2/7d"\n')
    project.playbook("hello", LOGIN_MAIL)
    project.customers(customer("ann"))
    smtp_env(monkeypatch, mailbox.start().port)
    days = ["2024-05-01", "2024-05-02", "2024-05-03", "2024-05-04", "2024-05-08"]
    for n, day in enumerate(days):
        project.events(login(n, day, amount=0 if n == 1 else 1), name=f"login{n}.jsonl")
        project.retain("run", "--as-of", f"{day}T10:00:00Z")
    rows = project.rows(actions)
    assert [r["status"] for r in rows] == [st.SENT, st.DEAD, st.SENT, st.CAPPED, st.SENT]
    assert "2/7d" in rows[3]["reason"], rows[3]["reason"]
    assert len(mailbox.received) == 3


def test_quiet_hours_defer_to_the_end_in_the_customer_zone_and_dry_run_says_why(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """RELIABILITY 21: due at 05:30 Berlin time with quiet hours 22:00-06:00: deferred to 06:00
    Berlin (04:00 UTC in summer), the reason in dry-run, sent by the first run after it."""
    project.toml('[quiet_hours]\nemail = "22:00-06:00"\n')
    inactive(project, "winback", 10)
    project.customers(customer("ann", timezone="Europe/Berlin"))
    project.events(purchase("p-ann", "ann", "2024-03-01T10:00:00Z"))
    smtp_env(monkeypatch, mailbox.start().port)
    early = "2024-05-01T03:30:00Z"  # 05:30 in Berlin
    (action,) = project.json("dry-run", "--as-of", early)["playbooks"][0]["enrollments"][0][
        "actions"]
    assert (action["status"], action["run_at"]) == (st.DEFERRED, "2024-05-01T04:00:00Z")
    assert "quiet" in action["reason"]
    _, text, _ = project.retain("dry-run", "--as-of", early)
    assert "deferred" in text
    project.retain("run", "--as-of", early)
    assert mailbox.received == []
    project.retain("run", "--as-of", "2024-05-01T03:59:00Z")
    assert mailbox.received == []
    project.retain("run", "--as-of", "2024-05-01T04:00:00Z")
    assert mailbox.recipients == [["ann@example.com"]]
