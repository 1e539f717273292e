"""The `email` action: a templated subject and a body from a template file or inline text.

`build_message` makes the one `email.message.EmailMessage` (`email.policy.default`, which
refuses CR/LF in header values, folding at 998) that `retain preview` shows and the connector
sends: From, To, Subject, Date, a Message-ID derived from the action's idempotency key (so a
retry carries the same one, RELIABILITY 7), `List-Unsubscribe` and `List-Unsubscribe-Post` (RFC
8058 one-click), and a text and/or HTML part. The subject is a header, so it may never carry a
line break (RELIABILITY 14). The sender comes from `RETAIN_EMAIL_FROM`; until sending is
configured a reserved `.invalid` address stands in.

A live run freezes `payload` in the outbox at commit: the whole message, built by
`build_message` with the due time as Date and a multipart boundary derived from the content, as
the bytes that go on the wire. `send` only sends those bytes, so every attempt sends the same
message (RELIABILITY 7: a re-send after a lost ack is the same message, same Message-ID). The
transport is chosen by `open`: SMTP through a pool of reused connections (connectors/smtp.py),
or `.eml` files in a folder (connectors/mailfile.py).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.errors import MessageError
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator, model_validator

from connectors.base import (
    Connector,
    ConnectorParams,
    Delivery,
    Render,
    RenderFile,
    Sent,
    expect,
    file_problems,
    inline_problems,
)
from engine import PermanentError, Problem, TemplateChecker, TemplateError, header_problem

if TYPE_CHECKING:  # the transports load in open(): validate and dry-run need neither
    from connectors.mailfile import MailFolder
    from connectors.smtp import SmtpPool

TEMPLATE_SUFFIXES = (".html.j2", ".txt.j2")


class _Headers(HeaderRegistry):
    """The standard header registry, but each header class made once: the stock one builds a
    new class for every header it parses, which was half the time of building a message."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


POLICY = policy.default.clone(max_line_length=998, cte_type="7bit", header_factory=_Headers())
"""email.policy.default (CR/LF in a header value is an error), folding only past RFC 5322's hard
line limit: at the default 78, `List-Unsubscribe: <https://...long token...>` would be folded,
and it must stay one line (RELIABILITY 15). 7-bit: a non-ASCII body is quoted-printable or
base64, so no server needs 8BITMIME and the frozen message is plain ASCII."""
WIRE = POLICY.clone(linesep="\r\n")
"""How a message is written for sending (SMTP and .eml files alike): CRLF line ends."""
FROM_ENV = "RETAIN_EMAIL_FROM"
PLACEHOLDER_FROM = "Retain <retain@example.invalid>"
"""The sender until RETAIN_EMAIL_FROM is set: `.invalid` is reserved, so it can never deliver."""
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")
PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"
                           r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
"""An address made only of ASCII dot-atoms (`rosa.garcia+news@mail.example.net`): the email
package parses every such address without a defect and writes it, so `recipient_problem` need
not parse it (parsing took a quarter of planning a win-back enrollment). Anything else, quotes,
comments, specials, non-ASCII, goes through the parser (tests/test_plan_recipients.py checks
the two agree)."""


@dataclass(frozen=True)
class Envelope:
    """How one message travels: MAIL FROM, RCPT TO, its Message-ID (the file transport names the
    file after it) and whether it needs SMTPUTF8 (a non-ASCII address)."""

    sender: str
    recipient: str
    message_id: str = ""
    utf8: bool = False


class EmailParams(ConnectorParams):
    """`subject` plus exactly one of `template`, `body` (plain text) or `html`."""

    subject: str = Field(min_length=1, description="Templated; a header, so one line only.")
    template: str | None = Field(None, description="NAME: templates/NAME.html.j2 and/or .txt.j2",
                                 json_schema_extra={"pattern": f"^{_TEMPLATE_NAME.pattern}$"})
    body: str | None = Field(None, description="Inline plain-text body (templated).")
    html: str | None = Field(None, description="Inline HTML body (templated, autoescaped).")

    @field_validator("template")
    @classmethod
    def _template_name(cls, value: str | None) -> str | None:
        if value is None or _TEMPLATE_NAME.fullmatch(value):
            return value
        if value.endswith((".j2", ".html", ".txt")):
            raise ValueError("template is a name without extension, like 'winback' "
                             f"(for templates/winback.html.j2); got {value!r}")
        raise ValueError("template is a name like 'winback' or 'onboarding/day1' (letters, "
                         f"digits, - and _); got {value!r}")

    @model_validator(mode="after")
    def _one_body(self) -> EmailParams:
        given = [key for key in ("template", "body", "html") if getattr(self, key) is not None]
        if len(given) != 1:
            got = " and ".join(given) if given else "none"
            raise ValueError(f"email needs exactly one of template, body or html; got {got}")
        return self


class EmailConnector(Connector):
    """Send an email to the customer.

    ```yaml
    - email:
        subject: "We miss you, {{ customer.name }}"
        template: winback
    ```

    `template: winback` uses `templates/winback.html.j2` and/or `templates/winback.txt.j2` (at
    least one must exist); `body:` (plain text) and `html:` are inline alternatives.
    """

    kind = "email"
    Params = EmailParams
    needs_email = True
    retry = (8, 120.0, 2.8)  # 8 attempts, the first retry after ~2 min, ~24 h in all
    from_address: str | None = None
    """The sender `payload` freezes: set it from `Settings.email_from` (`open` does); when None,
    RETAIN_EMAIL_FROM from the environment, else the `.invalid` placeholder."""

    def __init__(self) -> None:
        self._transport: SmtpPool | MailFolder | None = None

    def check(self, params: BaseModel, templates: TemplateChecker) -> list[Problem]:
        """Subject as a header template; the body inline or in its template files."""
        email = expect(params, EmailParams)
        problems = inline_problems(templates, ("subject",), email.subject, header=True)
        if email.body is not None:
            problems += inline_problems(templates, ("body",), email.body)
        if email.html is not None:
            problems += inline_problems(templates, ("html",), email.html)
        if email.template is not None:
            problems += _template_problems(templates, email.template)
        return problems

    def plan(self, params: BaseModel, render: Render, render_file: RenderFile,
             due_at: datetime) -> dict[str, Any]:
        """The rendered subject and where the body comes from. The body is rendered too, so a
        body that fails for this customer is an error in the plan, not at send time; its text
        is not kept (a plan of 100,000 emails need not carry 100,000 bodies)."""
        email = expect(params, EmailParams)
        subject = render(email.subject, header=True)
        bodies(email, render, render_file)
        source = {"template": email.template} if email.template else {
            "body": "inline text" if email.body is not None else "inline html"}
        return {"subject": subject, **source}

    def payload(self, params: BaseModel, render: Render, render_file: RenderFile,
                due_at: datetime, *, key: str, customer: Mapping[str, Any],
                unsubscribe_url: str) -> dict[str, Any]:
        """Everything `send` needs, rendered and built once, frozen at commit as plain JSON: the
        whole message as it goes on the wire (`message`, CRLF line ends, 7-bit), with its
        headers alongside for people (`outbox show`) and the envelope. Date is the due time, so
        every attempt sends these same bytes. A header the email package refuses (a line break
        in the customer's name) fails here, for this customer's action only, not at send time.

        Built here and not at send: building a MIME message costs more CPU than sending it over
        a reused SMTP session (docs/BENCHMARKS.md "Email"), so the dispatcher only sends."""
        email = expect(params, EmailParams)
        address = str(customer.get("email") or "").strip()
        who = customer.get("customer_id", "?")
        if not address:
            raise TemplateError(f"customer {who} has no email address")
        if problem := self.recipient_problem(customer):
            raise TemplateError(problem)
        name = customer.get("name")
        text, html = bodies(email, render, render_file)
        from_address = self.from_address or sender()
        subject = render(email.subject, header=True)
        try:  # the email package refuses what it cannot write (a non-ASCII local part too)
            fields = {"from": from_address, "to": recipient(name, address), "address": address,
                      "subject": subject, "message_id": message_id(key, from_address),
                      "date": mail_date(due_at), "unsubscribe_url": unsubscribe_url}
            message = build_message(from_address=fields["from"], to=fields["to"],
                                    subject=fields["subject"], text=text, html=html,
                                    message_id=fields["message_id"],
                                    unsubscribe_url=unsubscribe_url, date=fields["date"])
            utf8 = not (from_address.isascii() and address.isascii())
            wire = message.as_bytes(policy=WIRE.clone(utf8=True) if utf8 else WIRE)
        except (ValueError, TypeError, MessageError) as exc:
            raise TemplateError(f"customer {who}: the email cannot be built: {exc}") from exc
        return {**fields, "message": wire.decode("utf-8")}

    def recipient_problem(self, customer: Mapping[str, Any]) -> str | None:
        """An address or name the To header cannot carry: a line break (RELIABILITY 14), or
        what the email package refuses to parse or write (`<a>@x.example`, `a,b@x.example`, a
        non-ASCII local part), all of which the customer file lets through."""
        address = str(customer.get("email") or "").strip()
        if not address:
            return None  # skipped, not dead: the planner says so
        who, name = customer.get("customer_id", "?"), customer.get("name")
        for value in (address, str(name or "")):
            if problem := header_problem(value):
                return f"customer {who}: To {value!r}: {problem}"
        if PLAIN_ADDRESS.fullmatch(address):  # what the parser below always accepts
            return None
        try:  # parsing the address is what fails (~30 us; building a message costs 7x that)
            parsed = Address(display_name=str(name or ""), addr_spec=address)
        except (ValueError, TypeError, MessageError) as exc:
            return f"customer {who}: the email cannot be built: {exc}"
        if not parsed.username.isascii():  # refused when written, with SMTPUTF8 or without
            return (f"customer {who}: the email cannot be built: {address!r}: local-part "
                    "contains non-ASCII characters")
        return None

    def configure(self, settings: Any) -> None:
        """The sender (`email_from`, RETAIN_EMAIL_FROM or retain.toml) for payloads."""
        if email_from := getattr(settings, "email_from", None):
            self.from_address = email_from

    async def open(self, settings: Any) -> None:
        """Choose the transport: `.eml` files when `email_transport` is "file", else SMTP to
        `smtp.host` through `smtp.connections` reused sessions (the dispatcher's concurrency)."""
        self.configure(settings)
        if getattr(settings, "email_transport", None) == "file":
            folder = getattr(settings, "email_dir", None)
            if not folder:
                raise PermanentError("RETAIN_EMAIL_TRANSPORT is 'file' but RETAIN_EMAIL_DIR, the "
                                     "folder for the .eml files, is not set")
            from connectors.mailfile import MailFolder

            self._transport = MailFolder(Path(folder))
            return
        smtp = getattr(settings, "smtp", None)
        if smtp is None or not getattr(smtp, "host", None):
            raise PermanentError("email cannot be sent: set RETAIN_SMTP_HOST (the SMTP server), or "
                                 "RETAIN_EMAIL_TRANSPORT=file and RETAIN_EMAIL_DIR to write .eml "
                                 "files")
        from connectors.smtp import SmtpConfig, SmtpPool

        config = SmtpConfig.from_settings(smtp)
        self._transport = SmtpPool(config)
        self.concurrency = config.connections  # type: ignore[misc]  (open may change it)

    async def send(self, delivery: Delivery) -> Sent:
        """Deliver the message frozen in the payload, as it is: never rendered or built again."""
        if self._transport is None:
            raise PermanentError("the email connector was not opened before sending")
        try:
            envelope, data = wire_message(delivery.payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError(f"action {delivery.action_id} (customer {delivery.customer_id}):"
                                 f" the outbox payload is not a frozen email: {exc!r}") from exc
        return Sent(detail=await self._transport.deliver(envelope, data))

    async def close(self) -> None:
        """Close the pooled SMTP sessions (QUIT)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.close()

    def blocked(self, address: str, suppressions: Mapping[str, str]) -> str | None:
        """A suppressed address (unsubscribed, bounced) gets no mail, whatever its letter case:
        `Ann@Example.COM` is blocked by a suppression of `ann@example.com`."""
        reason = suppressions.get(address.strip().lower())
        return None if reason is None else f"address is suppressed ({reason})"

    def preview(self, params: BaseModel, render: Render, render_file: RenderFile,
                due_at: datetime, *, key: str | None, customer: Mapping[str, Any],
                unsubscribe_url: str) -> EmailMessage:
        """The whole message, rendered for one customer: what the dispatcher would send (without
        a Message-ID when `key` is None: no run would send it)."""
        email = expect(params, EmailParams)
        text, html = bodies(email, render, render_file)
        from_address, address = sender(), customer.get("email")
        to = recipient(customer.get("name"), address) if address else None
        return build_message(from_address=from_address, to=to,
                             subject=render(email.subject, header=True), text=text, html=html,
                             message_id=message_id(key, from_address) if key else None,
                             unsubscribe_url=unsubscribe_url, date=mail_date(due_at))


def wire_message(payload: Mapping[str, Any]) -> tuple[Envelope, bytes]:
    """The envelope and the bytes to send for a frozen payload: the same bytes every time."""
    sender_address = _envelope_sender(payload["from"])
    recipient_address = str(payload["address"])
    envelope = Envelope(sender=sender_address, recipient=recipient_address,
                        message_id=str(payload["message_id"]),
                        utf8=not (sender_address.isascii() and recipient_address.isascii()))
    return envelope, str(payload["message"]).encode("utf-8")


def mail_date(due_at: datetime) -> str:
    """The Date header of an action due at `due_at` (UTC): `Fri, 04 Dec 2026 09:00:00 +0000`."""
    moment = due_at.replace(tzinfo=UTC) if due_at.tzinfo is None else due_at.astimezone(UTC)
    return format_datetime(moment)


def bodies(email: EmailParams, render: Render, render_file: RenderFile
           ) -> tuple[str | None, str | None]:
    """The text and HTML body, rendered: inline, or templates/NAME.txt.j2 and .html.j2 (at least
    one; `validate` checks that, and a file deleted since is a TemplateError here)."""
    if email.template is None:
        return (render(email.body) if email.body is not None else None,
                render(email.html, html=True) if email.html is not None else None)
    text, html = (render_file(f"{email.template}{suffix}") for suffix in (".txt.j2", ".html.j2"))
    if text is None and html is None:
        raise TemplateError(f"no template file for {email.template!r} (.txt.j2 or .html.j2)")
    return text, html


def sender(env: dict[str, str] | None = None) -> str:
    """The From address: RETAIN_EMAIL_FROM, else PLACEHOLDER_FROM."""
    return (os.environ if env is None else env).get(FROM_ENV) or PLACEHOLDER_FROM


def message_id(key: str, from_address: str) -> str:
    """The Message-ID of the action with idempotency `key`: the same on every attempt, unique per
    action, in the sender's domain (`<40 hex>@example.com`). Hashed, since a key carries ids."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:40]}@{_domain(from_address)}>"


@lru_cache(maxsize=64)
def _domain(from_address: str) -> str:
    """The sender's domain (one parse per distinct sender, not one per message)."""
    return _parse_address(from_address).domain or "localhost"


def build_message(*, from_address: str, to: str | None, subject: str, text: str | None,
                  html: str | None, message_id: str | None, unsubscribe_url: str,
                  date: str | None = None) -> EmailMessage:
    """The message as it is sent: headers, then a text part, an HTML part, or both as
    multipart/alternative (text first: clients show the last part they can display). Every sent
    message has a Message-ID; only a preview of what no run would send goes without. The
    multipart boundary derives from the bodies (the email package would pick a random one), so
    the same arguments always give the same bytes."""
    message = EmailMessage(policy=POLICY)
    message["From"] = _header("From", from_address)
    if to:
        message["To"] = to
    message["Subject"] = subject
    if date is not None:
        message["Date"] = _header("Date", date)
    if message_id is not None:
        message["Message-ID"] = message_id
    message["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    message["List-Unsubscribe-Post"] = _header("List-Unsubscribe-Post",
                                               "List-Unsubscribe=One-Click")
    if text is not None:
        message.set_content(text)
        if html is not None:
            message.make_alternative(boundary=_boundary(text, html))
            message.add_alternative(html, subtype="html")
    else:
        message.set_content(html or "", subtype="html")
    return message


@lru_cache(maxsize=256)
def _header(name: str, value: str) -> Any:
    """A header the policy has parsed (and checked: CR/LF is refused) once; a run's messages share
    their sender, due time and one-click header, and a parsed header is immutable."""
    return POLICY.header_store_parse(name, value)[1]


def recipient(name: str | None, address: str) -> str:
    """`Ann Lee <ann@example.com>` (quoted as needed), or the bare address without a name."""
    if not name:
        return address
    return str(Address(display_name=name, addr_spec=address))


def _boundary(text: str, html: str) -> str:
    """A multipart boundary that is a hash of the bodies, hence stable, and in neither of them."""
    seed = hashlib.sha256(f"{text}\0{html}".encode()).hexdigest()
    boundary = f"==retain-{seed[:32]}=="
    while boundary in text or boundary in html:  # astronomically rare; still never wrong
        seed = hashlib.sha256(seed.encode()).hexdigest()
        boundary = f"==retain-{seed[:32]}=="
    return boundary


@lru_cache(maxsize=64)
def _envelope_sender(from_address: str) -> str:
    """MAIL FROM: the bare address of the From header (one parse per distinct sender)."""
    return _parse_address(from_address).addr_spec


def _parse_address(text: str) -> Address:
    message = EmailMessage(policy=policy.default)
    message["From"] = text
    addresses = message["From"].addresses
    return addresses[0] if addresses else Address(addr_spec="retain@localhost")


def _template_problems(templates: TemplateChecker, name: str) -> list[Problem]:
    files = [f"{name}{suffix}" for suffix in TEMPLATE_SUFFIXES]
    present = [file for file in files if templates.template_path(file).is_file()]
    if not present:
        expected = " or ".join(str(templates.template_path(file)) for file in files)
        return [Problem(("template",), f"no template file for {name!r}: expected {expected}")]
    return [problem for file in present for problem in file_problems(templates, ("template",), file)]
