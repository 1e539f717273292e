"""A live cycle that delivers (`retain run`): real SMTP to aiosmtpd, tasks and points in the
database, through `run_cycle` and the dispatcher, on both databases.

RELIABILITY 7 end to end: a lost ack (the server stored the message, then dropped the
connection) is sent again with the same Message-ID, and the engine records one `email_sent`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
import test_email_send
from test_email_send import FROM, Peer, settings
from test_evaluate_triggers import AS_OF, add_customers, add_events, ago, customer, playbook

from connectors.email import message_id
from engine.outbox.run import run_cycle
from engine.store import status as st
from engine.store.tables import actions, customers, events, points, suppressions, tasks

serve = test_email_send.serve  # the aiosmtpd fixture

EMAIL = '  - email: { subject: "Hello {{ customer.customer_id }}", body: "We miss you." }\n'
CARE = ('  - task: { title: "Call {{ customer.customer_id }}", due_in: 2d }\n'
        '  - points: { amount: 50, reason: welcome }\n')


def shop(db: sa.Engine) -> None:
    add_customers(db, customer("a", email="a@example.com"), customer("b", email="B@Example.com"))
    add_events(db, ("e1", "a", "purchase", ago(days=1), {"amount": 10}),
               ("e2", "b", "purchase", ago(days=2), {"amount": 20}))


def table(db: sa.Engine, query: sa.Select) -> list[tuple]:
    with db.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def test_a_live_run_delivers_email_once_with_its_facts(
        db: sa.Engine, tmp_path: Path, serve: Callable[..., tuple[Peer, int]]) -> None:
    shop(db)
    peer, port = serve()
    pb = playbook(tmp_path, "first_purchase: { lookback: 30d }", actions=EMAIL)
    report = run_cycle(db, [pb], AS_OF, settings(port))
    assert dict(report.playbooks["pb"].delivered) == {st.SENT: 2}
    keys = dict(table(db, sa.select(actions.c.customer_id, actions.c.idempotency_key)))
    got = {item.rcpt_tos[0]: item.message for item in peer.received}
    assert set(got) == {"a@example.com", "B@Example.com"}
    assert got["a@example.com"]["Message-ID"] == message_id(keys["a"], FROM)
    assert got["a@example.com"]["Subject"] == "Hello a"
    assert sorted(table(db, sa.select(events.c.customer_id, events.c.occurred_at)
                        .where(events.c.type == "email_sent"))) == [("a", AS_OF), ("b", AS_OF)]
    assert table(db, sa.select(customers.c.last_emailed_at).where(
        customers.c.customer_id.in_(["a", "b"]))) == [(AS_OF,), (AS_OF,)]
    again = run_cycle(db, [pb], AS_OF, settings(port))  # a second run sends nothing new
    assert dict(again.playbooks["pb"].delivered) == {} and len(peer.received) == 2


def test_a_lost_ack_is_sent_again_and_recorded_once(
        db: sa.Engine, tmp_path: Path, serve: Callable[..., tuple[Peer, int]]) -> None:
    shop(db)
    peer, port = serve(Peer(drop_after_data=1))
    pb = playbook(tmp_path, "first_purchase: { lookback: 30d }", actions=EMAIL)
    first = run_cycle(db, [pb], AS_OF, settings(port))
    # Both were in flight on two sessions; the dropped one retries, the other was confirmed.
    assert dict(first.playbooks["pb"].delivered) == {st.RETRYING: 1, st.SENT: 1}
    [(retry_at,)] = table(db, sa.select(actions.c.next_attempt_at)
                          .where(actions.c.status == st.RETRYING))
    assert AS_OF + timedelta(seconds=100) <= retry_at <= AS_OF + timedelta(seconds=140)
    later = run_cycle(db, [pb], retry_at, settings(port))
    assert dict(later.playbooks["pb"].delivered) == {st.SENT: 1}
    ids = [item.message["Message-ID"] for item in peer.received]
    assert len(ids) == 3 and len(set(ids)) == 2  # the lost one twice, the same Message-ID
    assert len(table(db, sa.select(events.c.id).where(events.c.type == "email_sent"))) == 2


def test_a_live_run_writes_tasks_and_points_once(db: sa.Engine, tmp_path: Path) -> None:
    shop(db)
    pb = playbook(tmp_path, "first_purchase: { lookback: 30d }", actions=CARE)
    report = run_cycle(db, [pb], AS_OF, settings(1))  # no email: SMTP is never opened
    assert dict(report.playbooks["pb"].delivered) == {st.SENT: 4}
    assert sorted(table(db, sa.select(tasks.c.customer_id, tasks.c.title, tasks.c.due_at))) == [
        ("a", "Call a", AS_OF + timedelta(days=2)), ("b", "Call b", AS_OF + timedelta(days=2))]
    assert sorted(table(db, sa.select(points.c.customer_id, points.c.amount))) == \
        [("a", 50), ("b", 50)]
    assert table(db, sa.select(customers.c.points_balance).order_by(customers.c.customer_id)
                 ) == [(50,), (50,)]
    run_cycle(db, [pb], AS_OF + timedelta(days=1), settings(1))
    assert len(table(db, sa.select(tasks.c.id))) == 2
    assert len(table(db, sa.select(events.c.id).where(events.c.type == "points_awarded"))) == 2


def test_a_550_dead_letters_that_email_and_suppresses_the_address(
        db: sa.Engine, tmp_path: Path, serve: Callable[..., tuple[Peer, int]]) -> None:
    """RELIABILITY 9: the server's text kept, the address suppressed as bounced (lower-cased),
    the other customer's email sent."""
    shop(db)
    peer, port = serve(Peer(rcpt_replies={"B@Example.com": "550 5.1.1 no such user"}))
    pb = playbook(tmp_path, "first_purchase: { lookback: 30d }", actions=EMAIL)
    report = run_cycle(db, [pb], AS_OF, settings(port))
    assert dict(report.playbooks["pb"].delivered) == {st.SENT: 1, st.DEAD: 1}
    [(error,)] = table(db, sa.select(actions.c.last_error).where(actions.c.status == st.DEAD))
    assert "550" in error and "no such user" in error
    assert table(db, sa.select(suppressions.c.email, suppressions.c.reason)) == \
        [("b@example.com", "bounced")]
    assert [item.rcpt_tos for item in peer.received] == [["a@example.com"]]
