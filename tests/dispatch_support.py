"""Helpers for the dispatcher tests: outbox rows written directly, a real socket peer, and
test-only connectors that deliver to it.

`Sink` is a real TCP server on 127.0.0.1 (a thread): a connector writes one line with the
idempotency key and reads one reply line. The sink records every key it received (the external
effect) before replying, so duplicate deliveries are seen by the peer, as an SMTP server would
see them. Replies per key: `OK` (default), `TEMP`, `PERM`, `DOWN` (a connection-level failure),
`DROP` (store the key, then close without replying: a lost ack), `HOLD` (the connector then
blocks for an hour: the effect happened, the commit never comes) or `PAUSE` (it waits a second
and a half, then succeeds); a list of replies is used up one delivery at a time.
"""

from __future__ import annotations

import asyncio
import functools
import socketserver
import tempfile
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from outbox_support import insert_action, select_actions
from pydantic import BaseModel

from connectors.base import Connector, ConnectorParams, Delivery, Sent
from connectors.email import EmailConnector
from engine.config import Settings, load_settings
from engine.errors import PermanentError, TransientError
from engine.store.status import PLANNED
from engine.store.tables import actions, customers

AS_OF = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@functools.cache
def settings() -> Settings:
    """The engine's settings as a project without retain.toml and an empty environment has
    them (an empty folder: no file is read)."""
    with tempfile.TemporaryDirectory() as folder:
        return load_settings(Path(folder), env={})


class Sink(socketserver.ThreadingTCPServer):
    """A line-protocol peer that records each key before it answers."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[str] = []
        self.replies: dict[str, str | list[str]] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(self.received)

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: Sink = self.server  # type: ignore[assignment]
        for line in self.rfile:
            key = line.decode().strip()
            with server.lock:
                server.received.append(key)
                reply = server.replies.get(key, "OK")
                if isinstance(reply, list):
                    reply = reply.pop(0) if len(reply) > 1 else reply[0]
            if reply == "DROP":
                return
            self.wfile.write(f"{reply}\n".encode())
            self.wfile.flush()


class SockParams(ConnectorParams):
    """Nothing to configure: the port rides in the payload."""


async def deliver_line(port: int, key: str) -> str:
    """Send a key to the sink and read its reply (an effect outside the database)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        raise TransientError(f"sink on port {port} refused: {exc}", connection=True) from exc
    try:
        writer.write(f"{key}\n".encode())
        await writer.drain()
        reply = (await reader.readline()).decode().strip()
    finally:
        writer.close()
    if reply == "HOLD":  # the peer has it; never get to commit (a kill -9 test kills us here)
        await asyncio.sleep(3600)
    if reply == "PAUSE":
        await asyncio.sleep(1.5)
    if reply in ("OK", "PAUSE"):
        return "OK"
    if reply == "":
        raise TransientError("connection dropped before the reply (lost ack)")
    if reply == "TEMP":
        raise TransientError("451 try later")
    if reply == "DOWN":
        raise TransientError("421 service not available", connection=True)
    raise PermanentError("550 5.1.1 no such user", suppress="bounced")


class SockConnector(Connector):
    """A test connector that delivers the key to a `Sink` on the payload's port."""

    kind = "sock"
    Params = SockParams
    concurrency = 4
    retry = (3, 60.0, 2.0)
    opened = 0
    closed = 0

    def check(self, params: BaseModel, templates: Any) -> list[Any]:
        return []

    def plan(self, params: BaseModel, render: Any, render_file: Any, due_at: datetime
             ) -> dict[str, Any]:
        return {}

    async def open(self, settings: Any) -> None:
        type(self).opened += 1

    async def close(self) -> None:
        type(self).closed += 1

    async def send(self, delivery: Delivery) -> Sent:
        await deliver_line(int(delivery.payload["port"]), delivery.key)
        return Sent(detail="OK")


class SinkEmailConnector(EmailConnector):
    """The real email connector's checks and `blocked`, sending its key to a `Sink` (until the
    SMTP send lands, the dispatcher's email facts are tested through this)."""

    async def open(self, settings: Any) -> None:
        return None  # no SMTP pool: the sink is the peer

    async def close(self) -> None:
        return None

    async def send(self, delivery: Delivery) -> Sent:
        await deliver_line(int(delivery.payload["port"]), delivery.key)
        return Sent(detail="250 OK")


def add_customer(engine: sa.Engine, customer_id: str, email: str | None = None) -> None:
    with engine.begin() as connection:
        connection.execute(sa.insert(customers).values(
            customer_id=customer_id, email=email, tags=[], file_tags=[], tags_added=[],
            tags_removed=[], attributes={}, created_at=AS_OF))


def add_action(engine: sa.Engine, key: str, *, connector: str = "sock",
               payload: dict[str, Any] | None = None, customer: str = "c1",
               playbook: str = "winback", status: str = PLANNED, attempts: int = 0,
               next_at: datetime = AS_OF, **extra: Any) -> int:
    """One outbox row, as a live run's commit would write it (no enrollment)."""
    with engine.begin() as connection:
        return insert_action(
            connection, enrollment_id=None, playbook_id=playbook, customer_id=customer, stage=0,
            step=0, connector=connector, payload=payload or {}, idempotency_key=key,
            status=status, attempts=attempts, next_attempt_at=next_at, created_at=AS_OF, **extra)


def action(engine: sa.Engine, action_id: int) -> Any:
    with engine.connect() as connection:
        return connection.execute(select_actions(actions.c.id == action_id)).one()


def use_only(*classes: type[Any]) -> None:
    """Make `load_connectors()` give exactly these (what a `retain dispatch` subprocess of a
    test sees), whatever is installed."""
    from engine.format import registry

    registry._installed = dict  # type: ignore[assignment]  # nothing installed
    for cls in classes:
        registry.register_connector(cls)


RUNNER = """
import os, sys
sys.path.insert(0, {tests!r})
from dispatch_support import SockConnector, SinkEmailConnector, use_only
from connectors.email import EmailConnector
from connectors.points import PointsConnector
from connectors.tasks import TaskConnector
email = EmailConnector if os.environ.get("DISPATCH_TEST_REAL_EMAIL") else SinkEmailConnector
use_only(SockConnector, email, PointsConnector, TaskConnector)
from cli.main import main
main(sys.argv[1:])
"""
"""A `retain` process whose connectors are the test ones: `python -c RUNNER ARGS...` (the real
email connector when DISPATCH_TEST_REAL_EMAIL is set)."""
