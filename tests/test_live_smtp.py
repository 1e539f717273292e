"""Live runs against a real aiosmtpd on 127.0.0.1, through the CLI, on both databases
(RELIABILITY 10, 14, 15, 16, 17).

An SMTP server that is down at the first run gets every message exactly once from later runs,
with no person re-driving; a template that fails for one customer dead-letters that action only;
an address unsubscribed between plan and dispatch gets nothing; what arrives is a real message
whose unsubscribe link carries a token `retain unsubscribe --token` applies.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from live_support import FROM, Mailbox, Project, customer, mailbox, project, purchase, smtp_env

from engine.store import status as st
from engine.store.tables import actions, attempts, suppressions

__all__ = ["mailbox", "project"]  # fixtures
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
PUBLIC = "https://retain.shop.example"
WINBACK = ("priority: 10\ntrigger:\n  inactive: {{ days: 30 }}\nactions:\n"
           "  - email:\n      subject: \"{subject}\"\n      template: winback\n")


def at(**delta: float) -> str:
    return (T0 + timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def shop(project: Project, *names: str, subject: str = "We miss you, {{ customer.name }}",
         text: str = "Hello {{ customer.name }},\nwe miss you.\n") -> None:
    """A win-back playbook with a text and an HTML template, and inactive customers."""
    project.playbook("winback", WINBACK.format(subject=subject))
    project.template("winback.txt.j2", text + "Unsubscribe: {{ unsubscribe_url }}\n")
    project.template("winback.html.j2", "<p>Hello {{ customer.name }}</p>\n"
                     "<a href=\"{{ unsubscribe_url }}\">Unsubscribe</a>\n")
    project.customers(*(customer(cid) for cid in names))
    project.events(*(purchase(f"p-{cid}", cid, "2024-03-01T10:00:00Z") for cid in names))


def test_a_server_down_at_the_first_run_gets_every_message_once_from_later_runs(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("ann", "bob", "cy", "dee")
    shop(project, *names)
    smtp_env(monkeypatch, mailbox.port)  # nothing listens there yet: connection refused
    first = project.json("run", "--as-of", at())["playbooks"][0]
    assert first["entered"] == 4
    assert first["dispatched"].get(st.SENT, 0) == 0
    assert first["dispatched"].get(st.DEAD, 0) == 0
    rows = project.rows(actions)
    assert {r["status"] for r in rows} <= {st.RETRYING, st.PLANNED}
    assert any(r["status"] == st.RETRYING for r in rows)
    failed = next(r for r in rows if r["status"] == st.RETRYING)
    assert failed["next_attempt_at"].replace(tzinfo=UTC) > T0  # backoff on the business clock
    assert failed["next_attempt_at"].replace(tzinfo=UTC) <= T0 + timedelta(minutes=5)

    _, shown, _ = project.retain("outbox", "show", str(failed["id"]))
    assert "retrying" in shown and "attempt" in shown.lower()
    detail = project.json("outbox", "show", str(failed["id"]))
    assert len(detail["attempts"]) == 1
    assert detail["attempts"][0]["outcome"] == st.RETRYING
    error = detail["attempts"][0]["error"] or ""
    assert "refused" in error.lower() or "connect" in error.lower(), error

    mailbox.start()
    project.retain("run", "--as-of", at(seconds=1))  # what failed waits for its backoff
    retried = [r for r in rows if r["status"] == st.RETRYING]
    assert len(mailbox.received) == len(rows) - len(retried)
    for hours in (1, 2, 3):  # the cron of a deployment: runs go on; no one re-drives
        project.retain("run", "--as-of", at(hours=hours))
    assert sorted(r[0] for r in mailbox.recipients) == [f"{n}@example.com" for n in names]
    assert set(mailbox.by_message_id().values()) == {1}
    sent = project.rows(actions)
    assert {r["status"] for r in sent} == {st.SENT}
    assert {str(m["Message-ID"]) for m in mailbox.messages} == {
        r["payload"]["message_id"] for r in sent}
    project.retain("run", "--as-of", at(hours=30))
    assert len(mailbox.received) == 4


def test_an_outage_costs_one_attempt_per_pass_not_every_message_s(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """engine/outbox/channel.py: when the server refuses connections, the row whose send found
    it out is retrying with an attempt counted; the rows sent alongside it are put back
    unchanged (no attempt used, none recorded), so an outage does not bring every message
    nearer to its dead letter at once."""
    names = ("ann", "bob", "cy", "dee")
    shop(project, *names)
    smtp_env(monkeypatch, mailbox.port)
    for hours in (0, 1, 2):  # three passes while the server is down
        project.retain("run", "--as-of", at(hours=hours))
        rows = project.rows(actions)
        assert sum(r["attempts"] for r in rows) == hours + 1, [
            (r["customer_id"], r["status"], r["attempts"]) for r in rows]
        assert {r["status"] for r in rows} <= {st.RETRYING, st.PLANNED}
        assert len(project.rows(attempts)) == hours + 1
    mailbox.start()
    project.retain("run", "--as-of", at(hours=3))
    assert {r["status"] for r in project.rows(actions)} == {st.SENT}
    assert sorted(r[0] for r in mailbox.recipients) == [f"{n}@example.com" for n in names]


def test_recipient_errors_through_a_run_550_bounces_451_retries(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """RELIABILITY 9: a 550 dead-letters that message and suppresses the address as bounced,
    a 451 is retried later; the other messages go."""
    shop(project, "ann", "bob", "cy")
    mailbox.rcpt_replies = {"ann@example.com": "550 5.1.1 <ann@example.com>: no such user",
                            "bob@example.com": "451 4.3.0 try again later"}
    smtp_env(monkeypatch, mailbox.start().port)
    line = project.json("run", "--as-of", at())["playbooks"][0]
    assert line["dispatched"] == {st.SENT: 1, st.DEAD: 1, st.RETRYING: 1}
    by_customer = {r["customer_id"]: r for r in project.rows(actions)}
    assert "no such user" in (by_customer["ann"]["last_error"] or "")
    assert by_customer["bob"]["status"] == st.RETRYING
    assert [(s["email"], s["reason"]) for s in project.rows(suppressions)] == [
        ("ann@example.com", "bounced")]
    mailbox.rcpt_replies.clear()
    project.retain("run", "--as-of", at(hours=1))
    assert sorted(r[0] for r in mailbox.recipients) == ["bob@example.com", "cy@example.com"]
    assert project.rows(actions)[0]["status"] == st.DEAD  # a bounce is not re-sent


def test_outbox_retry_re_drives_a_dead_message_with_the_same_message_id(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 554 at DATA dead-letters the message (no suppression: the address is fine); `retain
    outbox retry ID --as-of` puts it back and the next run sends the same message; an action
    dead since its plan has nothing to send and is refused with why."""
    shop(project, "ann")
    mailbox.data_replies = ["554 5.7.1 rejected: policy"]
    smtp_env(monkeypatch, mailbox.start().port)
    project.retain("run", "--as-of", at())
    (dead,) = project.rows(actions)
    assert dead["status"] == st.DEAD and "554" in dead["last_error"]
    assert project.rows(suppressions) == []
    _, said, _ = project.retain("outbox", "retry", str(dead["id"]), "--as-of", at(hours=1))
    assert "retrying" in said
    project.retain("run", "--as-of", at(minutes=59))
    assert mailbox.received == []
    project.retain("run", "--as-of", at(hours=1))
    (message,) = mailbox.messages
    assert str(message["Message-ID"]) == dead["payload"]["message_id"]
    detail = project.json("outbox", "show", str(dead["id"]))
    assert [a["outcome"] for a in detail["attempts"]] == [st.DEAD, st.SENT]
    assert detail["action"]["status"] == st.SENT

    project.customers(customer("eve", name="Eve\r\nBcc: x@evil.example"), name="eve.csv")
    project.events(purchase("p-eve", "eve", "2024-03-01T10:00:00Z"), name="eve.jsonl")
    project.retain("run", "--as-of", at(hours=2))
    (eve,) = project.rows(actions, actions.c.customer_id == "eve")
    code, out, err = project.retain("outbox", "retry", str(eve["id"]), ok=False)
    assert code == 1 and str(eve["id"]) in out + err
    assert project.rows(actions, actions.c.customer_id == "eve")[0]["status"] == st.DEAD


def test_a_template_that_fails_for_one_customer_dead_letters_that_action_only(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    shop(project, "ann", "bob",
         text="Your average order: {{ customer.total_spent / (customer.purchase_count - 1) }}\n")
    project.events(purchase("p-ann-2", "ann", "2024-03-02T10:00:00Z"), name="more.jsonl")
    smtp_env(monkeypatch, mailbox.start().port)
    line = project.json("run", "--as-of", at())["playbooks"][0]
    assert line["entered"] == 2
    by_customer = {r["customer_id"]: r for r in project.rows(actions)}
    assert by_customer["ann"]["status"] == st.SENT
    assert by_customer["bob"]["status"] == st.DEAD  # a one-time buyer: division by zero
    assert "bob" in by_customer["bob"]["reason"] and "division" in by_customer["bob"]["reason"]
    assert by_customer["bob"]["attempts"] == 0
    assert [r[0] for r in mailbox.recipients] == ["ann@example.com"]
    _, listed, _ = project.retain("outbox", "list", "--status", "dead")
    assert "bob" in listed


def test_a_header_injection_in_a_name_never_reaches_smtp(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    shop(project, "ann")
    project.customers(customer("eve", name="Eve\r\nBcc: x@evil.example"),
                      customer("mal", name="=?UTF-8?Q?Mal=0ABcc:_x@evil.example?="),
                      name="eve.csv")
    project.events(purchase("p-eve", "eve", "2024-03-01T10:00:00Z"),
                   purchase("p-mal", "mal", "2024-03-01T10:00:00Z"), name="eve.jsonl")
    smtp_env(monkeypatch, mailbox.start().port)
    project.retain("run", "--as-of", at())
    by_customer = {r["customer_id"]: r for r in project.rows(actions)}
    assert by_customer["eve"]["status"] == st.DEAD
    assert by_customer["mal"]["status"] == st.DEAD
    assert "injection" in by_customer["mal"]["reason"]
    assert by_customer["ann"]["status"] == st.SENT
    assert mailbox.recipients == [["ann@example.com"]]
    assert not any(b"evil" in data for data in mailbox.received)


def test_unsubscribe_between_plan_and_dispatch_suppresses_any_case(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    shop(project, "ann", "bob", "cy")
    smtp_env(monkeypatch, mailbox.start().port, RETAIN_PUBLIC_URL=PUBLIC)
    project.retain("run", "--no-dispatch", "--as-of", at())
    assert {r["status"] for r in project.rows(actions)} == {st.PLANNED}
    _, said, _ = project.retain("unsubscribe", "Ann@Example.COM")
    assert "ann@example.com" in said
    # bob's bounce arrives through a suppressions file: only the dispatcher's check sees it
    path = project.file("bounces.csv", "email,reason\nBOB@example.com,bounced\n")
    project.retain("sync", "suppressions", str(path))
    report = project.json("dispatch", "--as-of", at(minutes=5))
    assert report["totals"].get(st.SENT) == 1
    by_customer = {r["customer_id"]: r for r in project.rows(actions)}
    assert by_customer["ann"]["status"] == st.SUPPRESSED
    assert by_customer["bob"]["status"] == st.SUPPRESSED
    assert "bounced" in (by_customer["bob"]["reason"] or "")
    assert by_customer["cy"]["status"] == st.SENT
    assert mailbox.recipients == [["cy@example.com"]]


def test_an_address_stored_in_mixed_case_is_suppressed_by_any_spelling(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """RELIABILITY 17 from the customer file's side: the customer's address is stored as the
    file spells it; unsubscribing it in lower case before dispatch, or suppressing it before
    the plan, still stops the email."""
    shop(project, "ann", "bob")
    project.customers(customer("ann", email="Ann.Lee@Example.COM"),
                      customer("bob", email="BOB@EXAMPLE.com"), name="mixed.csv")
    path = project.file("old.csv", "email,reason\nbob@example.com,complained\n")
    project.retain("sync", "suppressions", str(path))
    smtp_env(monkeypatch, mailbox.start().port)
    project.retain("run", "--no-dispatch", "--as-of", at())
    by_customer = {r["customer_id"]: r for r in project.rows(actions)}
    assert by_customer["bob"]["status"] == st.SUPPRESSED  # at plan time
    assert by_customer["ann"]["status"] == st.PLANNED
    project.retain("unsubscribe", "ann.lee@example.com")
    project.retain("dispatch", "--as-of", at(minutes=1))
    assert {r["status"] for r in project.rows(actions)} == {st.SUPPRESSED}
    assert mailbox.received == []


def test_the_message_that_arrives_and_its_unsubscribe_token(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    shop(project, "cy")
    smtp_env(monkeypatch, mailbox.start().port, RETAIN_PUBLIC_URL=PUBLIC)
    project.retain("run", "--as-of", at())
    (message,) = mailbox.messages
    assert str(message["From"]) == FROM
    assert str(message["To"]) == "Cy <cy@example.com>"
    assert str(message["Subject"]) == "We miss you, Cy"
    row = project.rows(actions)[0]
    assert str(message["Message-ID"]) == row["payload"]["message_id"]
    assert message["Date"].datetime == T0  # the business clock, not the wall clock
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "Hello Cy" in text and "<p>Hello Cy</p>" in html
    header = str(message["List-Unsubscribe"])
    assert header.startswith(f"<{PUBLIC}/unsubscribe?token=") and header.endswith(">")
    assert "\n" not in header
    assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    link = header[1:-1]
    assert link in text and link in html.replace("&amp;", "&")
    token = parse_qs(urlsplit(link).query)["token"][0]

    assert project.retain("unsubscribe", "--token", token + "x", ok=False)[0] == 1
    assert project.rows(suppressions) == []
    _, said, _ = project.retain("unsubscribe", "--token", token)
    assert "cy@example.com" in said
    (kept,) = project.rows(suppressions)
    assert (kept["email"], kept["reason"]) == ("cy@example.com", "unsubscribed")
    # the next email to cy (another playbook) is suppressed at plan time
    project.playbook("second", WINBACK.format(subject="Still there?"))
    project.retain("run", "--as-of", at(days=1))
    second = [r for r in project.rows(actions) if r["playbook_id"] == "second"]
    assert [r["status"] for r in second] == [st.SUPPRESSED]
    assert len(mailbox.received) == 1
