"""The HTTP side of the `webhook` connector: expand, sign, send, and judge the answer.

Imported only when a dispatch opens the connector (connectors/webhook.py), so loading the
connector for `retain validate` does not import httpx.

Signing follows the Standard Webhooks specification, so receivers verify with its libraries:
`webhook-id` is the action's idempotency key (the same on every retry), `webhook-timestamp` the
real-clock second of this attempt (also under `--as-of`: receivers reject old timestamps), and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed with the
base64-decoded part of `RETAIN_WEBHOOK_SECRET` (`whsec_<base64>`). `Idempotency-Key` carries the
key too. Without a secret nothing is sent: a receiver that verifies cannot accept an unsigned
call, so each action is retried (connection=True: the whole cycle's webhooks wait) with a message
naming RETAIN_WEBHOOK_SECRET; `retain run` refuses to commit webhooks without it.

How an answer is judged (the dispatcher retries a `TransientError` with backoff, dead-letters a
`PermanentError`; `connection=True` means the endpoint or the account failed, not this action,
so the dispatcher stops calling it for the cycle without using up other actions' attempts):

| answer                                     | outcome                                       |
|--------------------------------------------|-----------------------------------------------|
| 2xx                                        | sent (`HTTP 200`), a `webhook_sent` event     |
| 429, 503                                   | retry after `Retry-After` (at most a day), connection |
| 408, 409, 425, 500, 501, 505-599           | retry                                         |
| 502, 504, 401, 403                         | retry, connection (a gateway, a revoked token) |
| 3xx (redirects are not followed), 400, 410, other 4xx | dead-letter                        |
| connect error or connect timeout           | retry, connection                             |
| read/write timeout, connection dropped     | retry                                         |
| no whole answer within 4x the timeout      | retry (an endpoint that drips its answer)     |
| a `${VAR}` missing here (configuration)    | retry, connection, naming the variable        |
| a bad url or header                        | dead-letter, naming the url or header         |

Error texts carry the status, the url as frozen (`${VAR}` unexpanded) and the start of the
response body, with any expanded value replaced by its `${NAME}`, so no secret reaches the
database even when a receiver echoes the request back.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from connectors.base import Delivery, Sent, Write
from connectors.webhook import env_template_names, expand_env_template
from engine import PermanentError, TemplateError, TransientError, header_problem, utcnow

SECRET_ENV = "RETAIN_WEBHOOK_SECRET"
WEBHOOK_SENT = "webhook_sent"  # an engine event type (engine/store/facts.py), never activity
SECRET_PREFIX = "whsec_"
MAX_RETRY_AFTER = timedelta(days=1)
READ_BYTES = 65536
EXCERPT_CHARS = 200
REDACT_MIN = 4
DEADLINE_FACTOR = 4
"""The whole exchange may take this many timeouts: connect, write, wait, read. httpx's timeouts
are per step (between two reads), so an endpoint sending a byte now and then would otherwise
hold a send, and its lease, for as long as it likes."""
RETRY = frozenset({408, 409, 425})
CONNECTION = frozenset({401, 403, 429, 502, 503, 504})
_SAFE_ID = string.ascii_letters + string.digits + "-._~/:@!$&'()*+,;="
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def signing_key(secret: str | None) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (the prefix may be left out).

    Raises `PermanentError` naming RETAIN_WEBHOOK_SECRET, never showing its value.
    """
    if not secret:
        raise PermanentError(f"{SECRET_ENV} is not set: webhooks are signed (Standard Webhooks) "
                             f"and a receiver that verifies cannot accept an unsigned call")
    text = secret.strip().removeprefix(SECRET_PREFIX).rstrip("=")
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise PermanentError(f"{SECRET_ENV} is not a Standard Webhooks secret: expected "
                             f"{SECRET_PREFIX} followed by base64")
    return key


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of id.timestamp.body."""
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def webhook_id(key: str) -> str:
    """The idempotency key as a header value: as is when it is plain ASCII (the usual case),
    else with the other characters percent-encoded, the same on every attempt."""
    return quote(key, safe=_SAFE_ID)


def encode_body(body: Any) -> bytes:
    """The request body, serialized once: compact JSON with sorted keys, UTF-8.

    Sorted keys make the bytes the same whatever order the database kept the payload's keys in
    (PostgreSQL's jsonb reorders them), so a re-send is byte-identical on both databases.
    """
    try:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                          allow_nan=False)
    except (TypeError, ValueError) as error:
        raise PermanentError(f"the webhook body is not JSON: {error}") from None
    return text.encode()


def retry_after(value: str | None, now: datetime) -> timedelta | None:
    """`Retry-After` (seconds or an HTTP date) as a delay from `now`, at most a day; None when
    absent or unreadable, so the backoff decides."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # `²` is a digit to str.isdigit, not to int()
        # 10+ digits is past the cap anyway: timedelta would overflow, int() refuse 4,300+
        delay = timedelta(seconds=int(text)) if len(text) < 10 else MAX_RETRY_AFTER
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        delay = max(when - now, timedelta(0))
    return min(delay, MAX_RETRY_AFTER)


@dataclass(frozen=True)
class Request:
    """One attempt, expanded and signed; `where` names it in messages without any secret."""

    method: str
    url: str
    headers: list[tuple[str, bytes]]
    body: bytes
    where: str
    values: Mapping[str, str]  # the expanded variables: redacted from every message

    def redact(self, text: str) -> str:
        """`text` with every expanded value replaced by its `${NAME}`, longest first (values
        under REDACT_MIN characters are no secrets, and replacing them would garble the text)."""
        for name, value in sorted(self.values.items(), key=lambda item: -len(item[1])):
            if len(value) >= REDACT_MIN:
                text = text.replace(value, "${" + name + "}")
        return text


def build_request(payload: Mapping[str, Any], key: str, env: Mapping[str, str],
                  secret_key: bytes, timestamp: int) -> Request:
    """The frozen payload made into one signed request; `PermanentError` for a missing
    variable, a url that is not http(s) or a header value that may not be sent."""
    method, frozen_url = str(payload["method"]), str(payload["url"])
    where = f"{method} {frozen_url.replace('$$', '$')}"
    frozen_headers: Mapping[str, str] = payload.get("headers") or {}
    in_url = env_template_names(frozen_url)
    names = in_url + [name for value in frozen_headers.values()
                      for name in env_template_names(value)]
    values = {name: env[name] for name in names if env.get(name)}
    url = _expand(frozen_url, env, f"webhook url of {where}")
    if not re.match(r"https?://", url, re.IGNORECASE) or _CONTROL.search(url):
        expanded = f" after expanding {', '.join('${' + n + '}' for n in in_url)}" if in_url else ""
        raise PermanentError(f"webhook url of {where} is not an http(s) url{expanded}")
    body = encode_body(payload.get("body"))
    merged = {"content-type": ("Content-Type", b"application/json")}
    for name, frozen in frozen_headers.items():
        value = _expand(frozen, env, f"webhook header {name} of {where}")
        if problem := header_problem(value) or ("control character" if _CONTROL.search(value)
                                                 else None):
            raise PermanentError(f"webhook header {name} of {where}: {problem}")
        merged[name.lower()] = (name, value.encode())
    hook_id = webhook_id(key)
    for name, text in (("Idempotency-Key", hook_id), ("webhook-id", hook_id),
                       ("webhook-timestamp", str(timestamp)),
                       ("webhook-signature", sign(secret_key, hook_id, timestamp, body))):
        merged[name.lower()] = (name, text.encode())
    return Request(method, url, list(merged.values()), body, where, values)


def _expand(frozen: str, env: Mapping[str, str], what: str) -> str:
    """`${VAR}` from this process's environment. A missing variable is this dispatcher's
    configuration, not the action's fault: retried (connection=True, so the other webhooks of
    the cycle wait too) rather than dead-lettering every webhook that names it."""
    try:
        return expand_env_template(frozen, env)
    except TemplateError as error:
        raise TransientError(f"{what}: {error}", connection=True) from None


def judge(request: Request, status: int, reason: str, headers: httpx.Headers,
          excerpt: str) -> Sent:
    """`Sent` for a 2xx answer, else the error that says whether to retry (module docstring)."""
    if 200 <= status < 300:
        return Sent(detail=f"HTTP {status}")
    text = f"HTTP {status} {reason} from {request.where}".rstrip()
    if 300 <= status < 400:
        location = headers.get("location", "")
        text += f" (redirect to {location} not followed: update the url)" if location else ""
    if excerpt := _shorten(request.redact(excerpt)):
        text += f": {excerpt}"
    text = request.redact(text)
    if status in (429, 503):
        wait = retry_after(headers.get("retry-after"), utcnow())
        raise TransientError(text, retry_after=wait, connection=True)
    if status in RETRY or status in CONNECTION or status >= 500:
        raise TransientError(text, connection=status in CONNECTION)
    raise PermanentError(text)


def sent_event(delivery: Delivery, request: Request, response: httpx.Response) -> Write:
    """The `webhook_sent` event the dispatcher records with the outcome, once per action (its
    id is the key), at the business time of the dispatch, like `email_sent`."""
    method, _, url = request.where.partition(" ")
    return Write("event", {
        "type": WEBHOOK_SENT, "event_id": delivery.key,
        "properties": {"playbook": delivery.playbook_id, "action": delivery.action_id,
                       "method": method, "url": url, "status": response.status_code}})


class Sender:
    """One HTTP client and the signing key for a dispatch cycle."""

    def __init__(self, client: httpx.AsyncClient, secret: str | None, timeout: float) -> None:
        self.client, self.timeout = client, timeout
        self.deadline = timeout * DEADLINE_FACTOR
        self.secret_key: bytes | None = None
        self.secret_problem = ""  # why there is no key: every send fails with it
        try:
            self.secret_key = signing_key(secret)
        except PermanentError as error:
            self.secret_problem = str(error)

    @classmethod
    def start(cls, settings: Any, *, connections: int, timeout: float,
              transport: httpx.AsyncBaseTransport | None = None) -> Sender:
        """A client with `connections` pooled connections; redirects are not followed.
        `transport`: where requests go instead of the network (`retain test` records them)."""
        secret = getattr(settings, "webhook_secret", None)
        if secret is not None and hasattr(secret, "get_secret_value"):
            secret = secret.get_secret_value()
        limits = httpx.Limits(max_connections=connections,
                              max_keepalive_connections=connections)
        client = httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False,
                                   transport=transport)
        return cls(client, secret, timeout)

    async def send(self, delivery: Delivery, env: Mapping[str, str]) -> Sent:
        """Expand, sign with this second's timestamp, send, judge."""
        if self.secret_key is None:  # configuration: wait for it, never dead-letter them all
            raise TransientError(self.secret_problem, connection=True)
        timestamp = int(utcnow().timestamp())
        request = build_request(delivery.payload, delivery.key, env, self.secret_key, timestamp)
        try:
            async with asyncio.timeout(self.deadline), self.client.stream(
                    request.method, request.url, headers=request.headers,
                    content=request.body) as response:
                excerpt = await _excerpt(response)
                sent = judge(request, response.status_code, response.reason_phrase,
                             response.headers, excerpt)
        except TimeoutError:
            raise TransientError(f"no whole answer within {self.deadline:g} s from "
                                 f"{request.where}") from None
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise _transport_error(request, error, self.timeout) from None
        return Sent(detail=sent.detail, writes=(sent_event(delivery, request, response),))

    async def close(self) -> None:
        """Close the pooled connections."""
        await self.client.aclose()


async def _excerpt(response: httpx.Response) -> str:
    """The response body (its first READ_BYTES) for the error text of a failed call.

    A body up to READ_BYTES is read to its end, so the connection goes back to the pool; a
    longer one is cut off (and its connection closed) rather than downloaded."""
    chunks = bytearray()
    async for chunk in response.aiter_bytes():
        chunks += chunk
        if len(chunks) > READ_BYTES:
            break
    if 200 <= response.status_code < 300:
        return ""
    return bytes(chunks).decode("utf-8", "replace")


def _shorten(text: str) -> str:
    """A response body on one line, cut to EXCERPT_CHARS (after redaction: never half a
    secret)."""
    text = " ".join(text[:EXCERPT_CHARS * 8].split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS - 1] + "…"


def _transport_error(request: Request, error: httpx.HTTPError | httpx.InvalidURL,
                     timeout: float) -> TransientError | PermanentError:
    """What a failed exchange means: the endpoint unreachable, too slow, or the request bad."""
    detail = request.redact(str(error) or type(error).__name__)
    if isinstance(error, httpx.ConnectTimeout):
        return TransientError(f"no connection within {timeout:g} s to {request.where}",
                              connection=True)
    if isinstance(error, httpx.TimeoutException):
        return TransientError(f"no answer within {timeout:g} s from {request.where}")
    if isinstance(error, httpx.ConnectError):
        return TransientError(f"cannot connect to {request.where}: {detail}", connection=True)
    if isinstance(error, httpx.LocalProtocolError | httpx.UnsupportedProtocol | httpx.InvalidURL):
        return PermanentError(f"cannot send {request.where}: {detail}")
    return TransientError(f"{request.where} failed: {detail}")
