"""`retain daemon` as a real process, on both databases, sending to a real aiosmtpd and spoken
to over real HTTP (tests/daemon_support.py). Nothing here asserts speed: the waits are generous
and only bound how long a broken daemon makes the test hang (latency is bench/bench_daemon.py's).
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from daemon_support import WAKE_UP, WELCOME, running, wait_for
from live_support import Mailbox, Project, customer, mailbox, project, purchase, smtp_env

from engine.store import status as st
from engine.store.tables import actions, enrollments

__all__ = ["mailbox", "project", "running"]  # fixtures



def now_iso(offset_s: float = 0.0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset_s))




def test_an_event_posted_to_the_api_becomes_a_delivered_email(
        project: Project, mailbox: Mailbox, running: Any) -> None:
    mailbox.start()
    project.playbook("welcome", WELCOME)
    project.customers(customer("ann"))
    daemon = running()
    reply = daemon.post("/v1/events", {"event_id": "o-1", "customer_id": "ann",
                                       "type": "purchase", "occurred_at": now_iso(),
                                       "amount": 30})
    assert reply.status_code < 300, reply.text
    wait_for(lambda: mailbox.to("ann@example.com"), what="the welcome email")
    [message] = mailbox.to("ann@example.com")
    assert message["Subject"] == "Welcome Ann"
    [row] = project.rows(actions)
    assert row["status"] == st.SENT
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert len(mailbox.received) == 1


def test_the_sweep_at_start_acts_on_state_and_on_events_synced_while_down(
        project: Project, mailbox: Mailbox, running: Any) -> None:
    mailbox.start()
    project.playbook("wake-up", WAKE_UP)
    project.playbook("welcome", WELCOME)
    project.customers(customer("ann"), customer("bob"))
    project.events(purchase("o-9", "bob", now_iso(-3600)))  # synced while no daemon ran
    daemon = running()
    wait_for(lambda: mailbox.to("ann@example.com") and mailbox.to("bob@example.com"),
             what="the sweep's emails")
    assert [str(m["Subject"]) for m in mailbox.to("ann@example.com")] == ["We miss you, Ann"]
    assert [str(m["Subject"]) for m in mailbox.to("bob@example.com")] == ["Welcome Bob"]
    daemon.signal(signal.SIGINT)
    assert daemon.wait() == 0


def test_an_invalid_edit_keeps_the_old_version_running_and_logs_where(
        project: Project, mailbox: Mailbox, running: Any) -> None:
    mailbox.start()
    path = project.playbook("welcome", WELCOME)
    project.customers(customer("ann"), customer("bob"))
    daemon = running()
    path.write_text(path.read_text().replace("first_purchase: { lookback: 2d }",
                                             "first_purchase: { lookbak: 2d }"))
    wait_for(lambda: any("welcome.yaml:" in r.get("message", "") and "lookbak" in r["message"]
                         for r in daemon.records()), what="the reload error in the log")
    reply = daemon.post("/v1/events", {"event_id": "o-2", "customer_id": "bob",
                                       "type": "purchase", "occurred_at": now_iso()})
    assert reply.status_code < 300, reply.text
    wait_for(lambda: mailbox.to("bob@example.com"), what="the old version's email")
    [row] = project.rows(enrollments)
    assert row["customer_id"] == "bob"
    daemon.signal()
    assert daemon.wait() == 0


def test_sigterm_during_dispatch_exits_0_in_the_grace_period_with_nothing_lost(
        project: Project, mailbox: Mailbox, running: Any) -> None:
    project.playbook("wake-up", WAKE_UP)
    people = [customer(f"c{n:03}") for n in range(300)]
    project.customers(*people)
    mailbox.delay = 0.05  # 8 connections: about 160 messages a second
    mailbox.start()
    daemon = running(args=("--grace", "20"))
    wait_for(lambda: len(mailbox.received) >= 20, what="dispatch to be under way")
    daemon.signal(signal.SIGTERM)
    started = time.monotonic()
    assert daemon.wait(timeout=60) == 0
    assert time.monotonic() - started < 25
    rows = project.rows(actions)
    assert len(rows) == 300
    sent = [r for r in rows if r["status"] == st.SENT]
    assert 20 <= len(sent) < 300  # stopped mid-dispatch
    assert all(r["status"] in (st.SENT, st.PLANNED) for r in rows)  # none left claimed
    assert len(mailbox.received) == len(sent)
    assert all(n == 1 for n in mailbox.by_message_id().values())
    running()  # a new daemon finishes the rest, each message once
    wait_for(lambda: len(mailbox.received) == 300, what="the rest of the emails")
    assert all(n == 1 for n in mailbox.by_message_id().values())


def test_segments_library_drives_the_daemon_to_an_email(
        project: Project, mailbox: Mailbox, running: Any) -> None:
    """A pipeline that speaks Segment's protocol, unchanged but for its host: identify, then
    `Order Completed`, become a customer and a purchase, and the welcome email goes out."""
    from datetime import UTC, datetime

    from daemon_support import TOKEN
    from segment.analytics import Client

    mailbox.start()
    project.playbook("welcome", WELCOME)
    daemon = running()
    errors: list[object] = []
    client = Client(write_key=TOKEN, host=daemon.url, gzip=True, max_retries=0,
                    on_error=lambda error, _batch: errors.append(error))
    client.identify(user_id="u-1", traits={"email": "dana@example.com", "firstName": "Dana",
                                           "lastName": "Lee"})
    client.track(user_id="u-1", event="Order Completed", properties={"total": 42.5},
                 timestamp=datetime.now(UTC))
    client.flush()
    client.shutdown()
    assert errors == []
    wait_for(lambda: mailbox.to("dana@example.com"), what="the welcome email")
    assert str(mailbox.to("dana@example.com")[0]["Subject"]) == "Welcome Dana Lee"


def test_the_running_api_refuses_bad_tokens_and_keeps_good_items(
        project: Project, mailbox: Mailbox, running: Any) -> None:
    mailbox.start()
    project.playbook("welcome", WELCOME)
    project.customers(customer("ann"))
    daemon = running()
    assert daemon.post("/v1/events", [], headers={"Authorization": "Bearer wrong"}
                       ).status_code == 401
    good = {"event_id": "o-5", "customer_id": "ann", "type": "purchase",
            "occurred_at": now_iso(), "amount": 5}
    bad = {"event_id": "o-6", "customer_id": "ann", "type": "purchase",
           "occurred_at": "yesterday-ish"}
    reply = daemon.post("/v1/events", [bad, good])
    assert reply.status_code == 422
    assert "occurred_at" in reply.text and "0" in reply.text
    wait_for(lambda: mailbox.to("ann@example.com"), what="the good item's email")
    daemon.signal()
    assert daemon.wait() == 0


def test_a_second_signal_exits_at_once(project: Project, mailbox: Mailbox,
                                       running: Any) -> None:
    project.playbook("wake-up", WAKE_UP)
    project.customers(*(customer(f"c{n:02}") for n in range(40)))
    mailbox.delay = 3.0  # every send in flight for seconds
    mailbox.start()
    daemon = running(args=("--grace", "60"))
    wait_for(lambda: mailbox.received, what="the first send")  # the next ones are in flight
    daemon.signal(signal.SIGTERM)
    time.sleep(0.5)
    daemon.signal(signal.SIGTERM)
    started = time.monotonic()
    assert daemon.wait(timeout=30) == 1
    assert time.monotonic() - started < 30  # not the 60 s grace


def test_it_refuses_to_start_without_a_mail_transport(project: Project) -> None:
    project.playbook("welcome", WELCOME)
    code, _, err = project.retain("daemon", "playbooks", ok=False)
    assert code == 1 and "RETAIN_SMTP_HOST" in err and "Nothing was committed" in err


def test_an_address_in_use_is_refused_before_anything_starts(
        project: Project, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    smtp_env(monkeypatch, mailbox.port)
    project.playbook("welcome", WELCOME)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = project.retain("daemon", "playbooks", "--listen", f"127.0.0.1:{port}",
                                      ok=False)
    assert code == 1 and f"cannot listen on 127.0.0.1:{port}" in err
