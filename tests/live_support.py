"""What the end-to-end tests of live runs share (tests/test_live_*.py).

A `Project` is a real project folder (retain.toml, playbooks/, templates) that the test has
`chdir`-ed into, driven through the real CLI in-process (`retain --db URL ...`), with data synced
from CSV and JSONL files the way a user syncs them. A `Mailbox` is a real aiosmtpd server on
127.0.0.1 that records every message it accepts; it can start on a port that was refused
before, so "the server was down at the first run" is a closed port, not a mock.
"""

from __future__ import annotations

import asyncio
import csv
import json
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session
from conftest import Cli
from outbox_support import select_actions

from engine.store.open import open_store
from engine.store.tables import actions

FROM = "Shop <news@shop.example>"


# --- the SMTP peer -------------------------------------------------------------------------------

def free_port() -> int:
    """A port nothing listens on (yet): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Mailbox:
    """A real SMTP server on 127.0.0.1:port, started on demand, recording what it accepts."""

    port: int = field(default_factory=free_port)
    received: list[bytes] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)
    controller: Controller | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address -> its RCPT reply
    data_replies: list[str] = field(default_factory=list)  # replies to the next DATAs
    delay: float = 0.0  # seconds each DATA takes (a slow server: sends stay in flight)

    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.data_replies:
            return self.data_replies.pop(0)
        self.received.append(envelope.original_content)
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 2.0.0 Ok: queued"

    def start(self) -> Mailbox:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def messages(self) -> list[EmailMessage]:
        parsed = [message_from_bytes(data, policy=policy.default) for data in self.received]
        assert all(isinstance(m, EmailMessage) for m in parsed)
        return parsed  # type: ignore[return-value]

    def by_message_id(self) -> Counter[str]:
        """How often each Message-ID arrived: exactly once means every count is 1."""
        return Counter(str(m["Message-ID"]) for m in self.messages)

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if str(m["To"]).endswith(f"<{address}>")
                or str(m["To"]) == address]


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    """A Mailbox on a free port, not started: `mailbox.start()` when the test wants it up."""
    box = Mailbox()
    yield box
    box.stop()


def smtp_env(monkeypatch: pytest.MonkeyPatch, port: int, **more: str) -> None:
    """The environment of a deployment that sends through the SMTP server on `port`."""
    env = {"RETAIN_SMTP_HOST": "127.0.0.1", "RETAIN_SMTP_PORT": str(port),
           "RETAIN_SMTP_TLS": "none", "RETAIN_SMTP_TIMEOUT": "5", "RETAIN_EMAIL_FROM": FROM,
           "RETAIN_SECRET_KEY": "a-test-secret-key-of-enough-length", **more}
    for name, value in env.items():
        monkeypatch.setenv(name, value)


# --- the project ---------------------------------------------------------------------------------

@dataclass
class Project:
    """A project folder and its database, driven through the real `retain` CLI."""

    root: Path
    url: str
    cli: Cli
    engine: sa.Engine | None = None

    def file(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def toml(self, text: str) -> None:
        self.file("retain.toml", text)

    def playbook(self, pid: str, text: str) -> Path:
        """playbooks/PID.yaml with `id: PID` and a name added in front of `text`."""
        return self.file(f"playbooks/{pid}.yaml", f"id: {pid}\nname: Playbook {pid}\n{text}")

    def template(self, name: str, text: str) -> Path:
        return self.file(f"templates/{name}", text)

    def retain(self, *args: str, ok: bool = True) -> tuple[int, str, str]:
        """`retain --db URL ARGS`; with ok, the command must succeed."""
        code, out, err = self.cli(["--db", self.url, *args])
        if ok:
            assert code == 0, f"retain {' '.join(args)} -> {code}\n{out}\n{err}"
        return code, out, err

    def json(self, *args: str) -> Any:
        """`retain ARGS --json`, parsed."""
        return json.loads(self.retain(*args, "--json")[1])

    def customers(self, *rows: dict[str, Any], name: str = "customers.csv") -> None:
        """Sync customers from a CSV file with these rows (columns: the union of their keys)."""
        columns = list(dict.fromkeys(k for row in rows for k in row))
        path = self.root / name
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, columns)
            writer.writeheader()
            writer.writerows(rows)
        _, out_text, _ = self.retain("sync", "customers", str(path))
        assert "rejected 0" in out_text, out_text

    def events(self, *rows: dict[str, Any], name: str = "events.jsonl") -> None:
        """Sync events from a JSONL file with these rows."""
        path = self.root / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        _, out_text, _ = self.retain("sync", "events", str(path))
        assert "rejected 0" in out_text, out_text

    def db(self) -> sa.Engine:
        if self.engine is None:
            self.engine = open_store(self.url)
        return self.engine

    def rows(self, table: sa.Table, *where: Any) -> list[dict[str, Any]]:
        """The table's rows (by id when it has one), read from another connection."""
        query = (select_actions() if table is actions else sa.select(table)).where(*where)
        if "id" in table.c:
            query = query.order_by(table.c.id)
        with self.db().connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]


@pytest.fixture
def project(tmp_path: Path, db_url: str, cli: Cli,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """A fresh project folder (the current folder for the test) on each database."""
    root = tmp_path / "shop"
    (root / "playbooks").mkdir(parents=True)
    (root / "templates").mkdir()
    monkeypatch.chdir(root)
    for name in ("RETAIN_DATABASE_URL", "RETAIN_EMAIL_TRANSPORT", "RETAIN_EMAIL_DIR",
                 "RETAIN_SMTP_HOST", "RETAIN_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    found = Project(root, db_url, cli)
    yield found
    if found.engine is not None:
        found.engine.dispose()


def customer(cid: str, **fields: Any) -> dict[str, Any]:
    """A customer row: id, address cid@example.com, a name, joined long ago."""
    return {"customer_id": cid, "email": f"{cid}@example.com", "name": cid.title(),
            "created_at": "2023-01-01T00:00:00Z", **fields}


def purchase(eid: str, cid: str, when: str, amount: float = 20.0) -> dict[str, Any]:
    return {"event_id": eid, "customer_id": cid, "type": "purchase", "occurred_at": when,
            "amount": amount}
