"""The email connector's send side against a real aiosmtpd server on 127.0.0.1 (RELIABILITY 7, 9,
10, 11, 14, 15, 17): what arrives, byte-identical re-sends, how each failure is classified for
the dispatcher, TLS, connection reuse, and the file transport.

Settings come from `load_settings` with RETAIN_* variables, as a deployment gives them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from connectors.base import Delivery, Sent
from connectors.email import EmailConnector, EmailParams, message_id
from connectors.mailfile import eml_name
from engine import PermanentError, TemplateError, TransientError
from engine.config import Settings, load_settings

NO_PROJECT = Path(__file__).parent  # load_settings reads retain.toml from here: there is none
FROM = "Shop <news@shop.example>"
UNSUBSCRIBE = "https://retain.shop.example/unsubscribe?token=" + "t" * 120
DUE = datetime(2026, 12, 4, 9, 30, tzinfo=UTC)
FILES = {"winback.txt.j2": "Hello Ann,\nwe miss you.\nUnsubscribe: {{ unsubscribe_url }}\n",
         "winback.html.j2": "<p>Hello Ann, we miss you.</p><a href=\"{{ unsubscribe_url }}\">"
                            "unsubscribe</a>\n"}


# --- the SMTP peer -------------------------------------------------------------------------------

@dataclass
class Received:
    peer: Any
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Peer:
    """An aiosmtpd handler that records what it receives and answers as a test tells it to."""

    received: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address -> reply
    data_replies: list[str] = field(default_factory=list)  # replies to the next DATAs, in order
    drop_after_data: int = 0  # store, then drop the connection before 250 (RFC 1047)
    logins: list[str] = field(default_factory=list)
    password: str = "right"
    mail_reply: str | None = None  # refuse MAIL FROM with this

    async def handle_MAIL(self, server: Any, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        assert isinstance(envelope.original_content, bytes)
        self.received.append(Received(session.peer, str(envelope.mail_from),
                                      list(envelope.rcpt_tos), envelope.original_content))
        if self.drop_after_data:
            self.drop_after_data -= 1
            server.transport.close()  # the message is stored; the 250 never arrives
        return "250 2.0.0 Ok: queued"

    def authenticate(self, server: Any, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append(auth_data.login.decode())
        return AuthResult(success=auth_data.password.decode() == self.password, handled=False)

    @property
    def sessions(self) -> set[Any]:
        return {item.peer for item in self.received}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[Peer, int]]]:
    """Start an aiosmtpd Controller on 127.0.0.1 (keyword arguments go to it); stopped after."""
    started: list[Controller] = []

    def start(peer: Peer | None = None, *, auth: bool = False, **kwargs: Any) -> tuple[Peer, int]:
        peer = peer or Peer()
        port = free_port()
        if auth:
            kwargs.setdefault("authenticator", peer.authenticate)
            kwargs.setdefault("auth_require_tls", False)
        controller = Controller(peer, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        return peer, port

    yield start
    for controller in started:
        controller.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


# --- the engine's side ---------------------------------------------------------------------------

def settings(port: int, **smtp: Any) -> Settings:
    """Settings as a deployment gives them: RETAIN_* variables (no retain.toml here)."""
    env = {"RETAIN_SMTP_HOST": "127.0.0.1", "RETAIN_SMTP_PORT": str(port),
           "RETAIN_SMTP_TLS": "none", "RETAIN_SMTP_TIMEOUT": "5",
           "RETAIN_EMAIL_FROM": FROM, "RETAIN_PUBLIC_URL": "https://retain.shop.example"}
    env.update({f"RETAIN_SMTP_{name.upper()}": str(value) for name, value in smtp.items()})
    assert not (NO_PROJECT / "retain.toml").exists()
    return load_settings(NO_PROJECT, env=env)


def file_settings(folder: Path) -> Settings:
    return load_settings(NO_PROJECT, env={"RETAIN_EMAIL_TRANSPORT": "file",
                                          "RETAIN_EMAIL_DIR": str(folder),
                                          "RETAIN_EMAIL_FROM": FROM})


def render(source: str, *, header: bool = False, html: bool = False) -> str:
    """A stand-in for the planner's renderer: the only variable these templates use."""
    return source.replace("{{ unsubscribe_url }}", UNSUBSCRIBE)


def payload(key: str = "winback:ann:o1:0:0", *, email: str = "ann@example.com",
            name: str | None = "Ann Lee", template: str | None = "winback",
            body: str | None = None) -> dict[str, Any]:
    connector = EmailConnector()
    connector.from_address = FROM
    params = EmailParams(subject="We miss you, Ann", template=template, body=body)
    frozen = connector.payload(params, render, lambda name: render(FILES[name])
                               if name in FILES else None, DUE, key=key,
                               customer={"customer_id": "ann", "email": email, "name": name},
                               unsubscribe_url=UNSUBSCRIBE)
    return json.loads(json.dumps(frozen))  # what the outbox stores is plain JSON


def delivery(frozen: dict[str, Any], *, action_id: int = 1, attempt: int = 1) -> Delivery:
    return Delivery(action_id=action_id, key=f"key-{action_id}", customer_id="ann",
                    playbook_id="winback", payload=frozen, as_of=DUE, attempt=attempt)


def run(config: Any,
        body: Callable[[EmailConnector], Awaitable[Any]]) -> Any:
    """Open a connector with `config`, run `body` with it, close it: one dispatch cycle."""
    async def cycle() -> Any:
        connector = EmailConnector()
        await connector.open(config)
        try:
            return await body(connector)
        finally:
            await connector.close()
    return asyncio.run(cycle())


def send_one(config: Any, frozen: dict[str, Any]) -> Sent:
    return run(config, lambda connector: connector.send(delivery(frozen)))


def failure(config: Any, frozen: dict[str, Any]) -> Exception:
    try:
        send_one(config, frozen)
    except (TransientError, PermanentError) as exc:
        return exc
    raise AssertionError("the send did not fail")


# --- what arrives --------------------------------------------------------------------------------

def test_a_sent_message_arrives_whole(serve: Callable[..., tuple[Peer, int]]) -> None:
    peer, port = serve()
    sent = send_one(settings(port), payload())
    assert sent.detail == "250 2.0.0 Ok: queued" and sent.writes == ()
    (got,) = peer.received
    assert (got.mail_from, got.rcpt_tos) == ("news@shop.example", ["ann@example.com"])
    message = got.message
    assert str(message["From"]) == FROM
    assert message["To"].addresses[0].addr_spec == "ann@example.com"
    assert message["To"].addresses[0].display_name == "Ann Lee"
    assert message["Subject"] == "We miss you, Ann"
    assert message["Message-ID"] == message_id("winback:ann:o1:0:0", FROM)
    assert message["Date"].datetime == DUE
    lines = got.data.decode().split("\r\n")
    assert f"List-Unsubscribe: <{UNSUBSCRIBE}>" in lines  # one line, however long
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in lines
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    assert f"Unsubscribe: {UNSUBSCRIBE}" in text.get_content()  # type: ignore[attr-defined]
    assert f'<a href="{UNSUBSCRIBE}">' in html.get_content()  # type: ignore[attr-defined]


def test_the_same_payload_sends_the_same_bytes(serve: Callable[..., tuple[Peer, int]]) -> None:
    peer, port = serve()
    frozen = payload()

    async def twice(connector: EmailConnector) -> None:
        await connector.send(delivery(frozen, attempt=1))
        await connector.send(delivery(frozen, attempt=2))

    run(settings(port), twice)
    send_one(settings(port), payload())  # a new payload from the same plan: a later process
    first, second, third = (item.data for item in peer.received)
    assert first == second == third


def test_a_text_only_payload_sends_one_plain_part(
        serve: Callable[..., tuple[Peer, int]]) -> None:
    peer, port = serve()
    send_one(settings(port), payload(template=None, body="Just text"))
    message = peer.received[0].message
    assert message.get_content_type() == "text/plain"
    assert message.get_content().strip() == "Just text"


def test_the_payload_is_the_whole_message_frozen_as_ascii_json() -> None:
    frozen = payload(name="Zoë Núñez", template=None, body="Grüße, 10 € off\n")
    assert frozen["message"].isascii()  # 7-bit: no server needs 8BITMIME; any JSON column
    message = message_from_bytes(frozen["message"].encode(), policy=policy.default)
    assert message["To"].addresses[0].display_name == "Zoë Núñez"
    assert message.get_content() == "Grüße, 10 € off\n"  # type: ignore[attr-defined]
    assert (frozen["from"], frozen["address"], frozen["subject"]) == (
        FROM, "ann@example.com", "We miss you, Ann")
    assert frozen["date"] == "Fri, 04 Dec 2026 09:30:00 +0000"


def test_an_international_address_goes_with_smtputf8(
        serve: Callable[..., tuple[Peer, int]]) -> None:
    peer, port = serve(enable_SMTPUTF8=True)
    send_one(settings(port), payload(email="ann@bücher.example", name="Zoë"))
    (got,) = peer.received
    assert got.rcpt_tos == ["ann@bücher.example"]
    assert "To: Zoë <ann@bücher.example>" in got.data.decode("utf-8").split("\r\n")
    with pytest.raises(TemplateError, match="customer ann: the email cannot be built"):
        payload(email="zoë@example.com")  # Python's email package writes no such local part


def test_a_payload_cannot_carry_a_header_injection() -> None:
    connector = EmailConnector()
    for sender in ("Shop <news@shop.example>\r\nBcc: x@evil.example", "a@b.example\nBcc: x"):
        connector.from_address = sender  # cached parsed headers still refuse line breaks
        with pytest.raises(TemplateError, match="customer ann: the email cannot be built"):
            connector.payload(EmailParams(subject="Hi", body="x"), render, lambda name: None,
                              DUE, key="k", customer={"customer_id": "ann",
                                                      "email": "ann@example.com"},
                              unsubscribe_url=UNSUBSCRIBE)
    with pytest.raises(TemplateError, match="customer ann: To"):
        payload(name="Ann\r\nBcc: x@evil.example")
    with pytest.raises(TemplateError, match="no email address"):
        payload(email="")


# --- failures, as the dispatcher will read them ---------------------------------------------------

def test_451_is_transient_and_the_session_goes_on(
        serve: Callable[..., tuple[Peer, int]]) -> None:
    peer, port = serve(Peer(data_replies=["451 4.3.0 Mail server temporarily rejected message"]))

    async def two(connector: EmailConnector) -> Exception:
        with pytest.raises(TransientError) as caught:
            await connector.send(delivery(payload(), action_id=1))
        await connector.send(delivery(payload("other"), action_id=2))
        return caught.value

    error = run(settings(port), two)
    assert isinstance(error, TransientError) and error.connection is False
    assert "451 4.3.0 Mail server temporarily rejected message" in str(error)
    assert len(peer.received) == 1 and len(peer.sessions) == 1  # RSET, then the same session


def test_550_5_1_1_is_permanent_and_bounces(serve: Callable[..., tuple[Peer, int]]) -> None:
    reply = "550 5.1.1 <ann@example.com>: Recipient address rejected: User unknown"
    _, port = serve(Peer(rcpt_replies={"ann@example.com": reply}))
    error = failure(settings(port), payload())
    assert isinstance(error, PermanentError) and error.suppress == "bounced"
    assert "550 5.1.1 <ann@example.com>: Recipient address rejected: User unknown" in str(error)


def test_a_policy_rejection_of_the_content_is_permanent_without_bouncing(
        serve: Callable[..., tuple[Peer, int]]) -> None:
    _, port = serve(Peer(data_replies=["554 5.7.1 Message rejected as spam"]))
    error = failure(settings(port), payload())
    assert isinstance(error, PermanentError) and error.suppress is None
    assert "554 5.7.1 Message rejected as spam" in str(error)


def test_a_refused_sender_is_never_one_message_s_dead_letter(
        serve: Callable[..., tuple[Peer, int]]) -> None:
    """Every message would be refused alike (RETAIN_EMAIL_FROM, the account): retried, and the
    dispatcher holds the rest of the outbox back."""
    _, port = serve(Peer(mail_reply="553 5.7.1 <news@shop.example>: Sender address rejected"))
    error = failure(settings(port), payload())
    assert isinstance(error, TransientError) and error.connection is True
    assert "refused the sender news@shop.example: 553 5.7.1" in str(error)


def test_421_is_about_the_server(serve: Callable[..., tuple[Peer, int]]) -> None:
    _, port = serve(Peer(rcpt_replies={"ann@example.com": "421 4.7.0 Too many connections"}))
    error = failure(settings(port), payload())
    assert isinstance(error, TransientError) and error.connection is True


def test_a_server_that_is_down_is_a_connection_error() -> None:
    port = free_port()  # nothing listens there
    error = failure(settings(port), payload())
    assert isinstance(error, TransientError) and error.connection is True
    assert f"127.0.0.1:{port}" in str(error)


def test_a_server_that_never_answers_times_out_as_a_connection_error() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) but never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = int(silent.getsockname()[1])
        error = failure(settings(port, timeout=0.5), payload())
    assert isinstance(error, TransientError) and error.connection is True
    assert "timed out" in str(error)


def test_535_authentication_failure_is_a_connection_error(
        serve: Callable[..., tuple[Peer, int]]) -> None:
    peer, port = serve(auth=True)
    error = failure(settings(port, username="shop", password="wrong"), payload())
    assert isinstance(error, TransientError) and error.connection is True
    assert "535" in str(error) and "'shop'" in str(error)
    assert peer.received == []
    send_one(settings(port, username="shop", password="right"), payload())
    assert peer.logins[-1] == "shop" and len(peer.received) == 1


def test_starttls_required_but_not_offered_is_refused_before_auth(
        serve: Callable[..., tuple[Peer, int]]) -> None:
    peer, port = serve(auth=True)  # offers AUTH in plain text, no STARTTLS
    error = failure(settings(port, tls="starttls", username="shop", password="right"), payload())
    assert isinstance(error, TransientError) and error.connection is True
    assert "does not offer STARTTLS" in str(error)
    assert peer.logins == [] and peer.received == []


@pytest.mark.parametrize("mode", ["tls", "starttls"])
def test_a_self_signed_certificate_fails_with_validation_on(
        serve: Callable[..., tuple[Peer, int]], ca: trustme.CA, mode: str) -> None:
    context = server_tls(ca)
    tls = {"ssl_context": context} if mode == "tls" else {"tls_context": context,
                                                          "require_starttls": True}
    peer, port = serve(**tls)
    error = failure(settings(port, tls=mode), payload())
    assert isinstance(error, TransientError) and error.connection is True
    assert "TLS" in str(error) and "certificate" in str(error)
    assert "validate_certs" in str(error)
    send_one(settings(port, tls=mode, validate_certs=False), payload())
    assert len(peer.received) == 1


@pytest.mark.parametrize("mode", ["tls", "starttls"])
def test_a_trusted_ca_is_validated_and_sent(serve: Callable[..., tuple[Peer, int]],
                                            ca: trustme.CA, mode: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    context = server_tls(ca)
    tls = {"ssl_context": context} if mode == "tls" else {"tls_context": context,
                                                          "require_starttls": True}
    peer, port = serve(auth=True, **tls)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    send_one(settings(port, tls=mode, username="shop", password="right"), payload())
    assert peer.logins == ["shop"] and len(peer.received) == 1


def test_a_lost_ack_is_retried_with_the_same_message(
        serve: Callable[..., tuple[Peer, int]]) -> None:
    """RFC 1047: the server stored the message, then the connection dropped before its 250.
    The retry (a later attempt) delivers it again, byte for byte, with the same Message-ID."""
    peer, port = serve(Peer(drop_after_data=1))
    frozen = payload()

    async def attempts(connector: EmailConnector) -> Exception:
        with pytest.raises(TransientError) as caught:
            await connector.send(delivery(frozen, attempt=1))
        await connector.send(delivery(frozen, attempt=2))  # the broken session is not reused
        return caught.value

    error = run(settings(port), attempts)
    assert isinstance(error, TransientError) and error.connection is True
    assert "same Message-ID" in str(error)
    first, second = peer.received
    assert first.data == second.data and first.peer != second.peer
    assert first.message["Message-ID"] == message_id("winback:ann:o1:0:0", FROM)


def test_messages_reuse_at_most_connections_sessions(
        serve: Callable[..., tuple[Peer, int]]) -> None:
    peer, port = serve()

    async def many(connector: EmailConnector) -> int:
        assert connector.concurrency == 3
        await asyncio.gather(*(connector.send(delivery(payload(f"k{i}"), action_id=i))
                               for i in range(30)))
        for i in range(30, 40):
            await connector.send(delivery(payload(f"k{i}"), action_id=i))
        return connector._transport.opened  # type: ignore[union-attr]

    opened = run(settings(port, connections=3), many)
    assert len(peer.received) == 40
    assert len(peer.sessions) <= 3 and opened == len(peer.sessions)


def test_a_session_the_server_closed_while_idle_is_replaced(
        serve: Callable[..., tuple[Peer, int]]) -> None:
    peer, port = serve(timeout=0.3)  # aiosmtpd closes an idle session after 0.3 s

    async def pause(connector: EmailConnector) -> None:
        await connector.send(delivery(payload("k1")))
        await asyncio.sleep(0.8)
        await connector.send(delivery(payload("k2")))

    run(settings(port), pause)
    assert len(peer.received) == 2 and len(peer.sessions) == 2


def test_a_reused_session_a_middlebox_forgot_silently_is_replaced(
        serve: Callable[..., tuple[Peer, int]]) -> None:
    """A NAT or load balancer forgets an idle flow without a word (the daemon keeps its sessions
    open between passes): the next MAIL on that session gets no answer. Nothing was sent on it,
    so it is replaced once, like one the server closed; it used to time out as the connector's
    outage (down for the pass, and the row charged an attempt)."""
    peer, port = serve()

    async def cycle() -> None:
        flows: list[dict[str, bool]] = []

        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
            flow = {"alive": True}
            flows.append(flow)

            async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
                while data := await source.read(65536):
                    if flow["alive"]:  # a forgotten flow: bytes go nowhere, nothing is closed
                        sink.write(data)
                        await sink.drain()

            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer),
                                 return_exceptions=True)

        proxy = await asyncio.start_server(forward, "127.0.0.1", 0)
        connector = EmailConnector()
        await connector.open(settings(proxy.sockets[0].getsockname()[1], timeout=0.5))
        try:
            await connector.send(delivery(payload("k1")))
            flows[0]["alive"] = False
            await connector.send(delivery(payload("k2"), action_id=2))
        finally:
            await connector.close()
            proxy.close()

    asyncio.run(cycle())
    assert len(peer.received) == 2 and len(peer.sessions) == 2


# --- configuration ------------------------------------------------------------------------------

def test_without_a_transport_sending_names_the_settings() -> None:
    config = load_settings(NO_PROJECT, env={"RETAIN_EMAIL_FROM": FROM})
    with pytest.raises(PermanentError, match="RETAIN_SMTP_HOST.*RETAIN_EMAIL_TRANSPORT"):
        asyncio.run(EmailConnector().open(config))


def test_email_retries_eight_times_over_about_a_day() -> None:
    attempts, first, growth = EmailConnector.retry
    assert (attempts, first, growth) == (8, 120.0, 2.8)
    total = sum(first * growth ** i for i in range(attempts - 1))
    assert 20 * 3600 < total < 30 * 3600


def test_the_file_transport_writes_readable_eml_files(tmp_path: Path) -> None:
    folder = tmp_path / "mail" / "out"
    config = file_settings(folder)
    frozen, other = payload(), payload("other")

    async def three(connector: EmailConnector) -> list[Sent]:
        return [await connector.send(delivery(frozen)), await connector.send(delivery(frozen)),
                await connector.send(delivery(other, action_id=2))]

    sent = run(config, three)
    files = sorted(folder.iterdir())
    assert len(files) == 2  # the re-send overwrote its own file
    path = folder / eml_name(frozen["message_id"])
    assert sent[0].detail == f"written to {path}"
    with path.open("rb") as handle:
        message = message_from_bytes(handle.read(), policy=policy.default)
    assert message["Message-ID"] == frozen["message_id"]
    assert message["Subject"] == "We miss you, Ann"
    assert message.get_body(("html",)) is not None  # type: ignore[attr-defined]
