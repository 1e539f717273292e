"""`retain outbox list/show/retry`, `retain tasks list/done` and `retain unsubscribe`, on both
databases, with outbox, attempt and task rows written directly (as commit and dispatch would)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Cli
from outbox_support import insert_actions

from engine.config import load_settings
from engine.consent import unsubscribe_token
from engine.outbox.admin import signing_key
from engine.store.status import STATUSES
from engine.store.tables import actions, attempts, customers, suppressions, tasks

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
LONG_ERROR = "550 5.1.1 <ann@example.com>: Recipient address rejected: User unknown in " \
             "virtual mailbox table\r\n(and a second line the server added)"


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def action(id_: int, playbook: str, customer: str, status: str, *, connector: str = "email",
           tries: int = 0, created: float = 0, **extra: Any) -> dict[str, Any]:
    return {"id": id_, "playbook_id": playbook, "customer_id": customer, "connector": connector,
            "status": status, "attempts": tries, "idempotency_key": f"{playbook}:{customer}:{id_}",
            "payload": {"subject": f"Hello {customer}", "to": f"{customer}@example.com"},
            "created_at": at(created), "next_attempt_at": at(created), "reason": None,
            "last_error": None, "sent_at": None, **extra}


def customer(id_: str, email: str | None) -> dict[str, Any]:
    return {"customer_id": id_, "email": email, "created_at": T0, "tags": [], "attributes": {}}


@pytest.fixture
def filled(db: sa.Engine, db_url: str) -> str:
    """Customers c1..c3, eight outbox rows (two dead ones with attempts), three tasks."""
    with db.begin() as connection:
        connection.execute(sa.insert(customers), [
            customer("c1", "Ann@Example.com"), customer("c2", "bob@example.com"),
            customer("c3", None)])
        insert_actions(connection, [
            action(1, "winback", "c1", "sent", tries=1, created=1, sent_at=at(1)),
            action(2, "winback", "c2", "dead", tries=8, created=2, last_error=LONG_ERROR),
            action(3, "welcome", "c1", "planned", created=3),
            action(4, "welcome", "c1", "retrying", tries=2, created=4,
                   last_error="451 4.7.1 try again later"),
            action(5, "welcome", "c1", "planned", connector="task", created=5),
            action(6, "welcome", "c2", "dead", connector="webhook", tries=6, created=6,
                   last_error="HTTP 410 Gone"),
            action(7, "welcome", "c3", "dead", created=7,
                   last_error="template error: 'customer.name' is undefined"),  # at commit
            action(8, "welcome", "c1", "deferred", created=8, reason="quiet hours until 08:00"),
        ])
        connection.execute(sa.insert(attempts), [
            {"action_id": 2, "attempt": n, "worker": "host-1:42", "started_at": at(2 + n),
             "finished_at": at(2 + n) + timedelta(seconds=3),
             "outcome": "dead" if n == 8 else "retrying",
             "error": LONG_ERROR if n == 8 else f"451 try {n}"} for n in range(1, 9)])
        connection.execute(sa.insert(tasks), [
            {"id": 1, "idempotency_key": "k1", "customer_id": "c1", "playbook_id": "vip",
             "title": "Call Ann about her order", "assignee": "sam", "due_at": at(48),
             "status": "open", "created_at": T0, "done_at": None},
            {"id": 2, "idempotency_key": "k2", "customer_id": "c2", "playbook_id": "vip",
             "title": "Call Bob", "assignee": "kim", "due_at": at(24), "status": "open",
             "created_at": T0, "done_at": None},
            {"id": 3, "idempotency_key": "k3", "customer_id": "c2", "playbook_id": "vip",
             "title": "Thank Bob", "assignee": "sam", "due_at": at(1), "status": "done",
             "created_at": T0, "done_at": at(2)},
            {"id": 4, "idempotency_key": "k4", "customer_id": "c3", "playbook_id": "vip",
             "title": "Look at c3", "assignee": "sam", "due_at": None, "status": "open",
             "created_at": T0, "done_at": None},
        ])
    return db_url


def rows(db: sa.Engine, table: sa.Table, order: sa.ColumnElement[Any]) -> list[Any]:
    with db.connect() as connection:
        return list(connection.execute(sa.select(table).order_by(order)).mappings())


# --- outbox list -------------------------------------------------------------------------------


def test_list_filters_newest_first_within_80_columns(filled: str, cli: Cli) -> None:
    code, out, err = cli(["--db", filled, "outbox", "list", "--json"])
    assert code == 0, err
    listed = json.loads(out)
    assert listed["total"] == 8
    assert [a["id"] for a in listed["actions"]] == [8, 7, 6, 5, 4, 3, 2, 1]
    assert "payload" not in listed["actions"][0]
    assert listed["actions"][-1]["next_attempt_at"] == "2024-03-01T10:00:00Z"

    code, out, _ = cli(["--db", filled, "outbox", "list", "--status", "dead", "--playbook",
                        "welcome", "--json"])
    assert [a["id"] for a in json.loads(out)["actions"]] == [7, 6]

    code, out, _ = cli(["--db", filled, "outbox", "list", "--limit", "3"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "PLAYBOOK", "CUSTOMER", "CONNECTOR", "STATUS", "TRIES",
                                "NEXT", "(UTC)"]
    assert lines[1].split() == ["8", "welcome", "c1", "email", "deferred", "0", "2024-03-01",
                                "17:00"]
    assert lines[2].strip() == "quiet hours until 08:00"  # the reason, under its row
    assert lines[-1] == "showing 3 of 8; --limit N for more"
    assert max(len(line) for line in lines) <= 80

    code, out, _ = cli(["--db", filled, "outbox", "list", "--status", "dead"])
    assert "550 5.1.1 <ann@example.com>: Recipient address rejected" in out
    assert "\r" not in out and max(len(line) for line in out.splitlines()) <= 80
    code, out, _ = cli(["--db", filled, "outbox", "list", "--playbook", "nope"])
    assert (code, out.strip()) == (0, "no actions (playbook nope)")


def test_an_unknown_status_is_a_usage_error_naming_the_vocabulary(filled: str, cli: Cli) -> None:
    code, out, err = cli(["--db", filled, "outbox", "list", "--status", "daed"])
    assert code == 2 and out == ""
    flat = " ".join(err.split())
    assert "unknown status 'daed' (did you mean 'dead'?)" in flat
    assert ", ".join(STATUSES) in flat


# --- outbox show -------------------------------------------------------------------------------


def test_show_has_the_row_its_payload_and_every_attempt(filled: str, cli: Cli) -> None:
    code, out, err = cli(["--db", filled, "outbox", "show", "2", "--json"])
    assert code == 0, err
    shown = json.loads(out)
    assert shown["action"]["payload"] == {"subject": "Hello c2", "to": "c2@example.com"}
    assert shown["action"]["idempotency_key"] == "winback:c2:2"
    assert [a["attempt"] for a in shown["attempts"]] == list(range(1, 9))
    assert shown["attempts"][0] == {"attempt": 1, "worker": "host-1:42",
                                    "started_at": "2024-03-01T12:00:00Z",
                                    "finished_at": "2024-03-01T12:00:03Z",
                                    "outcome": "retrying", "error": "451 try 1"}

    code, out, _ = cli(["--db", filled, "outbox", "show", "2"])
    assert code == 0
    assert out.startswith("Action 2: email for customer c2, playbook winback\n")
    assert "status:       dead after 8 attempts" in out
    assert '"subject": "Hello c2"' in out
    assert "  1 2024-03-01 12:00:00     3s retrying   host-1:42" in out
    assert "451 try 7" in out and "Recipient address rejected" in out
    assert "mailbox table (and a second line the server added)" in out  # whole, wrapped
    assert max(len(line) for line in out.splitlines() if '"' not in line) <= 80


def test_show_of_long_ids_stays_within_80_columns(db: sa.Engine, db_url: str, cli: Cli) -> None:
    """A UUID customer id and a long playbook id wrap the heading instead of overflowing it."""
    uuid, playbook = "0b6f3c1e-5d2a-4e8b-9a77-1f2e3d4c5b6a", "winback-high-value-customers-90d"
    with db.begin() as connection:
        insert_actions(connection, [action(1, playbook, uuid, "planned")])
    code, out, err = cli(["--db", db_url, "outbox", "show", "1"])
    assert code == 0, err
    assert out.startswith(f"Action 1: email for customer {uuid},")
    assert playbook in " ".join(out.split())
    assert max(len(line) for line in out.splitlines() if '"' not in line) <= 80


def test_show_of_an_unknown_id_exits_1(filled: str, cli: Cli) -> None:
    code, out, err = cli(["--db", filled, "outbox", "show", "99"])
    assert (code, out) == (1, "")
    assert "no action 99 in the outbox" in err
    code, out, _ = cli(["--db", filled, "outbox", "show", "3"])
    assert code == 0 and "Attempts: none yet" in out


# --- outbox retry ------------------------------------------------------------------------------


def test_retry_one_dead_action(filled: str, db: sa.Engine, cli: Cli) -> None:
    code, out, err = cli(["--db", filled, "outbox", "retry", "2", "--as-of",
                          "2024-03-05T10:00:00Z"])
    assert code == 0, err
    assert "action 2: retrying, due 2024-03-05T10:00:00Z" in out
    row = rows(db, actions, actions.c.id)[1]
    assert (row["status"], row["attempts"], row["next_attempt_at"]) == \
        ("retrying", 0, datetime(2024, 3, 5, 10, tzinfo=UTC))
    assert row["last_error"] == LONG_ERROR and row["lease_until"] is None
    assert len(rows(db, attempts, attempts.c.id)) == 8  # the history stays

    code, _, err = cli(["--db", filled, "outbox", "retry", "2"])  # now retrying, not dead
    assert code == 1 and "action 2 is retrying, not dead: only dead actions are retried" in err
    code, _, err = cli(["--db", filled, "outbox", "retry", "7"])
    assert code == 1 and "dead-lettered when planned" in err and "customer.name" in err
    code, _, err = cli(["--db", filled, "outbox", "retry", "99"])
    assert code == 1 and "no action 99 in the outbox" in err


def test_retry_every_dead_action_of_a_playbook(filled: str, db: sa.Engine, cli: Cli) -> None:
    code, out, err = cli(["--db", filled, "outbox", "retry", "--dead", "--playbook", "welcome"])
    assert code == 0, err
    assert out.splitlines()[0].startswith("1 dead action of playbook welcome put back to "
                                          "retrying, due ")
    assert out.splitlines()[1] == "1 left dead: dead-lettered when planned, with no message " \
        "to send"
    status = {r["id"]: r["status"] for r in rows(db, actions, actions.c.id)}
    assert (status[2], status[6], status[7]) == ("dead", "retrying", "dead")
    code, out, _ = cli(["--db", filled, "outbox", "retry", "--dead"])
    assert out.startswith("1 dead action put back") and status != \
        {r["id"]: r["status"] for r in rows(db, actions, actions.c.id)}


def test_retry_needs_an_id_or_dead(filled: str, cli: Cli) -> None:
    for args in ([], ["2", "--dead"], ["2", "--playbook", "welcome"]):
        code, _, err = cli(["--db", filled, "outbox", "retry", *args])
        assert code == 2, (args, err)


# --- tasks -------------------------------------------------------------------------------------


def test_tasks_list_open_first_by_due_time(filled: str, cli: Cli) -> None:
    code, out, err = cli(["--db", filled, "tasks", "list", "--json"])
    assert code == 0, err
    assert [t["id"] for t in json.loads(out)["tasks"]] == [2, 1, 4, 3]
    code, out, _ = cli(["--db", filled, "tasks", "list", "--assignee", "sam", "--open", "--json"])
    listed = json.loads(out)
    assert [t["id"] for t in listed["tasks"]] == [1, 4] and listed["total"] == 2
    assert listed["tasks"][0]["due_at"] == "2024-03-03T09:00:00Z"

    code, out, _ = cli(["--db", filled, "tasks", "list"])
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "DUE", "(UTC)", "ASSIGNEE"]
    assert lines[1].split()[:5] == ["2", "2024-03-02", "09:00", "kim", "c2"]
    assert "Call Ann about her order" in out  # a long title, whole on its own line
    assert "done 2024-03-01 11:00: Thank Bob" in out
    assert max(len(line) for line in lines) <= 80
    code, out, _ = cli(["--db", filled, "tasks", "list", "--assignee", "nobody", "--open"])
    assert out.strip() == "no tasks for nobody open"


def test_tasks_done(filled: str, db: sa.Engine, cli: Cli) -> None:
    code, out, err = cli(["--db", filled, "tasks", "done", "2"])
    assert code == 0, err
    assert out.startswith("task 2 (Call Bob) done at ")
    task = rows(db, tasks, tasks.c.id)[1]
    assert task["status"] == "done" and task["done_at"] is not None
    code, out, _ = cli(["--db", filled, "tasks", "done", "3"])
    assert (code, out.strip()) == (0, "task 3 (Thank Bob) was already done, at "
                                      "2024-03-01T11:00:00Z")
    code, out, err = cli(["--db", filled, "tasks", "done", "99"])
    assert (code, out) == (1, "") and "no task 99" in err


# --- unsubscribe -------------------------------------------------------------------------------


def test_unsubscribe_an_address_stops_its_waiting_emails(filled: str, db: sa.Engine,
                                                         cli: Cli) -> None:
    code, out, err = cli(["--db", filled, "unsubscribe", "  ANN@example.COM "])
    assert code == 0, err
    assert out.splitlines() == ["ann@example.com unsubscribed: no email will go to it",
                                "3 waiting emails marked suppressed"]
    [stored] = rows(db, suppressions, suppressions.c.email)
    assert (stored["email"], stored["reason"]) == ("ann@example.com", "unsubscribed")
    after = {r["id"]: (r["status"], r["reason"]) for r in rows(db, actions, actions.c.id)}
    stopped = ("suppressed", "address is suppressed (unsubscribed)")
    assert after[3] == after[4] == after[8] == stopped  # planned, retrying, deferred emails
    assert after[1][0] == "sent" and after[5][0] == "planned"  # sent; a task, not an email
    assert after[2][0] == "dead"  # another customer's

    code, out, _ = cli(["--db", filled, "unsubscribe", "ann@example.com"])
    assert (code, out.strip()) == (0, "ann@example.com was already suppressed (unsubscribed)")
    code, _, err = cli(["--db", filled, "unsubscribe", "not-an-address"])
    assert code == 1 and "'not-an-address' is not an email address" in err
    for args in ([], ["a@b.co", "--token", "x.y"]):
        assert cli(["--db", filled, "unsubscribe", *args])[0] == 2


def test_unsubscribe_keeps_an_earlier_bounce(filled: str, db: sa.Engine, cli: Cli) -> None:
    with db.begin() as connection:
        connection.execute(sa.insert(suppressions).values(email="bob@example.com",
                                                          reason="bounced", created_at=T0))
        connection.execute(sa.update(actions).where(actions.c.id == 6).values(
            connector="email", status="planned"))
    code, out, _ = cli(["--db", filled, "unsubscribe", "Bob@Example.com"])
    assert out.splitlines() == ["bob@example.com was already suppressed (bounced)",
                                "1 waiting email marked suppressed"]
    assert rows(db, actions, actions.c.id)[5]["reason"] == "address is suppressed (bounced)"


def test_unsubscribe_with_a_token(filled: str, db: sa.Engine, cli: Cli) -> None:
    """The key the command verifies with is the one a live run would sign with."""
    with db.begin() as connection:
        key = signing_key(connection, load_settings())
    token = unsubscribe_token("Bob@Example.com", key)
    code, out, err = cli(["--db", filled, "unsubscribe", "--token", token])
    assert code == 0, err
    assert out.splitlines()[0] == "bob@example.com unsubscribed: no email will go to it"
    assert token not in out + err
    assert [r["email"] for r in rows(db, suppressions, suppressions.c.email)] == \
        ["bob@example.com"]

    forged = unsubscribe_token("ann@example.com", b"x" * 32)
    code, out, err = cli(["--db", filled, "unsubscribe", "--token", forged])
    assert (code, out) == (1, "") and "signature does not match" in err
    assert forged not in err
    assert len(rows(db, suppressions, suppressions.c.email)) == 1


def test_unsubscribe_token_signed_with_the_secret_key(filled: str, cli: Cli,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "a-long-enough-secret-key-for-tests"
    if not hasattr(load_settings(env={"RETAIN_SECRET_KEY": secret}), "secret_key"):
        pytest.skip("engine.config has no secret_key yet (the settings part lands it)")
    monkeypatch.setenv("RETAIN_SECRET_KEY", secret)
    token = unsubscribe_token("ann@example.com", secret.encode())
    code, out, err = cli(["--db", filled, "unsubscribe", "--token", token])
    assert code == 0, err
    assert secret not in out + err
