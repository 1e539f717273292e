"""Webhook sending against a real local HTTP server that verifies Standard Webhooks signatures.

The receiver is a stdlib `ThreadingHTTPServer` on 127.0.0.1; it checks every request with the
`standardwebhooks` library, records it, and answers what the test scripts (500, 429 with
Retry-After, 410, 400, a slow answer...). Payloads are frozen by the connector's own `payload`
through the planner's `Renderer`, as a live run does (RELIABILITY 12, 13, 30).
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote

import pytest
import sqlalchemy as sa
from outbox_support import PAYLOAD, insert_action
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from connectors.base import Delivery, Sent, Write
from connectors.webhook import WebhookConnector, WebhookParams, expand_env_template
from connectors.webhook_send import retry_after, signing_key
from engine.errors import PermanentError, TemplateError, TransientError
from engine.format.templates import make_environment
from engine.plan.planner import Renderer

SECRET = "whsec_" + base64.b64encode(b"a shared secret of 32 bytes!!!!!").decode()
TOKEN = "s3cr3t-token-value"
KEY = "winback/C1/0.0/0123456789abcdef0123456789abcdef"
AS_OF = datetime(2011, 12, 10, 9, 0, tzinfo=UTC)  # business time: never the webhook-timestamp


@dataclass
class Answer:
    """What the receiver says to one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"ok": true}'
    delay: float = 0.0
    echo: bool = False  # answer with the request's headers (a receiver that echoes)
    trickle: float = 0.0  # seconds between the body's bytes (a slow-drip endpoint)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    port: int  # the client's port: the same one means a reused connection


class Receiver:
    """A local webhook endpoint: verifies, records, and answers from a script (then 200)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: list[Answer] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is visible

            def do_POST(self) -> None:
                receiver.handle(self)

            do_PUT = do_PATCH = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        headers = dict(handler.headers.items())
        try:
            Webhook(SECRET).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        self.requests.append(Received(handler.command, handler.path, headers, body, verified,
                                      handler.client_address[1]))
        answer = self.script.pop(0) if self.script else Answer()
        if answer.delay:
            time.sleep(answer.delay)
        echoed = {"Authorization": headers.get("Authorization"), **headers}
        reply = json.dumps(echoed).encode() if answer.echo else answer.body
        try:
            handler.send_response(answer.status)
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(reply)))
            handler.end_headers()
            if not answer.trickle:
                handler.wfile.write(reply)
            for byte in reply if answer.trickle else b"":
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(answer.trickle)
        except OSError:  # the client gave up (a timeout test)
            pass

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    server = Receiver()
    monkeypatch.setenv("HOOK_URL", server.url)
    monkeypatch.setenv("HOOK_TOKEN", TOKEN)
    yield server
    server.close()


def settings(secret: str | None = SECRET) -> SimpleNamespace:
    """A stand-in for engine.config.Settings with the one field the webhook reads."""
    return SimpleNamespace(webhook_secret=SecretStr(secret) if secret is not None else None)


CUSTOMER = {"customer_id": "C1", "name": "Zoë", "email": "zoe@example.com"}
PARAMS = {"url": "${HOOK_URL}/customers/{{ customer.customer_id }}",
          "headers": {"Authorization": "Bearer ${HOOK_TOKEN}", "X-Name": "{{ customer.name }}"},
          "body": {"customer": "{{ customer.customer_id }}", "name": "{{ customer.name }}",
                   "play": "winback", "n": 2, "tags": ["a", None]}}


def freeze(params: dict[str, Any] = PARAMS, customer: dict[str, Any] = CUSTOMER,
           key: str = KEY) -> dict[str, Any]:
    """The payload a live run commits for this customer (through the planner's Renderer)."""
    renderer = Renderer(make_environment(None), {"customer": customer}, lambda name: False)
    return WebhookConnector().payload(WebhookParams.model_validate(params), renderer.inline,
                                      renderer.file, AS_OF, key=key, customer=customer,
                                      unsubscribe_url="http://127.0.0.1:8765/unsubscribe?token=t")


def delivery(payload: dict[str, Any], key: str = KEY, attempt: int = 1) -> Delivery:
    return Delivery(action_id=1, key=key, customer_id="C1", playbook_id="winback",
                    payload=payload, as_of=AS_OF, attempt=attempt)


def send_all(payloads: list[dict[str, Any]], *, secret: str | None = SECRET,
             timeout: float | None = None, key: str = KEY) -> list[Sent | Exception]:
    """Open the connector, send each payload in turn (one cycle), close; outcomes in order."""
    async def cycle() -> list[Sent | Exception]:
        connector = WebhookConnector()
        if timeout is not None:
            connector.timeout = timeout
        await connector.open(settings(secret))
        outcomes: list[Sent | Exception] = []
        try:
            for number, payload in enumerate(payloads, 1):
                try:
                    outcomes.append(await connector.send(delivery(payload, key, number)))
                except (TransientError, PermanentError) as error:
                    outcomes.append(error)
        finally:
            await connector.close()
        return outcomes

    return asyncio.run(cycle())


def sent(outcome: Sent | Exception) -> str | None:
    """The detail of a delivered webhook (which also records a webhook_sent event)."""
    assert isinstance(outcome, Sent), outcome
    assert [write.values["type"] for write in outcome.writes] == ["webhook_sent"]
    return outcome.detail


def send_one(payload: dict[str, Any], **options: Any) -> Sent | Exception:
    return send_all([payload], **options)[0]


# --- signed, expanded at send ---------------------------------------------------------------------


def test_payload_keeps_variables_unexpanded_and_no_secret(receiver: Receiver) -> None:
    payload = freeze()
    assert payload == {
        "method": "POST", "url": "${HOOK_URL}/customers/C1",
        "headers": {"Authorization": "Bearer ${HOOK_TOKEN}", "X-Name": "Zoë"},
        "body": {"customer": "C1", "name": "Zoë", "play": "winback", "n": 2,
                 "tags": ["a", None]}}
    assert TOKEN not in json.dumps(payload) and receiver.url not in json.dumps(payload)


def test_a_sent_webhook_is_signed_expanded_and_verified(receiver: Receiver) -> None:
    before = time.time()
    outcome = send_one(freeze())
    assert outcome == Sent(detail="HTTP 200", writes=(Write("event", {
        "type": "webhook_sent", "event_id": KEY,
        "properties": {"playbook": "winback", "action": 1, "method": "POST",
                       "url": "${HOOK_URL}/customers/C1", "status": 200}}),))
    [got] = receiver.requests
    assert got.verified
    assert (got.method, got.path) == ("POST", "/customers/C1")
    assert got.headers["Authorization"] == f"Bearer {TOKEN}"
    assert got.headers["X-Name"].encode("latin-1").decode() == "Zoë"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Idempotency-Key"] == got.headers["webhook-id"] == KEY
    # the real clock, not the --as-of business time (receivers reject old timestamps)
    assert before - 1 <= int(got.headers["webhook-timestamp"]) <= time.time() + 1
    assert json.loads(got.body) == {"customer": "C1", "n": 2, "name": "Zoë", "play": "winback",
                                    "tags": ["a", None]}
    assert got.body == '{"customer":"C1","n":2,"name":"Zoë","play":"winback","tags":["a",null]}'\
        .encode()


def test_a_signature_made_with_another_secret_fails_verification(receiver: Receiver) -> None:
    other = "whsec_" + base64.b64encode(b"another secret, not the receiver").decode()
    assert sent(send_one(freeze(), secret=other)) == "HTTP 200"
    assert [r.verified for r in receiver.requests] == [False]


def test_retry_keeps_the_webhook_id_with_a_fresh_timestamp(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    import connectors.webhook_send as webhook_send

    clock = iter([datetime.now(UTC), datetime.now(UTC) + timedelta(seconds=40)])
    monkeypatch.setattr(webhook_send, "utcnow", lambda: next(clock))
    receiver.script = [Answer(500, body=b"database down")]
    first, second = send_all([freeze(), freeze()])
    assert isinstance(first, TransientError) and not first.connection
    assert str(first) == ("HTTP 500 Internal Server Error from POST ${HOOK_URL}/customers/C1: "
                          "database down")
    assert sent(second) == "HTTP 200"
    one, two = receiver.requests
    assert one.verified and two.verified
    assert one.headers["webhook-id"] == two.headers["webhook-id"] == KEY
    assert one.headers["Idempotency-Key"] == two.headers["Idempotency-Key"] == KEY
    assert int(two.headers["webhook-timestamp"]) - int(one.headers["webhook-timestamp"]) == 40
    assert one.body == two.body
    assert one.port == two.port  # one client, its connection reused


def test_customer_data_is_never_expanded(receiver: Receiver) -> None:
    sneaky = {**CUSTOMER, "customer_id": "${HOOK_TOKEN}", "name": "$5 ${HOOK_TOKEN} $$"}
    payload = freeze(customer=sneaky)
    assert payload["url"] == "${HOOK_URL}/customers/$${HOOK_TOKEN}"
    assert payload["headers"]["X-Name"] == "$$5 $${HOOK_TOKEN} $$$$"
    assert sent(send_one(payload)) == "HTTP 200"
    [got] = receiver.requests
    assert got.verified
    assert unquote(got.path) == "/customers/${HOOK_TOKEN}"
    assert got.headers["X-Name"] == "$5 ${HOOK_TOKEN} $$"
    assert got.headers["Authorization"] == f"Bearer {TOKEN}"  # the author's reference is


@pytest.mark.parametrize(("frozen", "expanded"), [
    ("${A}", "1"), ("$${A}", "${A}"), ("$$${A}", "$1"), ("$$$$", "$$"), ("x${A}y$$z", "x1y$z"),
])
def test_env_templates_read_doubled_dollars_as_one(frozen: str, expanded: str) -> None:
    assert expand_env_template(frozen, {"A": "1"}) == expanded


def test_a_non_ascii_key_is_sent_percent_encoded_and_still_verifies(receiver: Receiver) -> None:
    key = "winback/Zoë 7/0.0/0123456789abcdef0123456789abcdef"
    assert sent(send_one(freeze(key=key), key=key)) == "HTTP 200"
    [got] = receiver.requests
    assert got.verified
    assert got.headers["webhook-id"] == "winback/Zo%C3%AB%207/0.0/0123456789abcdef0123456789abcdef"


def test_put_and_patch_are_sent_as_written(receiver: Receiver) -> None:
    put, patch = ({**PARAMS, "method": method} for method in ("PUT", "PATCH"))
    assert [sent(x) for x in send_all([freeze(put), freeze(patch)])] == ["HTTP 200"] * 2
    assert [r.method for r in receiver.requests] == ["PUT", "PATCH"]


def test_a_body_less_webhook_sends_json_null(receiver: Receiver) -> None:
    assert sent(send_one(freeze({"url": "${HOOK_URL}/ping"}))) == "HTTP 200"
    assert receiver.requests[0].body == b"null" and receiver.requests[0].verified


# --- what the receiver answers --------------------------------------------------------------------


@pytest.mark.parametrize(("status", "kind", "connection"), [
    (400, PermanentError, None), (410, PermanentError, None), (404, PermanentError, None),
    (422, PermanentError, None), (302, PermanentError, None),
    (408, TransientError, False), (409, TransientError, False), (425, TransientError, False),
    (500, TransientError, False), (502, TransientError, True), (504, TransientError, True),
    (401, TransientError, True), (403, TransientError, True),
])
def test_each_answer_class(receiver: Receiver, status: int, kind: type[Exception],
                           connection: bool | None) -> None:
    receiver.script = [Answer(status, headers={"Location": "https://elsewhere.example/"})]
    error = send_one(freeze())
    assert type(error) is kind
    assert str(error).startswith(f"HTTP {status} ")
    assert "from POST ${HOOK_URL}/customers/C1" in str(error)
    if isinstance(error, TransientError):
        assert error.connection is connection and error.retry_after is None


def test_a_redirect_is_not_followed(receiver: Receiver) -> None:
    receiver.script = [Answer(301, headers={"Location": f"{receiver.url}/moved"}, body=b"")]
    error = send_one(freeze())
    assert isinstance(error, PermanentError)
    assert "(redirect to ${HOOK_URL}/moved not followed: update the url)" in str(error)
    assert len(receiver.requests) == 1


def test_429_honours_retry_after_in_seconds(receiver: Receiver) -> None:
    receiver.script = [Answer(429, headers={"Retry-After": "120"}, body=b"slow down")]
    error = send_one(freeze())
    assert isinstance(error, TransientError) and error.connection
    assert error.retry_after == timedelta(seconds=120)
    assert str(error) == ("HTTP 429 Too Many Requests from POST ${HOOK_URL}/customers/C1: "
                          "slow down")


def test_429_honours_retry_after_as_an_http_date(receiver: Receiver) -> None:
    when = datetime.now(UTC) + timedelta(seconds=90)
    receiver.script = [Answer(429, headers={"Retry-After": format_datetime(when, usegmt=True)})]
    error = send_one(freeze())
    assert isinstance(error, TransientError) and error.retry_after is not None
    assert timedelta(seconds=85) <= error.retry_after <= timedelta(seconds=91)


def test_503_without_retry_after_leaves_the_delay_to_the_backoff(receiver: Receiver) -> None:
    receiver.script = [Answer(503, body=b"")]
    error = send_one(freeze())
    assert isinstance(error, TransientError) and error.connection and error.retry_after is None
    assert str(error) == "HTTP 503 Service Unavailable from POST ${HOOK_URL}/customers/C1"


def test_retry_after_values() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert retry_after("30", now) == timedelta(seconds=30)
    assert retry_after(" 0 ", now) == timedelta(0)
    assert retry_after("Thu, 01 Jan 2026 12:02:00 GMT", now) == timedelta(minutes=2)
    assert retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == timedelta(0)  # already past
    assert retry_after("9999999", now) == timedelta(days=1)  # capped
    assert retry_after("soon", now) is None
    assert retry_after("-5", now) is None
    assert retry_after(None, now) is None


def test_a_retry_after_a_receiver_makes_up_never_breaks_the_send() -> None:
    """The header is the receiver's text: a number too large for a timedelta is a day, and
    digits that are not ASCII (`²`, read from latin-1) are unreadable, never an exception."""
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert retry_after("9" * 30, now) == timedelta(days=1)
    assert retry_after("9" * 5000, now) == timedelta(days=1)  # past int()'s 4300 digits
    assert retry_after("\u00b2", now) is None
    assert retry_after("\u0663\u0660", now) is None  # Arabic-Indic 30


def test_a_slow_endpoint_times_out_and_is_retried(receiver: Receiver) -> None:
    receiver.script = [Answer(200, delay=1.5)]
    started = time.monotonic()
    error = send_one(freeze(), timeout=0.3)
    assert time.monotonic() - started < 1.4
    assert isinstance(error, TransientError) and not error.connection
    assert str(error) == "no answer within 0.3 s from POST ${HOOK_URL}/customers/C1"


def test_an_endpoint_that_drips_its_answer_is_cut_off_and_retried(receiver: Receiver) -> None:
    """Each byte comes within the read timeout, so only a deadline on the whole exchange stops
    a receiver from holding a send (and its lease) for as long as it likes."""
    receiver.script = [Answer(200, body=b"x" * 40, trickle=0.1)]  # 4 s in all
    started = time.monotonic()
    error = send_one(freeze(), timeout=0.3)
    assert time.monotonic() - started < 2.5
    assert isinstance(error, TransientError) and not error.connection
    assert str(error) == "no whole answer within 1.2 s from POST ${HOOK_URL}/customers/C1"


def test_a_refused_connection_is_a_connection_error(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = Receiver()
    closed.close()  # a port nobody listens on any more
    monkeypatch.setenv("HOOK_URL", closed.url)
    error = send_one(freeze())
    assert isinstance(error, TransientError) and error.connection
    assert str(error).startswith("cannot connect to POST ${HOOK_URL}/customers/C1")
    assert closed.url not in str(error)


def test_an_echoed_secret_never_reaches_the_error_text(receiver: Receiver) -> None:
    receiver.script = [Answer(400, echo=True)]
    error = send_one(freeze())
    assert isinstance(error, PermanentError)
    assert "Bearer ${HOOK_TOKEN}" in str(error)
    assert TOKEN not in str(error) and len(str(error)) < 300


# --- refused before sending -----------------------------------------------------------------------


def test_a_missing_variable_is_named_and_nothing_is_sent(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOOK_TOKEN")
    error = send_one(freeze())  # this dispatcher's configuration: retried, every webhook waits
    assert isinstance(error, TransientError) and error.connection
    assert str(error) == ("webhook header Authorization of POST ${HOOK_URL}/customers/C1: "
                          "environment variable HOOK_TOKEN is not set")
    assert receiver.requests == []


def test_a_secret_with_a_line_break_is_refused_without_showing_it(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_TOKEN", f"{TOKEN}\r\nX-Evil: 1")
    error = send_one(freeze())
    assert isinstance(error, PermanentError) and TOKEN not in str(error)
    assert str(error) == ("webhook header Authorization of POST ${HOOK_URL}/customers/C1: "
                          "header value contains a line break (header injection)")
    assert receiver.requests == []


def test_a_url_that_expands_to_no_http_url_is_refused_without_showing_it(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_URL", f"ftp://user:{TOKEN}@crm.example")
    error = send_one(freeze())
    assert isinstance(error, PermanentError) and TOKEN not in str(error)
    assert str(error) == ("webhook url of POST ${HOOK_URL}/customers/C1 is not an http(s) url "
                          "after expanding ${HOOK_URL}")


@pytest.mark.parametrize("secret", [None, "", "whsec_", "whsec_not*base64!"])
def test_without_a_usable_secret_nothing_is_sent(receiver: Receiver, secret: str | None) -> None:
    error = send_one(freeze(), secret=secret)  # configuration: retried, never dead-lettered
    assert isinstance(error, TransientError) and error.connection
    assert "RETAIN_WEBHOOK_SECRET" in str(error)
    assert secret is None or not secret[6:] or secret[6:] not in str(error)
    assert receiver.requests == []


def test_signing_key_takes_the_secret_with_or_without_its_prefix() -> None:
    key = b"a shared secret of 32 bytes!!!!!"
    unpadded = base64.b64encode(key).decode().rstrip("=")
    assert signing_key(SECRET) == signing_key(SECRET[6:]) == signing_key(unpadded) == key


def test_send_before_open_is_refused() -> None:
    with pytest.raises(PermanentError, match="not opened"):
        asyncio.run(WebhookConnector().send(delivery(freeze())))


# --- shape ----------------------------------------------------------------------------------------


def test_retries_six_times_over_about_an_hour() -> None:
    attempts, first, growth = WebhookConnector.retry
    waits = [first * growth**n for n in range(attempts - 1)]
    assert attempts == 6 and waits[0] <= 60
    assert timedelta(minutes=50) <= timedelta(seconds=sum(waits)) <= timedelta(minutes=75)
    assert WebhookConnector.concurrency == 8 and WebhookConnector.timeout == 5.0


def test_concurrent_sends_share_one_bounded_client(receiver: Receiver) -> None:
    receiver.script = [Answer(delay=0.2) for _ in range(16)]

    async def cycle() -> list[Sent]:
        connector = WebhookConnector()
        await connector.open(settings())
        try:
            return await asyncio.gather(*(connector.send(delivery(freeze(key=f"k{n}"), f"k{n}"))
                                          for n in range(16)))
        finally:
            await connector.close()

    started = time.monotonic()
    assert [sent(x) for x in asyncio.run(cycle())] == ["HTTP 200"] * 16
    assert time.monotonic() - started < 2.5  # 8 at a time: about 0.4 s, not 3.2 s
    assert all(r.verified for r in receiver.requests)
    assert len({r.port for r in receiver.requests}) <= WebhookConnector.concurrency


def test_loading_the_connector_does_not_import_httpx() -> None:
    code = ("import sys\nfrom engine.format.registry import load_connectors\n"
            "load_connectors()\nprint('httpx' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_missing_variable_message_names_it(receiver: Receiver) -> None:
    with pytest.raises(TemplateError, match="environment variable NOPE is not set"):
        expand_env_template("${NOPE}", {})


def test_a_payload_read_back_from_the_outbox_sends_the_same_bytes(
        receiver: Receiver, db: sa.Engine) -> None:
    """Both databases: the frozen payload survives the outbox (PostgreSQL's jsonb reorders
    keys) and every attempt sends the same bytes, signed, with nothing secret stored."""
    body = {"zeta": "{{ customer.name }}", "a": {"z": 1, "b": [True, 1.5]}, "mid": "x"}
    frozen = freeze({**PARAMS, "body": body})
    with db.begin() as connection:
        insert_action(
            connection, playbook_id="winback", customer_id="C1", connector="webhook",
            payload=frozen, idempotency_key=KEY, status="planned", created_at=AS_OF)
    with db.connect() as connection:
        stored, raw = connection.execute(
            sa.select(PAYLOAD, sa.cast(PAYLOAD, sa.Text))).one()
    assert TOKEN not in raw and receiver.url not in raw
    assert [sent(x) for x in send_all([stored, frozen])] == ["HTTP 200"] * 2
    one, two = receiver.requests
    assert one.verified and two.verified and one.body == two.body
    assert one.body == '{"a":{"b":[true,1.5],"z":1},"mid":"x","zeta":"Zoë"}'.encode()


def test_the_plan_shows_the_same_fields_and_fails_on_a_header_as_the_commit_would() -> None:
    renderer = Renderer(make_environment(None), {"customer": CUSTOMER}, lambda name: False)
    connector = WebhookConnector()
    planned = connector.plan(WebhookParams.model_validate(PARAMS), renderer.inline,
                             renderer.file, AS_OF)
    assert planned == {"method": "POST", "url": "${HOOK_URL}/customers/C1",
                       "body": freeze()["body"]}
    broken = WebhookParams.model_validate({**PARAMS, "headers": {"X-Tier": "{{ customer.tier }}"}})
    with pytest.raises(TemplateError):
        connector.plan(broken, renderer.inline, renderer.file, AS_OF)
