"""RELIABILITY 1: N rows x D concurrent dispatchers, every row delivered exactly once, in 10 s.

Each dispatcher is a thread with its own engine (its own connections) and worker id, started
together; the peer (a real socket server) counts what it received. PostgreSQL takes 1-16
dispatchers (SKIP LOCKED); SQLite 2 and 4 (BEGIN IMMEDIATE serializes the claims).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from dispatch_support import AS_OF, Sink, SockConnector, add_customer, settings
from outbox_support import insert_actions

from engine.outbox.dispatch import DispatchReport, dispatch
from engine.store.open import make_engine, open_store
from engine.store.status import SENT
from engine.store.tables import actions, attempts


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.close()


def fill(url: str, rows: int, port: int) -> None:
    engine = open_store(url)
    add_customer(engine, "c1")
    with engine.begin() as connection:
        insert_actions(connection, [
            {"playbook_id": "p", "customer_id": "c1", "connector": "sock",
             "payload": {"port": port}, "idempotency_key": f"k{n}", "status": "planned",
             "attempts": 0, "next_attempt_at": AS_OF, "created_at": AS_OF, "stage": 0,
             "step": 0} for n in range(rows)])
    engine.dispose()


def race(url: str, dispatchers: int) -> list[DispatchReport]:
    """Start `dispatchers` threads at once; each passes over the outbox until nothing is due."""
    reports: list[DispatchReport] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(dispatchers)

    def work(n: int) -> None:
        engine = make_engine(url)
        try:
            barrier.wait()
            reports.append(dispatch(engine, settings(), AS_OF, worker=f"w{n}",
                                    connectors={"sock": SockConnector}, batch=4))
        except BaseException as exc:  # noqa: BLE001  (reported by the test thread)
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(dispatchers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    return reports


def check_exactly_once(url: str, rows: int, sink: Sink, reports: list[Any]) -> None:
    assert sink.counts() == {f"k{n}": 1 for n in range(rows)}
    assert sum(r.total(SENT) for r in reports) == rows
    engine = make_engine(url)
    with engine.connect() as connection:
        states = connection.execute(
            sa.select(actions.c.status, actions.c.attempts, sa.func.count())
            .group_by(actions.c.status, actions.c.attempts)).all()
        assert [tuple(s) for s in states] == [(SENT, 1, rows)]
        tried = connection.execute(sa.select(attempts.c.action_id, sa.func.count())
                                   .group_by(attempts.c.action_id)).all()
        assert len(tried) == rows and {n for _, n in tried} == {1}
    engine.dispose()


@pytest.mark.parametrize("dispatchers", [1, 2, 4, 16])
@pytest.mark.parametrize("rows", [1, 2, 64])
def test_postgresql_every_row_once(pg_url: str, sink: Sink, rows: int, dispatchers: int) -> None:
    fill(pg_url, rows, sink.port)
    started = time.monotonic()
    reports = race(pg_url, dispatchers)
    assert time.monotonic() - started < 10
    check_exactly_once(pg_url, rows, sink, reports)


@pytest.mark.parametrize("dispatchers", [2, 4])
@pytest.mark.parametrize("rows", [1, 2, 64])
def test_sqlite_every_row_once(sqlite_url: str, sink: Sink, rows: int, dispatchers: int) -> None:
    fill(sqlite_url, rows, sink.port)
    started = time.monotonic()
    reports = race(sqlite_url, dispatchers)
    assert time.monotonic() - started < 10
    check_exactly_once(sqlite_url, rows, sink, reports)
