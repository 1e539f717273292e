"""The dispatcher's outcomes on both databases: sent, retrying, dead, suppressed, put back.

Rows are written straight into the outbox (as a live run's commit would), sent through the real
task and points connectors and through test connectors that deliver to a real socket peer
(tests/dispatch_support.py), whose record of received keys is the external effect.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from dispatch_support import (
    AS_OF,
    Sink,
    SinkEmailConnector,
    SockConnector,
    action,
    add_action,
    add_customer,
    settings,
)

from connectors.base import Delivery, Sent
from connectors.points import PointsConnector
from connectors.tasks import TaskConnector
from engine.clock import utcnow
from engine.outbox.claim import claim_due
from engine.outbox.dispatch import dispatch
from engine.outbox.handoff import SWITCH_INTERVAL
from engine.outbox.record import Outcome, record
from engine.store.status import (
    CLAIMED,
    DEAD,
    PLANNED,
    RETRYING,
    SENT,
    SKIPPED,
    SUPPRESSED,
)
from engine.store.tables import attempts, customers, events, points, suppressions, tasks

CONNECTORS = {"sock": SockConnector, "task": TaskConnector, "points": PointsConnector,
              "email": SinkEmailConnector}


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.close()


def run(db: sa.Engine, as_of: Any = AS_OF, **kw: Any) -> Any:
    kw.setdefault("connectors", CONNECTORS)
    return dispatch(db, settings(), as_of, **kw)


def tries(db: sa.Engine, action_id: int) -> list[Any]:
    with db.connect() as connection:
        return connection.execute(sa.select(attempts).where(attempts.c.action_id == action_id)
                                  .order_by(attempts.c.attempt)).all()


def count(db: sa.Engine, table: sa.Table, *where: Any) -> int:
    with db.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(table)
                                      .where(*where)).scalar_one())


def test_a_due_row_is_sent_once_and_recorded(db: sa.Engine, sink: Sink) -> None:
    add_customer(db, "c1")
    sent = add_action(db, "k-sent", payload={"port": sink.port})
    later = add_action(db, "k-later", payload={"port": sink.port},
                       next_at=AS_OF + timedelta(minutes=1))
    report = run(db, worker="w1")
    assert report.by_playbook() == {"winback": {SENT: 1}}
    row = action(db, sent)
    assert (row.status, row.attempts, row.sent_at, row.leased_by, row.lease_until) == \
        (SENT, 1, AS_OF, None, None)
    [attempt] = tries(db, sent)
    assert (attempt.attempt, attempt.worker, attempt.outcome, attempt.error) == \
        (1, "w1", SENT, None)
    assert attempt.started_at <= attempt.finished_at
    assert action(db, later).status == PLANNED  # not due at as-of
    assert run(db).counts == {}  # a second pass finds nothing
    assert sink.counts() == {"k-sent": 1}


def test_the_dispatcher_only_reads_the_payloads(db: sa.Engine, sink: Sink) -> None:
    """Claims, outcomes, retries and put-backs update `actions` alone: the frozen payload in
    `action_payloads` is read (by the claim; on PostgreSQL in the claiming statement itself,
    `WITH ... UPDATE actions ... SELECT ... JOIN action_payloads`) and never written, so a
    status update does not copy a rendered email (SQLite rewrites a whole record on UPDATE)."""
    add_customer(db, "c1")
    sink.replies["k-temp"] = "TEMP"
    ids = [add_action(db, key, payload={"port": sink.port, "body": "x" * 6000})
           for key in ("k-ok", "k-temp")]
    seen: list[str] = []

    def statement(conn: Any, cursor: Any, sql: str, *rest: Any) -> None:
        if "action_payloads" in sql:
            writes = re.findall(r"\b(?:UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+(\w+)", sql, re.I)
            seen.append("writes it" if "action_payloads" in writes else "reads it")

    sa.event.listen(db, "before_cursor_execute", statement)
    try:
        assert run(db).by_playbook() == {"winback": {SENT: 1, RETRYING: 1}}
    finally:
        sa.event.remove(db, "before_cursor_execute", statement)
    assert seen and set(seen) == {"reads it"}
    assert [action(db, i).payload["body"] for i in ids] == ["x" * 6000] * 2
    assert sink.counts() == {"k-ok": 1, "k-temp": 1}


def test_transient_failure_retries_with_backoff_then_dead(db: sa.Engine, sink: Sink) -> None:
    add_customer(db, "c1")
    sink.replies["k1"] = "TEMP"
    row_id = add_action(db, "k1", payload={"port": sink.port})
    assert run(db).by_playbook() == {"winback": {RETRYING: 1}}
    row = action(db, row_id)
    assert (row.status, row.attempts, row.last_error) == (RETRYING, 1, "451 try later")
    first = SockConnector.retry[1]
    assert AS_OF + timedelta(seconds=first * 0.9) <= row.next_attempt_at <= \
        AS_OF + timedelta(seconds=first * 1.1)
    assert run(db, row.next_attempt_at - timedelta(seconds=1)).counts == {}  # not yet due
    at = row.next_attempt_at
    assert run(db, at).by_playbook() == {"winback": {RETRYING: 1}}
    second = action(db, row_id)
    assert second.next_attempt_at - at >= timedelta(seconds=first * 2 * 0.9)  # it grows
    assert run(db, second.next_attempt_at).by_playbook() == {"winback": {DEAD: 1}}
    dead = action(db, row_id)
    assert (dead.status, dead.attempts) == (DEAD, 3)
    assert "gave up after 3 attempts" in dead.reason and "451" in dead.reason
    assert [t.outcome for t in tries(db, row_id)] == [RETRYING, RETRYING, DEAD]
    assert sink.counts() == {"k1": 3}


def test_permanent_error_dead_letters_and_suppresses_the_bounced_address(
        db: sa.Engine, sink: Sink) -> None:
    add_customer(db, "c1", "ann@example.com")
    add_customer(db, "c2", "bob@example.com")
    sink.replies["k-bounce"] = "PERM"
    bounced = add_action(db, "k-bounce", connector="email", customer="c1",
                         payload={"port": sink.port, "to": "Ann <Ann@Example.com>"})
    fine = add_action(db, "k-fine", connector="email", customer="c2",
                      payload={"port": sink.port, "to": "Bob <bob@example.com>"})
    report = run(db)
    assert (report.total(DEAD), report.total(SENT)) == (1, 1)  # the other one still goes
    row = action(db, bounced)
    assert row.status == DEAD and "550 5.1.1 no such user" in row.last_error
    with db.connect() as connection:
        assert connection.execute(sa.select(suppressions.c.email, suppressions.c.reason)
                                  ).all() == [("ann@example.com", "bounced")]
    assert action(db, fine).status == SENT


def test_a_connection_failure_takes_the_connector_down_for_the_pass(
        db: sa.Engine, sink: Sink) -> None:
    class OneAtATime(SockConnector):
        concurrency = 1

    add_customer(db, "c1")
    sink.replies["k0"] = "DOWN"
    ids = [add_action(db, f"k{n}", payload={"port": sink.port}) for n in range(5)]
    task = add_action(db, "k-task", connector="task", payload={"title": "Call Ann"})
    report = run(db, connectors={**CONNECTORS, "sock": OneAtATime}, batch=3)
    assert report.by_playbook() == {"winback": {RETRYING: 1, SENT: 1}}
    assert report.released == 4  # k1, k2; and k3, k4 of the batch claimed while k0 was sent
    first = action(db, ids[0])
    assert (first.status, first.attempts, first.last_error) == \
        (RETRYING, 1, "421 service not available")
    for other in ids[1:]:  # put back as they were: no attempt used, no lease
        row = action(db, other)
        assert (row.status, row.attempts, row.leased_by, row.lease_until, row.next_attempt_at) \
            == (PLANNED, 0, None, None, AS_OF)
        assert tries(db, other) == []
    assert action(db, task).status == SENT  # other connectors go on
    assert sink.counts() == {"k0": 1}
    sink.replies.clear()  # the peer is back: a later pass sends the rest, once each
    assert run(db, AS_OF + timedelta(hours=1)).total(SENT) == 5
    assert sink.counts() == {f"k{n}": 1 + (n == 0) for n in range(5)}


def test_a_connector_that_cannot_open_costs_one_row_one_attempt(db: sa.Engine) -> None:
    class Unreachable(SockConnector):
        async def open(self, settings: Any) -> None:
            raise OSError("connection refused")

    add_customer(db, "c1")
    ids = [add_action(db, f"k{n}", payload={"port": 1}) for n in range(4)]
    report = run(db, connectors={"sock": Unreachable})
    assert (report.by_playbook(), report.released) == ({"winback": {RETRYING: 1}}, 3)
    statuses = [(action(db, i).status, action(db, i).attempts) for i in ids]
    assert statuses == [(RETRYING, 1)] + [(PLANNED, 0)] * 3
    assert "cannot open the sock connector" in action(db, ids[0]).last_error


def test_any_other_exception_is_transient_and_never_stops_the_loop(
        db: sa.Engine, sink: Sink) -> None:
    class Buggy(SockConnector):
        async def send(self, delivery: Delivery) -> Sent:
            if delivery.key == "k-bug":
                raise KeyError("subject")
            return await super().send(delivery)

    add_customer(db, "c1")
    bug = add_action(db, "k-bug", payload={"port": sink.port})
    ok = add_action(db, "k-ok", payload={"port": sink.port})
    report = run(db, connectors={"sock": Buggy})
    assert (report.total(RETRYING), report.total(SENT)) == (1, 1)
    assert action(db, bug).last_error == "KeyError('subject')"
    assert action(db, ok).status == SENT


def test_tasks_and_points_are_written_once_with_the_outcome(db: sa.Engine) -> None:
    add_customer(db, "c1")
    task = add_action(db, "k-task", connector="task", payload={
        "title": "Call Ann", "assignee": "team", "due_at": "2026-03-04T12:00:00Z", "note": None})
    award = add_action(db, "k-points", connector="points",
                       payload={"amount": 200, "reason": "winback bonus"})
    assert run(db).total(SENT) == 2
    with db.connect() as connection:
        task_row = connection.execute(sa.select(tasks)).one()
        assert (task_row.idempotency_key, task_row.title, task_row.assignee, task_row.due_at,
                task_row.playbook_id, task_row.created_at) == \
            ("k-task", "Call Ann", "team", AS_OF + timedelta(days=2), "winback", AS_OF)
        ledger = connection.execute(sa.select(points)).one()
        assert (ledger.idempotency_key, ledger.amount, ledger.created_at) == \
            ("k-points", 200, AS_OF)
        event = connection.execute(sa.select(events)).one()
        assert (event.event_id, event.type, event.occurred_at, event.amount,
                event.properties) == ("k-points", "points_awarded", AS_OF, 200,
                                      {"reason": "winback bonus", "playbook": "winback"})
    # Sent again (re-driven as `outbox retry` would): nothing is written twice.
    with db.begin() as connection:
        connection.execute(sa.text("UPDATE actions SET status = 'planned'"))
    assert run(db, AS_OF + timedelta(days=1)).total(SENT) == 2
    assert (count(db, tasks), count(db, points), count(db, events)) == (1, 1, 1)
    with db.connect() as connection:
        assert connection.execute(sa.select(customers.c.points_balance)).scalar_one() == 200
    assert action(db, task).sent_at == AS_OF + timedelta(days=1)
    assert action(db, award).attempts == 2


def test_email_sent_recorded_once_and_last_emailed_at_kept(db: sa.Engine, sink: Sink) -> None:
    """RELIABILITY 7: a lost ack re-sends (the peer has it twice); one email_sent."""
    add_customer(db, "c1", "ann@example.com")
    sink.replies["k-mail"] = "DROP"
    row_id = add_action(db, "k-mail", connector="email", customer="c1",
                        payload={"port": sink.port, "to": "Ann <ann@example.com>",
                                 "subject": "We miss you", "message_id": "<k-mail@example.com>"})
    assert run(db).total(RETRYING) == 1
    assert action(db, row_id).last_error == "connection dropped before the reply (lost ack)"
    sink.replies.clear()
    at = action(db, row_id).next_attempt_at
    assert run(db, at).total(SENT) == 1
    # As if the same key were delivered and recorded again: still one email_sent.
    with db.begin() as connection:
        connection.execute(sa.text("UPDATE actions SET status = 'planned'"))
    assert run(db, at + timedelta(hours=1)).total(SENT) == 1
    assert sink.counts() == {"k-mail": 3}
    with db.connect() as connection:
        sent = connection.execute(sa.select(events)).one()
        assert (sent.type, sent.event_id, sent.occurred_at, sent.customer_id) == \
            ("email_sent", "k-mail", at, "c1")
        assert sent.properties["subject"] == "We miss you"
        assert connection.execute(sa.select(customers.c.last_emailed_at)).scalar_one() == \
            at + timedelta(hours=1)


def test_last_emailed_at_never_moves_back(db: sa.Engine, sink: Sink) -> None:
    add_customer(db, "c1", "ann@example.com")
    with db.begin() as connection:
        connection.execute(sa.update(customers).values(last_emailed_at=AS_OF + timedelta(days=3)))
    add_action(db, "k", connector="email", payload={"port": sink.port, "to": "ann@example.com"})
    assert run(db).total(SENT) == 1
    with db.connect() as connection:
        assert connection.execute(sa.select(customers.c.last_emailed_at)).scalar_one() == \
            AS_OF + timedelta(days=3)


def test_unsubscribed_between_plan_and_dispatch_is_suppressed(db: sa.Engine, sink: Sink) -> None:
    """RELIABILITY 16 and 17: the address is checked again at send time, any letter case."""
    add_customer(db, "c1", "ann@example.com")
    add_customer(db, "c2", None)
    row_id = add_action(db, "k1", connector="email", customer="c1",
                        payload={"port": sink.port, "to": "Ann <ANN@Example.com>"})
    nobody = add_action(db, "k2", connector="email", customer="c2", payload={"port": sink.port})
    with db.begin() as connection:
        connection.execute(sa.insert(suppressions).values(
            email="ann@example.com", reason="unsubscribed", created_at=AS_OF))
    report = run(db)
    assert report.by_playbook() == {"winback": {SUPPRESSED: 1, SKIPPED: 1}}
    row = action(db, row_id)
    assert (row.status, row.reason) == (SUPPRESSED, "address is suppressed (unsubscribed)")
    assert action(db, nobody).reason == "the customer has no email address"
    assert [t.outcome for t in tries(db, row_id)] == [SUPPRESSED]
    assert sink.counts() == {}


def test_a_dead_workers_claim_comes_back_after_its_lease(db: sa.Engine, sink: Sink) -> None:
    add_customer(db, "c1")
    stale = add_action(db, "k-stale", payload={"port": sink.port}, status=CLAIMED, attempts=1,
                       leased_by="dead-worker", lease_until=utcnow() - timedelta(seconds=1))
    alive = add_action(db, "k-alive", payload={"port": sink.port}, status=CLAIMED, attempts=1,
                       leased_by="busy-worker", lease_until=utcnow() + timedelta(seconds=60))
    assert run(db).total(SENT) == 1
    row = action(db, stale)
    assert (row.status, row.attempts) == (SENT, 2)
    assert (action(db, alive).status, action(db, alive).leased_by) == (CLAIMED, "busy-worker")
    assert sink.counts() == {"k-stale": 1}


def test_a_row_that_crashes_its_worker_every_time_ends_dead(db: sa.Engine, sink: Sink) -> None:
    """Attempts are counted at claim: the last allowed claim never finished, so no more."""
    add_customer(db, "c1")
    row_id = add_action(db, "k", payload={"port": sink.port}, status=CLAIMED, attempts=3,
                        leased_by="gone", lease_until=utcnow() - timedelta(seconds=1))
    assert run(db).total(DEAD) == 1
    row = action(db, row_id)
    assert (row.status, row.attempts) == (DEAD, 4)
    assert "crashed its worker 3 time(s)" in row.reason
    assert sink.counts() == {}


def test_a_worker_that_lost_its_lease_records_nothing(db: sa.Engine, sink: Sink) -> None:
    add_customer(db, "c1")
    row_id = add_action(db, "k-points", connector="points", payload={"amount": 5})
    [mine] = claim_due(db, "slow", AS_OF, 10)
    with db.begin() as connection:  # the lease runs out while "slow" is still sending
        connection.execute(sa.text("UPDATE actions SET lease_until = :t"),
                           {"t": utcnow() - timedelta(seconds=1)})
    assert run(db, worker="fast").total(SENT) == 1
    from connectors.base import Write
    late = Outcome(mine, SENT, writes=(Write("points", {"amount": 5}),), started_at=utcnow(),
                   finished_at=utcnow())
    assert record(db, "slow", [late], AS_OF) == []
    assert [(t.worker, t.attempt) for t in tries(db, row_id)] == [("fast", 2)]
    assert count(db, points) == 1


def test_an_unknown_connector_is_dead_naming_the_installed_ones(db: sa.Engine) -> None:
    add_customer(db, "c1")
    row_id = add_action(db, "k", connector="sms")
    assert run(db).total(DEAD) == 1
    assert "no connector 'sms' is installed (installed: email, points, sock, task)" in \
        action(db, row_id).reason


def test_heartbeat_extends_the_leases_while_the_batch_sends(db: sa.Engine,
                                                              monkeypatch: Any) -> None:
    """The long send's lease, and that of a row sent early whose outcome waits for the batch's
    record: neither may run out and be taken over."""
    import engine.outbox.dispatch as module
    monkeypatch.setattr(module, "HEARTBEAT", timedelta(seconds=0.2))
    leases: dict[str, list[Any]] = {"slow": [], "fast": []}

    class Slow(SockConnector):
        async def send(self, delivery: Delivery) -> Sent:
            import asyncio
            if delivery.key == "k-fast":
                return Sent()
            for _ in range(3):
                leases["slow"].append(action(db, slow).lease_until)
                leases["fast"].append(action(db, fast).lease_until)
                await asyncio.sleep(0.35)
            return Sent()

    add_customer(db, "c1")
    slow, fast = add_action(db, "k-slow"), add_action(db, "k-fast")
    assert run(db, connectors={"sock": Slow}).total(SENT) == 2
    for name in ("slow", "fast"):
        assert leases[name][0] < leases[name][1] < leases[name][2]


def test_a_slow_send_does_not_hold_back_the_other_senders(db: sa.Engine, sink: Sink) -> None:
    """No batch barrier: while one send takes long (a webhook near its timeout), the other
    senders go on with the rows claimed after it."""
    done: list[str] = []

    class Logged(SockConnector):
        concurrency = 2

        async def send(self, delivery: Delivery) -> Sent:
            sent = await super().send(delivery)
            done.append(delivery.key)
            return sent

    add_customer(db, "c1")
    sink.replies["k0"] = "PAUSE"  # 1.5 s
    for n in range(6):
        add_action(db, f"k{n}", payload={"port": sink.port})
    assert run(db, connectors={"sock": Logged}, batch=2).total(SENT) == 6
    assert done[-1] == "k0" and sorted(done[:-1]) == [f"k{n}" for n in range(1, 6)]


def test_stop_finishes_in_flight_sends_and_puts_the_rest_back(db: sa.Engine, sink: Sink) -> None:
    stop = threading.Event()

    class Stopper(SockConnector):
        concurrency = 1

        async def send(self, delivery: Delivery) -> Sent:
            stop.set()  # SIGTERM arrives during the first send
            return await super().send(delivery)

    add_customer(db, "c1")
    ids = [add_action(db, f"k{n}", payload={"port": sink.port}) for n in range(4)]
    report = run(db, connectors={"sock": Stopper}, stop=stop)
    assert report.stopped and report.by_playbook() == {"winback": {SENT: 1}}
    assert report.released == 3
    assert [action(db, i).status for i in ids] == [SENT, PLANNED, PLANNED, PLANNED]
    assert [action(db, i).attempts for i in ids] == [1, 0, 0, 0]
    assert count(db, attempts) == 1


def test_stop_puts_back_the_batch_claimed_ahead(db: sa.Engine, sink: Sink) -> None:
    """The next rows are claimed while earlier ones send; a stop puts them back as they were."""
    stop = threading.Event()

    class Stopper(SockConnector):
        concurrency = 1

        async def send(self, delivery: Delivery) -> Sent:
            if delivery.key == "k1":  # k2, k3 were claimed while k0 was being sent
                stop.set()
            return await super().send(delivery)

    add_customer(db, "c1")
    ids = [add_action(db, f"k{n}", payload={"port": sink.port}) for n in range(4)]
    report = run(db, connectors={"sock": Stopper}, stop=stop, batch=2)
    assert report.stopped and report.by_playbook() == {"winback": {SENT: 2}}
    assert report.released == 2
    rows = [action(db, i) for i in ids]
    assert [(r.status, r.attempts, r.leased_by, r.lease_until) for r in rows] == \
        [(SENT, 1, None, None)] * 2 + [(PLANNED, 0, None, None)] * 2
    assert count(db, attempts) == 2
    assert sink.counts() == {"k0": 1, "k1": 1}


def test_a_pass_lowers_the_switch_interval_and_puts_it_back(db: sa.Engine, sink: Sink) -> None:
    """The database threads hand the sends' loop the GIL back within 0.5 ms during a pass."""
    before, seen = sys.getswitchinterval(), []

    class Watched(SockConnector):
        async def send(self, delivery: Delivery) -> Sent:
            seen.append(sys.getswitchinterval())
            return await super().send(delivery)

    add_customer(db, "c1")
    add_action(db, "k1", payload={"port": sink.port})
    assert run(db, connectors={"sock": Watched}).total(SENT) == 1
    assert seen == [min(before, SWITCH_INTERVAL)]
    assert sys.getswitchinterval() == before


def test_limit_caps_the_rows_taken(db: sa.Engine, sink: Sink) -> None:
    add_customer(db, "c1")
    for n in range(5):
        add_action(db, f"k{n}", payload={"port": sink.port})
    assert run(db, limit=2, batch=1).total(SENT) == 2
    assert run(db).total(SENT) == 3


def test_retry_after_from_the_peer_sets_the_next_attempt(db: sa.Engine) -> None:
    """A 429's Retry-After (the webhook connector passes it on) wins over the backoff."""
    from engine.errors import TransientError

    class Busy(SockConnector):
        async def send(self, delivery: Delivery) -> Sent:
            raise TransientError("HTTP 429", retry_after=timedelta(minutes=7))

    add_customer(db, "c1")
    row_id = add_action(db, "k")
    assert run(db, connectors={"sock": Busy}).total(RETRYING) == 1
    assert action(db, row_id).next_attempt_at == AS_OF + timedelta(minutes=7)


def test_a_write_that_fails_dead_letters_that_action_only(db: sa.Engine) -> None:
    """A connector's bad row (here a task without a title) is rolled back to its savepoint; the
    other outcomes of the batch commit."""
    add_customer(db, "c1")
    bad = add_action(db, "k-bad", connector="task", payload={"assignee": "team"})
    good = add_action(db, "k-good", connector="points", payload={"amount": 3})
    report = run(db)
    assert (report.total(DEAD), report.total(SENT)) == (1, 1)
    row = action(db, bad)
    assert row.status == DEAD and "writing its result failed" in row.last_error
    assert action(db, good).status == SENT
    assert (count(db, tasks), count(db, points)) == (0, 1)


def test_a_write_refused_with_a_permanent_error_dead_letters_that_action_only(
        db: sa.Engine, sink: Sink) -> None:
    """The tag write refuses a customer it cannot find (PermanentError, not a database error):
    that action is dead; the email sent in the same batch is recorded, not re-sent later."""
    from connectors.tags import TagConnector

    add_customer(db, "c1")
    lost = add_action(db, "k-tag", connector="tag", customer="gone",
                      payload={"add": ["vip"], "remove": []})
    mail = add_action(db, "k-sock", payload={"port": sink.port})
    report = run(db, connectors={**CONNECTORS, "tag": TagConnector})
    assert (report.total(DEAD), report.total(SENT)) == (1, 1)
    row = action(db, lost)
    assert row.status == DEAD and "customer gone not found" in row.last_error
    assert action(db, mail).status == SENT
    assert run(db, AS_OF + timedelta(hours=1)).total(SENT) == 0
    assert sink.counts() == {"k-sock": 1}


def test_a_failed_heartbeat_is_tried_again_at_the_next_beat(db: sa.Engine,
                                                            monkeypatch: Any) -> None:
    """One heartbeat that fails (the database busy for a moment) must not end the heartbeats:
    the leases of a long send are still extended afterwards, or another worker takes it over."""
    import engine.outbox.dispatch as module
    monkeypatch.setattr(module, "HEARTBEAT", timedelta(seconds=0.2))
    real, calls = module.extend_leases, []

    def flaky(*args: Any, **kwargs: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise sa.exc.OperationalError("UPDATE actions", {}, Exception("database is locked"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "extend_leases", flaky)
    leases: list[Any] = []

    class Slow(SockConnector):
        async def send(self, delivery: Delivery) -> Sent:
            import asyncio
            for _ in range(4):
                leases.append(action(db, slow).lease_until)
                await asyncio.sleep(0.3)
            return Sent()

    add_customer(db, "c1")
    slow = add_action(db, "k-slow")
    assert run(db, connectors={"sock": Slow}).total(SENT) == 1
    assert len(calls) >= 3
    assert leases[-1] > leases[0]  # extended after the failed beat


def test_after_a_failed_record_in_flight_sends_are_recorded_and_the_rest_put_back(
        db: sa.Engine) -> None:
    """A record that fails ends the pass with its error, but (module docstring) the send in
    flight is still recorded and the rows claimed ahead go back: the records after the failed
    one must not be skipped, or those rows stay `claimed` until their lease (and the sent one
    is sent again). Put-backs write no `action_attempts`: theirs succeed without it."""
    import asyncio

    def rename(old: str, new: str) -> None:
        with db.begin() as connection:
            connection.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))

    class Flaky(SockConnector):
        concurrency = 1

        async def send(self, delivery: Delivery) -> Sent:
            if delivery.key == "k0":  # the database loses a table: k0's record fails
                for _ in range(100):  # k1 is claimed and queued: next, in flight then
                    if action(db, ids[1]).status == CLAIMED:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.2)
                rename("action_attempts", "attempts_away")
            elif delivery.key == "k1":  # while k1 is sent; then it is back
                await asyncio.sleep(1.0)
                rename("attempts_away", "action_attempts")
            return Sent()

    add_customer(db, "c1")
    ids = [add_action(db, f"k{n}") for n in range(4)]
    with pytest.raises(sa.exc.SQLAlchemyError):
        run(db, connectors={"sock": Flaky}, batch=1)
    rows = [action(db, i) for i in ids]
    assert rows[0].status == CLAIMED  # its record failed: its lease brings it back
    assert rows[1].status == SENT  # sent while the record failed: recorded all the same
    assert [(r.status, r.attempts, r.leased_by) for r in rows[2:]] == \
        [(PLANNED, 0, None)] * 2  # claimed ahead (or not at all): put back


def test_a_cancelled_pass_sends_nothing_more_and_puts_the_rest_back(db: sa.Engine,
                                                                      sink: Sink) -> None:
    """The daemon cancels dispatch_async when its grace ran out: the send in flight is given
    up (its row comes back after its lease, engine/daemon/loop.py), the rows claimed ahead go
    back, and no other row is sent; the pass does not wait for the sends."""
    import asyncio

    from engine.outbox.dispatch import dispatch_async

    class Held(SockConnector):
        concurrency = 1
        started: asyncio.Event
        go: asyncio.Event

        async def send(self, delivery: Delivery) -> Sent:
            if delivery.key == "k0":
                Held.started.set()
                await Held.go.wait()
            return await super().send(delivery)

    add_customer(db, "c1")
    ids = [add_action(db, f"k{n}", payload={"port": sink.port}) for n in range(5)]

    async def main() -> None:
        Held.started, Held.go = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(dispatch_async(db, settings(), AS_OF,
                                                  connectors={"sock": Held}, batch=2))
        await Held.started.wait()
        await asyncio.sleep(0.5)  # k2, k3 claimed ahead while k0 is sent
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)  # k0's send never ends: not waited for

    asyncio.run(main())
    assert sink.counts() == {}
    assert [(action(db, i).status, action(db, i).attempts) for i in ids] == \
        [(CLAIMED, 1)] + [(PLANNED, 0)] * 4


def test_a_pass_cancelled_while_it_claims_puts_those_rows_back(db: sa.Engine) -> None:
    """The claim runs in a thread and commits even when the pass is cancelled meanwhile: its
    rows must go back, not stay `claimed` (no heartbeat) with an attempt counted until their
    lease runs out."""
    import asyncio

    from engine.outbox.dispatch import dispatch_async

    claiming, go = threading.Event(), threading.Event()

    def statement(conn: Any, cursor: Any, sql: str, *rest: Any) -> None:
        if "UPDATE actions" in sql and not claiming.is_set():  # the pass's first: its claim
            claiming.set()
            go.wait(10)

    add_customer(db, "c1")
    ids = [add_action(db, f"k{n}") for n in range(3)]

    async def main() -> None:
        task = asyncio.create_task(dispatch_async(db, settings(), AS_OF,
                                                  connectors={"sock": SockConnector}))
        await asyncio.to_thread(claiming.wait, 10)
        task.cancel()
        await asyncio.sleep(0.1)
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    sa.event.listen(db, "before_cursor_execute", statement)
    try:
        asyncio.run(main())
    finally:
        sa.event.remove(db, "before_cursor_execute", statement)
    assert claiming.is_set()
    assert [(action(db, i).status, action(db, i).attempts) for i in ids] == [(PLANNED, 0)] * 3


def test_a_judge_that_raises_puts_the_rows_it_claimed_back(db: sa.Engine, sink: Sink) -> None:
    """The rows are judged in the claim's thread after the claim committed: a judge that fails
    (here a connector's `blocked` with a bug) ends the pass with its error, and the rows that
    claim took go back, not stay `claimed` with an attempt counted until their lease."""

    class Buggy(SinkEmailConnector):
        def blocked(self, address: str, suppressions: Any) -> str | None:
            raise RuntimeError("blocked() has a bug")

    add_customer(db, "c1", "ann@example.com")
    ids = [add_action(db, f"k{n}", connector="email", customer="c1",
                      payload={"port": sink.port, "to": "ann@example.com"}) for n in range(2)]
    with pytest.raises(RuntimeError, match="blocked"):
        run(db, connectors={"email": Buggy})
    assert [(action(db, i).status, action(db, i).attempts) for i in ids] == [(PLANNED, 0)] * 2
    assert sink.counts() == {}


def test_rows_waiting_for_their_record_keep_their_lease(db: sa.Engine, monkeypatch: Any) -> None:
    """Outcomes are recorded one transaction at a time, while the sends go on: when records are
    slower than sends (tasks and points send at once, their writes are in the record), outcomes
    wait behind the records before them. Claimed and not recorded, their leases must be kept
    alive, or another worker takes them over and sends them again."""
    import inspect
    import time

    import engine.outbox.dispatch as module
    from engine.outbox.claim import extend_leases

    monkeypatch.setattr(module, "HEARTBEAT", timedelta(seconds=0.2))
    for function in (claim_due, extend_leases):
        monkeypatch.setitem(function.__kwdefaults__, "lease", timedelta(seconds=1))
    slowed: list[Any] = []

    def statement(conn: Any, cursor: Any, sql: str, *rest: Any) -> None:
        for frame in inspect.stack(0):
            if frame.function == "record" and frame.filename.endswith("record.py"):
                outcomes = frame.frame.f_locals["outcomes"]
                if not any(o is outcomes for o in slowed):  # each record's first statement
                    slowed.append(outcomes)
                    time.sleep(0.4)
                return

    add_customer(db, "c1")
    ids = [add_action(db, f"k{n}", connector="task", payload={"title": "Call"})
           for n in range(10)]
    expired, done = [], threading.Event()

    def watch() -> None:
        while not done.is_set():
            rows = [action(db, i) for i in ids]
            expired.extend(r.id for r in rows if r.status == CLAIMED and r.lease_until < utcnow())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    sa.event.listen(db, "before_cursor_execute", statement)
    watcher.start()
    try:
        assert run(db, batch=1).total(SENT) == 10
    finally:
        done.set()
        watcher.join()
        sa.event.remove(db, "before_cursor_execute", statement)
    assert len(slowed) >= 10 and expired == []


def test_a_sender_that_crashes_ends_the_pass_instead_of_hanging_it(db: sa.Engine) -> None:
    """A sender that raises past `send`'s handlers (here a third-party connector's Retry-After
    in seconds, not a timedelta, breaks the backoff) must end the pass with that error, its
    other rows put back: not leave the claim waiting forever for senders that are gone."""
    from engine.errors import TransientError

    class Seconds(SockConnector):
        concurrency = 1

        async def send(self, delivery: Delivery) -> Sent:
            raise TransientError("HTTP 429", retry_after=30)  # type: ignore[arg-type]

    add_customer(db, "c1")
    ids = [add_action(db, f"k{n}") for n in range(3)]
    raised: list[BaseException] = []

    def pass_() -> None:
        try:
            run(db, connectors={"sock": Seconds}, batch=1)
        except BaseException as exc:  # noqa: BLE001
            raised.append(exc)

    thread = threading.Thread(target=pass_, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the pass hangs"
    assert [type(e) for e in raised] == [TypeError]
    assert [(action(db, i).status, action(db, i).attempts) for i in ids[1:]] == \
        [(PLANNED, 0)] * 2


def test_kept_channels_stay_open_between_passes_and_a_down_one_is_reopened(
        db: sa.Engine, sink: Sink) -> None:
    """The daemon's passes share their connections: opened once, closed when it stops; one
    that went down is closed after its pass and opened afresh by the next."""
    import asyncio

    from engine.outbox.dispatch import dispatch_async, keep_open

    class Counted(SockConnector):
        pass

    Counted.opened = Counted.closed = 0
    add_customer(db, "c1")

    async def passes() -> list[int]:
        kept, sent = keep_open({"sock": Counted}), []
        for n, reply in enumerate(["OK", "OK", "DOWN", "OK"]):
            sink.replies[f"k{n}"] = reply
            add_action(db, f"k{n}", payload={"port": sink.port})
            report = await dispatch_async(db, None, AS_OF, kept=kept)
            sent.append(report.total(SENT))
            if n == 1:
                assert (Counted.opened, Counted.closed) == (1, 0)  # one open for two passes
        await kept.close()
        return sent

    assert asyncio.run(passes()) == [1, 1, 0, 1]
    assert (Counted.opened, Counted.closed) == (2, 2)  # reopened after going down


def test_a_pass_with_nothing_due_reads_once_and_writes_nothing(db: sa.Engine,
                                                               sink: Sink) -> None:
    """Nothing due (a row due later, a row another worker holds): one read answers, and no
    write transaction is opened (SQLite's write lock stays free for the run beside it)."""
    add_customer(db, "c1")
    add_action(db, "k-later", next_at=AS_OF + timedelta(minutes=1))
    add_action(db, "k-held", status=CLAIMED, attempts=1, leased_by="busy-worker",
               lease_until=utcnow() + timedelta(seconds=60))
    seen: list[str] = []

    def statement(conn: Any, cursor: Any, sql: str, *rest: Any) -> None:
        seen.append(sql)

    sa.event.listen(db, "before_cursor_execute", statement)
    try:
        report = run(db)
    finally:
        sa.event.remove(db, "before_cursor_execute", statement)
    assert report.counts == {} and report.released == 0
    assert len(seen) == 1 and seen[0].lstrip().upper().startswith("SELECT")
    add_action(db, "k-now", payload={"port": sink.port})  # due: the same read says so
    assert run(db).total(SENT) == 1
    assert sink.counts() == {"k-now": 1}


def test_a_claim_that_comes_back_short_ends_the_pass(db: sa.Engine, sink: Sink,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer rows than asked for means nothing else was due: no further claim in this pass
    (each claim is a write transaction); a whole claim is followed by another."""
    import engine.outbox.dispatch as dispatch_module

    claims: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        rows = claim_due(*args, **kwargs)
        claims.append(len(rows))
        return rows

    monkeypatch.setattr(dispatch_module, "claim_due", counted)
    add_customer(db, "c1")
    for n in range(3):
        add_action(db, f"k{n}", payload={"port": sink.port})
    assert run(db).total(SENT) == 3
    assert claims == [3]
    for n in range(3, 7):
        add_action(db, f"k{n}", payload={"port": sink.port})
    claims.clear()
    assert run(db, batch=2).total(SENT) == 4
    assert claims == [2, 2, 0]  # the last whole claim could not know it was the last


def test_the_first_claim_tries_only_the_kinds_found_due(db: sa.Engine, sink: Sink) -> None:
    """The check before a pass finds which kinds of row are due (a dead worker's, planned,
    deferred, retrying): its first claim runs one statement per kind found, not all four."""
    add_customer(db, "c1")
    for n in range(2):
        add_action(db, f"k{n}", payload={"port": sink.port})  # planned, due
    add_action(db, "k-later", payload={"port": sink.port}, status=RETRYING, attempts=1,
               next_at=AS_OF + timedelta(hours=1))  # retrying, not due yet
    claims: list[str] = []

    def statement(conn: Any, cursor: Any, sql: str, *rest: Any) -> None:
        if re.match(r"\s*(WITH pick|UPDATE actions SET status)", sql) and "RETURNING" in sql \
                and "idempotency_key" in sql:
            claims.append(sql)

    sa.event.listen(db, "before_cursor_execute", statement)
    try:
        assert run(db).total(SENT) == 2
    finally:
        sa.event.remove(db, "before_cursor_execute", statement)
    assert len(claims) == 1
    assert sink.counts() == {"k0": 1, "k1": 1}
