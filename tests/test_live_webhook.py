"""A webhook through `retain run`, against the real local receiver of tests/test_webhook_send.py
that verifies every request with the `standardwebhooks` library (RELIABILITY 12), on both
databases: a 500 is retried by a later run with the same webhook-id and body, then nothing more.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from live_support import Project, customer, project, purchase
from test_webhook_send import SECRET, Answer, Receiver

from engine.store import status as st
from engine.store.tables import actions, events

__all__ = ["project"]  # fixture
HOOK = """trigger:
  event: { type: purchase }
reentry: always
actions:
  - webhook:
      url: "${HOOK_URL}/crm/{{ customer.customer_id }}"
      headers: { Authorization: "Bearer ${HOOK_TOKEN}" }
      body:
        customer: "{{ customer.customer_id }}"
        amount: "{{ event.amount }}"
"""


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    server = Receiver()
    monkeypatch.setenv("HOOK_URL", server.url)
    monkeypatch.setenv("HOOK_TOKEN", "t0ken")
    monkeypatch.setenv("RETAIN_WEBHOOK_SECRET", SECRET)
    yield server
    server.close()


def test_a_500_then_success_delivers_once_more_with_the_same_webhook_id(
        project: Project, receiver: Receiver) -> None:
    project.playbook("crm", HOOK)
    project.customers(customer("ann"), customer("bob"))
    project.events(purchase("p1", "ann", "2024-05-01T09:00:00Z", 42.5),
                   purchase("p2", "bob", "2024-05-01T09:10:00Z", 10))
    receiver.script = [Answer(status=500, body=b"oops")]
    started = time.time()
    first = project.json("run", "--as-of", "2024-05-01T10:00:00Z")["playbooks"][0]
    assert first["entered"] == 2
    assert first["dispatched"] == {st.SENT: 1, st.RETRYING: 1}
    assert len(receiver.requests) == 2
    failed = receiver.requests[0]
    (retrying,) = project.rows(actions, actions.c.status == st.RETRYING)
    assert failed.headers["webhook-id"] == retrying["idempotency_key"]
    assert "500" in (retrying["last_error"] or "")

    project.retain("run", "--as-of", "2024-05-01T10:00:01Z")  # before its backoff: nothing
    assert len(receiver.requests) == 2
    project.retain("run", "--as-of", "2024-05-01T11:00:00Z")
    assert len(receiver.requests) == 3
    retried = receiver.requests[2]
    assert retried.headers["webhook-id"] == failed.headers["webhook-id"]
    assert retried.body == failed.body and retried.path == failed.path
    assert all(r.verified for r in receiver.requests)  # standardwebhooks accepted each one
    assert all(r.headers["Authorization"] == "Bearer t0ken" for r in receiver.requests)
    stamps = [int(r.headers["webhook-timestamp"]) for r in receiver.requests]
    assert all(started - 5 <= s <= time.time() + 5 for s in stamps)  # real time, not --as-of
    bodies = {r.path: json.loads(r.body) for r in receiver.requests}
    assert bodies == {"/crm/ann": {"customer": "ann", "amount": "42.5"},
                      "/crm/bob": {"customer": "bob", "amount": "10"}}
    assert {a["status"] for a in project.rows(actions)} == {st.SENT}
    assert len(project.rows(events, events.c.type == "webhook_sent")) == 2

    project.retain("run", "--as-of", "2024-05-02T11:00:00Z")
    assert len(receiver.requests) == 3
    stored = json.dumps([a["payload"] for a in project.rows(actions)])
    assert "t0ken" not in stored and receiver.url not in stored  # secrets expanded at send


def test_429_waits_for_retry_after_and_410_dead_letters(project: Project,
                                                         receiver: Receiver) -> None:
    project.playbook("crm", HOOK)
    project.customers(customer("ann"), customer("bob"))
    project.events(purchase("p1", "ann", "2024-05-01T09:00:00Z"))
    receiver.script = [Answer(status=429, headers={"Retry-After": "600"})]
    project.retain("run", "--as-of", "2024-05-01T10:00:00Z")
    (row,) = project.rows(actions)
    assert row["status"] == st.RETRYING
    assert row["next_attempt_at"].astimezone(UTC) == datetime(2024, 5, 1, 10, 10, tzinfo=UTC)
    project.retain("run", "--as-of", "2024-05-01T10:09:59Z")
    assert len(receiver.requests) == 1
    project.retain("run", "--as-of", "2024-05-01T10:10:00Z")
    assert len(receiver.requests) == 2 and project.rows(actions)[0]["status"] == st.SENT

    project.events(purchase("p2", "bob", "2024-05-01T11:00:00Z"), name="bob.jsonl")
    receiver.script = [Answer(status=410, body=b"gone")]
    project.retain("run", "--as-of", "2024-05-01T11:30:00Z")
    (bob,) = project.rows(actions, actions.c.customer_id == "bob")
    assert bob["status"] == st.DEAD and "410" in (bob["last_error"] or "")
    project.retain("run", "--as-of", "2024-05-02T11:30:00Z")
    assert len(receiver.requests) == 3


def test_without_the_signing_secret_nothing_is_committed_or_dead_lettered(
        project: Project, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    project.playbook("crm", HOOK)
    project.customers(customer("ann"))
    project.events(purchase("p1", "ann", "2024-05-01T09:00:00Z"))
    monkeypatch.delenv("RETAIN_WEBHOOK_SECRET")
    code, out, err = project.retain("run", "--as-of", "2024-05-01T10:00:00Z", ok=False)
    assert code == 1 and "RETAIN_WEBHOOK_SECRET" in " ".join((out + err).split())
    assert project.rows(actions) == []
    # committed with the secret, dispatched by a process that lacks it: retried, never dead
    monkeypatch.setenv("RETAIN_WEBHOOK_SECRET", SECRET)
    project.retain("run", "--no-dispatch", "--as-of", "2024-05-01T10:00:00Z")
    monkeypatch.delenv("RETAIN_WEBHOOK_SECRET")
    project.retain("dispatch", "--as-of", "2024-05-01T10:00:00Z")
    (row,) = project.rows(actions)
    assert row["status"] == st.RETRYING and "RETAIN_WEBHOOK_SECRET" in (row["last_error"] or "")
    assert receiver.requests == []
    monkeypatch.setenv("RETAIN_WEBHOOK_SECRET", SECRET)
    project.retain("dispatch", "--as-of", "2024-05-01T11:00:00Z")
    assert project.rows(actions)[0]["status"] == st.SENT
    assert [r.verified for r in receiver.requests] == [True]
