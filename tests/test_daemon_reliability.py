"""`retain daemon` under failure, as real processes (tests/daemon_support.py) sending to a real
aiosmtpd: replicas sharing one PostgreSQL database, SIGKILL mid-dispatch, the leader killed,
stops that must hand the lead over (docs/DAEMON.md, ../shared/RELIABILITY.md 3-6).

The leases are set short (`RETAIN_DAEMON_LEASE_TTL`, `RETAIN_DAEMON_CLAIM_LEASE`) so that what a
killed process held comes back in seconds; nothing asserts speed: every wait is generous and
only bounds how long a broken daemon makes the test hang.
"""

from __future__ import annotations

import dataclasses
import signal
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from daemon_support import WAKE_UP, WELCOME, Daemon, running, wait_for
from live_support import Mailbox, Project, customer, mailbox, project, smtp_env
from test_daemon import now_iso

from engine.clock import utcnow
from engine.outbox.dispatch import heartbeat_every
from engine.store import status as st
from engine.store.tables import actions, leaders

__all__ = ["mailbox", "project", "running"]  # fixtures

SHORT = {"RETAIN_DAEMON_LEASE_TTL": "2", "RETAIN_DAEMON_CLAIM_LEASE": "4"}
"""Leases short enough that a killed process's lead and claims come back within seconds."""




def postgresql_only(project: Project) -> None:
    """Replicas share work only on PostgreSQL (docs/DEPLOYMENT.md); SQLite runs one daemon."""
    if not project.url.startswith("postgresql"):
        pytest.skip("several replicas need PostgreSQL")


def leading(daemon: Daemon) -> list[str]:
    """The log lines in which this replica says it took the lead."""
    return [r["message"] for r in daemon.records()
            if r.get("message", "").startswith("leading the schedule at epoch")]


def address_of(message: Any) -> str:
    """The bare recipient of a received email (one per customer here: it names the action)."""
    return str(message["To"]).rsplit("<", 1)[-1].rstrip(">")


def test_the_heartbeat_stays_well_inside_the_claim_lease() -> None:
    """Five beats fit in the lease whatever it is, so a database away for a moment does not
    let another worker take over a row being sent."""
    assert heartbeat_every(timedelta(seconds=60)) == 10
    assert heartbeat_every(timedelta(seconds=3)) == 0.5


def test_three_replicas_deliver_5000_emails_once_and_a_killed_leader_is_replaced(
        project: Project, mailbox: Mailbox, running: Any) -> None:
    postgresql_only(project)
    project.playbook("wake-up", WAKE_UP)
    project.customers(*(customer(f"c{n:04}") for n in range(5000)))
    mailbox.start()
    # the leader's first sweep queues them; 24 SMTP connections on a busy machine: patient
    replicas = [running(env={**SHORT, "RETAIN_SMTP_TIMEOUT": "60"}) for _ in range(3)]
    wait_for(lambda: len(mailbox.received) >= 5000, timeout=900, every=1,
             what="5000 emails from three replicas")
    rows = wait_for(lambda: (found := project.rows(actions)) and all(
        r["status"] == st.SENT for r in found) and found, timeout=120,
        what="every action recorded sent")
    assert len(rows) == 5000
    counts = mailbox.by_message_id()
    assert len(counts) == 5000 and set(counts.values()) == {1}, \
        [m for m, n in counts.items() if n > 1][:5]
    assert sorted(address_of(m) for m in mailbox.messages) == sorted(
        f"c{n:04}@example.com" for n in range(5000))
    [leader] = [d for d in replicas if leading(d)]  # exactly one replica says it leads
    leader.kill()  # SIGKILL: no release; the lease runs out after its TTL
    others = [d for d in replicas if d is not leader]
    wait_for(lambda: any(leading(d) for d in others), timeout=60,
             what="another replica to take the lead")
    [successor] = [d for d in others if leading(d)]
    assert any(line.startswith("leading the schedule at epoch ") and not line.endswith(" 1")
               for line in leading(successor))
    # the new term sweeps everything at once: it must find nothing new to send
    wait_for(lambda: any("evaluation" in r.get("message", "") or r.get("message", "")
                         .startswith("RFM scores refreshed") for r in successor.records()),
             timeout=60, what="the successor's first beats")
    for daemon in others:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=120) == 0
    assert len(mailbox.received) == 5000
    assert len(project.rows(actions)) == 5000


def test_a_replica_killed_mid_dispatch_loses_nothing_and_resends_only_what_was_in_flight(
        project: Project, mailbox: Mailbox, running: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    project.playbook("wake-up", WAKE_UP)
    project.customers(*(customer(f"c{n:03}") for n in range(300)))
    smtp_env(monkeypatch, mailbox.port)  # planning freezes the From the Message-IDs derive from
    project.retain("run", "--no-dispatch", "playbooks")
    mailbox.delay = 0.05  # sends stay in flight a while: the kill lands among them
    mailbox.start()
    daemon = running(env=SHORT)
    wait_for(lambda: len(mailbox.received) >= 30, what="dispatch to be under way")
    daemon.kill()  # SIGKILL: nothing is put back, no outcome of a send in flight is recorded
    held = {r["customer_id"] for r in project.rows(actions) if r["status"] == st.CLAIMED}
    assert held, "the kill should land mid-dispatch"
    running(env=SHORT)  # restarted: the dead claims come back after their lease
    wait_for(lambda: all(r["status"] == st.SENT for r in project.rows(actions)), timeout=120,
             what="every action sent after the restart")
    people = {f"c{n:03}@example.com" for n in range(300)}
    assert {address_of(m) for m in mailbox.messages} == people  # nothing planned is lost
    twice = Counter(address_of(m) for m in mailbox.messages)
    duplicated = {a for a, n in twice.items() if n > 1}
    assert {a.split("@")[0] for a in duplicated} <= held  # only what the dead process held
    by_id = mailbox.by_message_id()  # a re-send is the same message: one Message-ID each
    assert len(by_id) == 300
    assert sum(by_id.values()) == len(mailbox.received)


def test_a_clean_stop_hands_the_lead_over_at_once(
        project: Project, mailbox: Mailbox, running: Any) -> None:
    """SIGTERM releases the leader lease (docs/DAEMON.md "Stopping"), so the next replica leads
    now, not after a TTL (here ten minutes) that a dead leader would have left behind."""
    project.playbook("wake-up", WAKE_UP)
    mailbox.start()
    daemon = running(env={"RETAIN_DAEMON_LEASE_TTL": "600"})
    wait_for(lambda: leading(daemon), what="the daemon to lead")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    [row] = project.rows(leaders)
    assert row["lease_until"] <= utcnow(), f"the lease was kept after the stop: {row}"


def test_the_grace_period_bounds_a_stop_while_the_mail_server_hangs(
        project: Project, mailbox: Mailbox, running: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """More rows are due than two claims hold, so the pass is waiting for its senders to
    drain when the stop comes; the server holds every DATA for minutes. The grace period
    (2 s) must end the stop, not the sends (docs/DAEMON.md "Stopping"); what was in flight
    comes back after its claim lease."""
    project.playbook("wake-up", WAKE_UP)
    project.customers(*(customer(f"c{n:03}") for n in range(600)))
    smtp_env(monkeypatch, mailbox.port)
    project.retain("run", "--no-dispatch", "playbooks")
    mailbox.delay = 600  # every DATA hangs
    mailbox.start()
    daemon = running(args=("--grace", "2"), env={"RETAIN_SMTP_TIMEOUT": "900"})
    wait_for(lambda: sum(r["status"] == st.CLAIMED for r in project.rows(actions)) >= 512,
             what="two batches claimed ahead of the hung senders")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=120) == 0  # with the bug: the hung sends, ten minutes
    assert any("did not finish within" in r.get("message", "") for r in daemon.records())
    rows = project.rows(actions)
    assert sum(r["status"] == st.PLANNED for r in rows) >= 500  # the queued ones put back
    assert not mailbox.received


def test_a_sweep_longer_than_the_leader_lease_still_commits(
        project: Project, mailbox: Mailbox, running: Any) -> None:
    """One replica, a 1 s leader lease and a first sweep over 3000 customers that takes longer
    than that: the leader must keep its lease while the cycle runs. Without renewals during the
    cycle, its fence found the lease run out at every commit, the plan rolled back, and the next
    term swept everything again (no replica ever committed)."""
    project.playbook("wake-up", WAKE_UP)
    project.customers(*(customer(f"c{n:04}") for n in range(3000)))
    mailbox.start()
    daemon = running(env={"RETAIN_DAEMON_LEASE_TTL": "1", "RETAIN_SMTP_TIMEOUT": "60"})
    wait_for(lambda: project.rows(actions), timeout=300, every=1, what="the sweep's plan")
    wait_for(lambda: len(mailbox.received) >= 3000, timeout=600, every=1,
             what="3000 emails")
    assert not [r for r in daemon.records() if "rolled back" in r.get("message", "")]
    assert len(leading(daemon)) == 1  # one term throughout
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=120) == 0
    assert set(mailbox.by_message_id().values()) == {1}


GREET = """trigger:
  first_purchase: { lookback: 2d }
actions:
  - email: { subject: "Welcome {{ customer.name }}", template: greet }
"""


def test_a_broken_template_keeps_the_playbooks_old_version_running(
        project: Project, mailbox: Mailbox, running: Any) -> None:
    """The problem of a broken template is located in the template file, not the playbook's:
    the playbook using it must keep its running version all the same (docs/DAEMON.md
    "reload"), not silently stop."""
    mailbox.start()
    project.playbook("welcome", GREET)
    template = project.template("greet.txt.j2",
                                "Hello {{ customer.name }} {{ unsubscribe_url }}\n")
    project.customers(customer("ann"), customer("bob"))
    daemon = running()
    template.write_text("Hello {{ custmer.name }}\n")  # another size: the watcher sees it
    wait_for(lambda: any("greet.txt.j2" in r.get("message", "") for r in daemon.records()),
             what="the template error in the log")
    reloaded = wait_for(lambda: [r["message"] for r in daemon.records()
                                 if r.get("message", "").startswith("playbooks reloaded")],
                        what="the reload")
    assert "welcome@" in reloaded[-1]
    reply = daemon.post("/v1/events", {"event_id": "o-3", "customer_id": "bob",
                                       "type": "purchase", "occurred_at": now_iso()})
    assert reply.status_code < 300, reply.text
    [message] = wait_for(lambda: mailbox.to("bob@example.com"), what="the old version's email")
    assert "Hello Bob" in message.get_content()


def test_the_daemon_outlives_its_database_connections_being_cut(
        project: Project, mailbox: Mailbox, running: Any) -> None:
    """Every PostgreSQL backend of the daemon terminated at once (what a database restart or
    a failover does to its pool), twice: it keeps leading, reacting and sending, and stops
    cleanly. Its connections carry an application_name, so only they are cut."""
    postgresql_only(project)
    name = f"retain_rel_{uuid.uuid4().hex[:8]}"
    mailbox.start()
    project.playbook("welcome", WELCOME)
    project.customers(customer("ann"), customer("bob"))
    own = dataclasses.replace(project, url=f"{project.url}&application_name={name}")
    daemon = Daemon(own, mailbox.port, env={"RETAIN_DAEMON_LEASE_TTL": "3"}).start()
    try:
        wait_for(lambda: leading(daemon), what="the daemon to lead")
        for n, who in enumerate(("ann", "bob")):
            with project.db().begin() as connection:
                cut = connection.execute(sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name"), {"name": name}).scalar_one()
            assert cut >= 1
            reply = daemon.post("/v1/events", {"event_id": f"o-{n}", "customer_id": who,
                                               "type": "purchase", "occurred_at": now_iso()})
            assert reply.status_code < 300, reply.text
            wait_for(lambda who=who: mailbox.to(f"{who}@example.com"),
                     what=f"the email to {who} after the cut")
        assert wait_for(daemon.ready, what="/readyz after the cuts")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.kill()
    assert set(mailbox.by_message_id().values()) == {1}
    [row] = project.rows(leaders)
    assert row["lease_until"] <= utcnow()  # released at the stop, after the cuts


def test_a_second_signal_exits_at_once_and_the_held_rows_come_back(
        project: Project, mailbox: Mailbox, running: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM starts the grace period (here ten minutes, the mail server hanging); a second
    SIGTERM exits now with status 1, and a restarted daemon sends what the first one held
    once its claim lease ran out."""
    project.playbook("wake-up", WAKE_UP)
    project.customers(*(customer(f"c{n:02}") for n in range(40)))
    smtp_env(monkeypatch, mailbox.port)
    project.retain("run", "--no-dispatch", "playbooks")
    mailbox.delay = 600
    mailbox.start()
    daemon = running(args=("--grace", "600"), env={**SHORT, "RETAIN_SMTP_TIMEOUT": "900"})
    wait_for(lambda: any(r["status"] == st.CLAIMED for r in project.rows(actions)),
             what="sends in flight")
    daemon.signal(signal.SIGTERM)
    wait_for(lambda: any(r.get("message", "").startswith("stopping") for r in daemon.records()),
             what="the stop to begin")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=120) == 1
    mailbox.delay = 0
    running(env=SHORT)
    wait_for(lambda: all(r["status"] == st.SENT for r in project.rows(actions)), timeout=120,
             what="every action sent by the restarted daemon")
    assert sorted(address_of(m) for m in mailbox.messages) == [
        f"c{n:02}@example.com" for n in range(40)]
