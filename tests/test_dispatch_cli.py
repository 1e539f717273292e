"""`retain dispatch`: its output, and surviving kill -9 and SIGTERM (RELIABILITY 2, 4).

The process tests run `retain dispatch` as a real subprocess whose connectors are the test ones
(tests/dispatch_support.py RUNNER): a socket peer records every delivery, so a re-send after a
crash is seen as the receiver would see it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import test_email_send
from conftest import Cli
from dispatch_support import (
    AS_OF,
    RUNNER,
    Sink,
    SinkEmailConnector,
    SockConnector,
    action,
    add_action,
    add_customer,
)
from test_email_send import FROM, Peer
from test_email_send import payload as email_payload

from connectors.email import message_id
from connectors.points import PointsConnector
from connectors.tasks import TaskConnector
from engine.clock import iso
from engine.format import registry
from engine.store.status import CLAIMED, PLANNED, RETRYING, SENT
from engine.store.tables import actions, attempts, customers, events, points, tasks

serve = test_email_send.serve  # the aiosmtpd fixture

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.close()


@pytest.fixture
def test_connectors(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The in-process CLI sees exactly the test connectors."""
    monkeypatch.setattr(registry, "_installed", dict)
    classes = (SockConnector, SinkEmailConnector, PointsConnector, TaskConnector)
    for cls in classes:
        registry.register_connector(cls)
    yield
    for cls in classes:
        registry.unregister_connector(cls.kind)


def retain(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A `retain --db URL ARGS` subprocess with the test connectors."""
    return subprocess.Popen([sys.executable, "-c", RUNNER.format(tests=str(TESTS)), "--db", url,
                             *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_dispatch_prints_counts_per_playbook(db_url: str, db: sa.Engine, sink: Sink, cli: Cli,
                                             test_connectors: None) -> None:
    add_customer(db, "c1")
    sink.replies["k-temp"] = "TEMP"
    add_action(db, "k1", payload={"port": sink.port})
    add_action(db, "k-temp", payload={"port": sink.port}, playbook="welcome-series")
    add_action(db, "k-task", connector="task", payload={"title": "Call"}, playbook="nps-followup")
    code, out, err = cli(["--db", db_url, "dispatch", "--as-of", iso(AS_OF), "--json"])
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["as_of"] == "2026-03-02T12:00:00Z" and report["stopped"] is False
    assert report["totals"] == {"retrying": 1, "sent": 2}
    assert report["playbooks"] == {"nps-followup": {"sent": 1}, "welcome-series": {"retrying": 1},
                                   "winback": {"sent": 1}}
    at = action(db, 2).next_attempt_at.replace(microsecond=0) + timedelta(seconds=1)
    sink.replies.clear()
    code, out, _ = cli(["--db", db_url, "dispatch", "--as-of", iso(at)])
    assert code == 0
    assert out.splitlines() == [
        f"Dispatch as of {iso(at)}",
        "playbook        sent",
        "welcome-series     1"]
    code, out, _ = cli(["--db", db_url, "dispatch", "--as-of", iso(at)])
    assert out.splitlines()[1] == "Nothing was due."
    assert max(len(line) for line in out.splitlines()) <= 80


def test_a_bad_as_of_is_a_usage_error(sqlite_url: str, cli: Cli) -> None:
    code, _, err = cli(["--db", sqlite_url, "dispatch", "--as-of", "yesterday"])
    assert code == 2 and "--as-of" in err


def test_kill_9_mid_send_then_restart_sends_again_with_the_same_key(
        db_url: str, db: sa.Engine, sink: Sink) -> None:
    """RELIABILITY 2: the peer got the message, the process died before the commit. After the
    lease, a new dispatcher re-sends the same key; points and tasks exist once; all `sent`."""
    add_customer(db, "c1")
    sink.replies["k-mail"] = ["HOLD", "OK"]  # the first delivery blocks after the peer has it
    mail = add_action(db, "k-mail", payload={"port": sink.port})
    award = add_action(db, "k-points", connector="points", payload={"amount": 50})
    task = add_action(db, "k-task", connector="task", payload={"title": "Call"})
    first = retain(db_url, "dispatch", "--as-of", iso(AS_OF))
    try:
        wait_for(lambda: sink.counts()["k-mail"] == 1)
        assert action(db, mail).status == CLAIMED
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert first.returncode == -signal.SIGKILL
    # Nothing of the batch was committed: the rows are held by the dead worker's lease.
    assert [action(db, i).status for i in (mail, award, task)] == [CLAIMED] * 3
    held = retain(db_url, "dispatch", "--as-of", iso(AS_OF), "--json")
    assert json.loads(held.communicate(timeout=30)[0])["totals"] == {}  # not before the lease
    with db.begin() as connection:  # the 60 s lease runs out (real clock)
        connection.execute(sa.update(actions).values(lease_until=AS_OF.replace(year=2000)))
    again = retain(db_url, "dispatch", "--as-of", iso(AS_OF), "--json")
    out, err = again.communicate(timeout=30)
    assert again.returncode == 0, err
    assert json.loads(out)["totals"] == {"sent": 3}
    assert sink.counts() == {"k-mail": 2}  # re-sent, with the same key (Message-ID)
    assert [(action(db, i).status, action(db, i).attempts) for i in (mail, award, task)] == \
        [(SENT, 2)] * 3
    with db.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(tasks)).scalar() == 1
        assert connection.execute(sa.select(sa.func.count()).select_from(points)).scalar() == 1
        assert connection.execute(sa.select(customers.c.points_balance)).scalar() == 50
        assert connection.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 1
        assert connection.execute(sa.select(attempts.c.attempt).where(
            attempts.c.action_id == mail)).scalars().all() == [2]


def _in_flight(db_url: str, db: sa.Engine, sink: Sink, rows: int) -> tuple[Any, list[int]]:
    add_customer(db, "c1")
    for n in range(rows):
        sink.replies[f"k{n}"] = "PAUSE"  # each send takes 1.5 s after the peer has it
    ids = [add_action(db, f"k{n}", payload={"port": sink.port}) for n in range(rows)]
    process = retain(db_url, "dispatch", "--as-of", iso(AS_OF), "--json")
    wait_for(lambda: len(sink.counts()) == SockConnector.concurrency)
    return process, ids


def test_sigterm_finishes_in_flight_sends_and_puts_back_the_rest(
        db_url: str, db: sa.Engine, sink: Sink) -> None:
    """RELIABILITY 4: in flight finish and are recorded, nothing new, leases released, exit 0."""
    process, ids = _in_flight(db_url, db, sink, 10)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert time.monotonic() - started < 5
    report = json.loads(out)
    assert report["stopped"] is True and report["totals"]["sent"] == SockConnector.concurrency
    statuses = [action(db, i) for i in ids]
    assert sum(r.status == SENT for r in statuses) == SockConnector.concurrency
    for row in statuses:
        if row.status != SENT:
            assert (row.status, row.attempts, row.leased_by, row.lease_until) == \
                (PLANNED, 0, None, None)
    assert len(sink.counts()) == SockConnector.concurrency  # nothing new was started


def test_a_second_sigterm_exits_at_once(db_url: str, db: sa.Engine, sink: Sink) -> None:
    process, ids = _in_flight(db_url, db, sink, 6)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=5)
    assert process.returncode == 128 + signal.SIGTERM
    # What it held comes back to any dispatcher after the lease; nothing was recorded.
    assert {action(db, i).status for i in ids} == {CLAIMED}
    assert RETRYING not in {action(db, i).status for i in ids}


def test_kill_9_after_the_smtp_server_has_the_message(
        db_url: str, db: sa.Engine, sink: Sink, serve: Callable[..., tuple[Peer, int]]) -> None:
    """RELIABILITY 2 with real SMTP: aiosmtpd accepted the email, then the process was killed
    before its batch committed (another row of the batch hangs after its peer has it). After the
    lease, the email is sent again with the same Message-ID and recorded once."""
    peer, port = serve()
    add_customer(db, "ann", "ann@example.com")
    sink.replies["k-hang"] = ["HOLD", "OK"]
    frozen = email_payload("winback:ann:o1:0:0")
    mail = add_action(db, "winback:ann:o1:0:0", connector="email", customer="ann",
                      payload=frozen)
    add_action(db, "k-hang", customer="ann", payload={"port": sink.port})
    smtp = {"DISPATCH_TEST_REAL_EMAIL": "1", "RETAIN_SMTP_HOST": "127.0.0.1",
            "RETAIN_SMTP_PORT": str(port), "RETAIN_SMTP_TLS": "none",
            "RETAIN_EMAIL_FROM": FROM, "RETAIN_SMTP_TIMEOUT": "5"}
    first = retain(db_url, "dispatch", "--as-of", iso(AS_OF), env=smtp)
    try:
        wait_for(lambda: len(peer.received) == 1 and sink.counts()["k-hang"] == 1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert action(db, mail).status == CLAIMED  # the send happened, its record never came
    with db.begin() as connection:  # the lease runs out
        connection.execute(sa.update(actions).values(lease_until=AS_OF.replace(year=2000)))
    again = retain(db_url, "dispatch", "--as-of", iso(AS_OF), "--json", env=smtp)
    out, err = again.communicate(timeout=30)
    assert again.returncode == 0, err
    assert json.loads(out)["totals"] == {"sent": 2}
    first_copy, second_copy = peer.received
    assert first_copy.data == second_copy.data  # byte for byte: the frozen payload
    assert first_copy.message["Message-ID"] == message_id("winback:ann:o1:0:0", FROM)
    assert (action(db, mail).status, action(db, mail).attempts) == (SENT, 2)
    with db.connect() as connection:
        assert connection.execute(sa.select(events.c.event_id).where(
            events.c.type == "email_sent")).scalars().all() == ["winback:ann:o1:0:0"]


def test_rows_deferred_at_send_time_are_counted(db_url: str, db: sa.Engine, sink: Sink, cli: Cli,
                                                test_connectors: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A row due inside its channel's quiet hours is deferred by the dispatcher: the text says
    so, instead of a table of zero sends."""
    monkeypatch.setenv("RETAIN_QUIET_HOURS_SOCK", "11:00-13:00")
    add_customer(db, "c1")
    add_action(db, "k1", payload={"port": sink.port})
    code, out, _ = cli(["--db", db_url, "dispatch", "--as-of", iso(AS_OF)])
    assert code == 0 and sink.counts() == {}
    assert out.splitlines()[1:] == ["playbook  deferred", "winback          1"]
