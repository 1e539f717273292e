"""SMTP delivery for the email connector: a small pool of reused connections, and what each
failure means to the dispatcher.

A new SMTP session costs a TCP (and TLS) handshake, the greeting, EHLO and AUTH: more than the
message itself when messages are small. So the pool keeps up to `connections` sessions open and
runs one transaction (MAIL, RCPT, DATA) at a time on each. A session that broke is discarded and
a new one opened on next use; a reused session that the server closed while idle (or answered
421 on, or that gets no answer: a NAT forgot the flow) is replaced once, before MAIL is
accepted, since nothing was delivered yet.

Failures are sorted for the dispatcher (engine/errors.py): a reply about this message (4xx) is a
`TransientError`; a 5xx to RCPT or DATA is a `PermanentError` carrying the server's code and text,
with `suppress="bounced"` when it says the mailbox does not exist; everything about the server or
the account (refused, timeout, dropped, 421, 535, TLS, a sender refused) is a
`TransientError(connection=True)`, so an outage or a wrong password retries later instead of
dead-lettering the outbox. A connection dropped after DATA is the lost ack of RFC 1047: the
server may have the message, so it is transient and the retry re-sends it with the same
Message-ID (receivers and people dedupe on it).
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiosmtplib

from engine import PermanentError, TransientError

if TYPE_CHECKING:
    from connectors.email import Envelope

TLS_MODES = ("none", "starttls", "tls")
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to connect: `settings.smtp` reduced to what a session needs."""

    host: str
    port: int
    tls: str = "starttls"
    username: str | None = None
    password: str | None = None
    connections: int = 8
    timeout: float = 30.0
    validate_certs: bool = True

    @classmethod
    def from_settings(cls, smtp: Any) -> SmtpConfig:
        """From `Settings.smtp` (password a SecretStr or None). The port defaults by TLS mode."""
        tls = str(getattr(smtp, "tls", None) or "starttls").lower()
        if tls not in TLS_MODES:
            raise PermanentError(f"RETAIN_SMTP_TLS must be one of {', '.join(TLS_MODES)}; "
                                 f"got {tls!r}")
        password = getattr(smtp, "password", None)
        if password is not None and hasattr(password, "get_secret_value"):
            password = password.get_secret_value()
        timeout = getattr(smtp, "timeout", None)
        port = getattr(smtp, "port", None) or DEFAULT_PORTS[tls]
        connections = getattr(smtp, "connections", None) or 8
        return cls(host=str(smtp.host), port=int(port), tls=tls,
                   username=getattr(smtp, "username", None) or None, password=password,
                   connections=max(1, int(connections)),
                   timeout=float(timeout) if timeout else 30.0,
                   validate_certs=bool(getattr(smtp, "validate_certs", True)))

    @property
    def where(self) -> str:
        return f"SMTP server {self.host}:{self.port}"


def tls_context(validate: bool) -> ssl.SSLContext:
    """The system's trust store (SSL_CERT_FILE / SSL_CERT_DIR honoured), or no checks at all when
    `validate_certs` is off (a test server with a self-signed certificate)."""
    context = ssl.create_default_context()
    if not validate:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SmtpPool:
    """Up to `config.connections` SMTP sessions, reused across messages, one transaction each at a
    time. `opened` counts the sessions opened (for tests and the benchmark)."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self.opened = 0
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(config.connections)
        self._context = tls_context(config.validate_certs) if config.tls != "none" else None

    async def deliver(self, envelope: Envelope, data: bytes) -> str:
        """Send one message; returns the server's reply to DATA (`250 ... queued as X`)."""
        async with self._slots:
            reused = bool(self._idle)
            client = self._idle.pop() if reused else await self._connect()
            step = "MAIL"
            try:
                client = await self._mail(client, envelope, reused)
                step = "RCPT"
                await client.rcpt(envelope.recipient, encoding=_encoding(envelope))
                step = "DATA"
                response = await client.data(data)
            except aiosmtplib.SMTPResponseException as exc:
                problem = self._reply_error(exc, envelope)
                await self._recycle(client, exc.code)
                raise problem from exc
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                client.close()
                raise self._connection_error(exc, step=step) from exc
            except BaseException:
                client.close()  # cancelled mid-transaction: its state is unknown
                raise
            self._idle.append(client)
            return f"{response.code} {response.message}"

    async def close(self) -> None:
        """QUIT every idle session (politely, but without waiting long for an answer)."""
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await client.quit(timeout=2)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()

    async def _mail(self, client: aiosmtplib.SMTP, envelope: Envelope,
                    reused: bool) -> aiosmtplib.SMTP:
        """MAIL FROM; a reused session the server closed while idle (dropped, or 421), or that
        gets no answer (the flow forgotten on the way), is replaced once: nothing was sent on it
        yet."""
        options = ["SMTPUTF8"] if envelope.utf8 else []
        try:
            await client.mail(envelope.sender, options=options, encoding=_encoding(envelope))
        except (aiosmtplib.SMTPSenderRefused, OSError) as exc:
            # dropped, reset, or no answer at all (a NAT or load balancer forgot the idle flow)
            stale = isinstance(exc, OSError) or exc.code == 421
            if not (reused and stale):
                raise
            client.close()
            client = await self._connect()
            try:
                await client.mail(envelope.sender, options=options, encoding=_encoding(envelope))
            except BaseException:
                client.close()  # the caller still holds the old session, not this one
                raise
        return client

    async def _recycle(self, client: aiosmtplib.SMTP, code: int) -> None:
        """After a refused MAIL, RCPT or DATA the session carries on after RSET; a 421 (or a
        failed RSET) ends it."""
        if code != 421 and client.is_connected:
            try:
                await client.rset()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                pass
            else:
                self._idle.append(client)
                return
        client.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        """A new session: connect (implicit TLS for `tls`), STARTTLS when asked (and refuse the
        server that does not offer it: no plaintext AUTH), then AUTH when a username is set."""
        config = self.config
        client = aiosmtplib.SMTP(hostname=config.host, port=config.port, timeout=config.timeout,
                                 use_tls=config.tls == "tls", start_tls=False,
                                 tls_context=self._context)
        try:
            await client.connect()
            if config.tls == "starttls":
                await client.ehlo()
                if not client.supports_extension("starttls"):
                    raise TransientError(
                        f"{config.where} does not offer STARTTLS, and RETAIN_SMTP_TLS is "
                        "'starttls': refusing to log in or send in plain text", connection=True)
                await client.starttls()
            if config.username:
                await client.login(config.username, config.password or "")
        except TransientError:
            client.close()
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise self._connection_error(exc) from exc
        self.opened += 1
        return client

    def _connection_error(self, exc: BaseException, *, step: str = "") -> TransientError:
        """The server, the network, TLS or the account failed: retry later (connection=True)."""
        where = self.config.where
        if (tls := _tls_error(exc)) is not None:
            if isinstance(tls, ssl.SSLCertVerificationError):
                return TransientError(
                    f"TLS with {where} failed: certificate not trusted ({tls.verify_message}); "
                    "trust its CA with SSL_CERT_FILE, or set validate_certs = false for a test "
                    "server", connection=True)
            return TransientError(f"TLS with {where} failed: {tls.reason or tls}",
                                  connection=True)
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            return TransientError(f"{where} refused the login for RETAIN_SMTP_USERNAME "
                                  f"{self.config.username!r}: {exc.code} {exc.message}",
                                  connection=True)
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return TransientError(f"{where} answered {exc.code} {exc.message}", connection=True)
        if isinstance(exc, TimeoutError) and step == "DATA":
            return TransientError(f"{where} timed out before confirming the message (it may "
                                  "have it: the retry re-sends the same Message-ID)",
                                  connection=True)
        if isinstance(exc, TimeoutError):
            return TransientError(f"{where} timed out: {exc}", connection=True)
        if isinstance(exc, aiosmtplib.SMTPServerDisconnected) and step == "DATA":
            return TransientError(f"{where} dropped the connection before confirming the message "
                                  "(it may have it: the retry re-sends the same Message-ID)",
                                  connection=True)
        if isinstance(exc, aiosmtplib.SMTPServerDisconnected) and step:
            return TransientError(f"{where} dropped the connection at {step}: {exc}",
                                  connection=True)
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        errno = getattr(cause, "errno", None)
        text = os.strerror(errno) if errno else str(exc) or type(exc).__name__
        return TransientError(f"{where} unreachable: {text}", connection=True)

    def _reply_error(self, exc: aiosmtplib.SMTPResponseException,
                     envelope: Envelope) -> TransientError | PermanentError:
        """What a refusal of MAIL, RCPT or DATA means for this message."""
        code, text, where = exc.code, exc.message, self.config.where
        said = f"{code} {text}"
        if code == 421:
            return TransientError(f"{where} is closing the connection: {said}", connection=True)
        if isinstance(exc, aiosmtplib.SMTPSenderRefused):
            # The sender (RETAIN_EMAIL_FROM) or the account is refused: every message would be,
            # so it is the connector's problem, never one message's dead letter.
            return TransientError(f"{where} refused the sender {envelope.sender}: {said}",
                                  connection=code >= 500)
        step = "recipient" if isinstance(exc, aiosmtplib.SMTPRecipientRefused) else "message"
        if 400 <= code < 500:
            return TransientError(f"{where} deferred the {step} {envelope.recipient}: {said}")
        bounced = _bounced(code, text, recipient=step == "recipient")
        return PermanentError(f"{where} rejected the {step} {envelope.recipient}: {said}",
                              suppress="bounced" if bounced else None)


def _bounced(code: int, text: str, *, recipient: bool) -> bool:
    """The mailbox does not exist or takes no mail: an enhanced status 5.1.x (bad address) or
    5.2.1 (mailbox disabled); without one, a 550, 551 or 553 reply to RCPT. A 550 to DATA with no
    enhanced code is about the content (spam, policy), and suppressing the address would be
    wrong; so is 5.7.x (policy) on any reply."""
    enhanced = _ENHANCED.match(text)
    if enhanced:
        subject, detail = enhanced.group(2), enhanced.group(3)
        return enhanced.group(1) == "5" and (subject == "1" or (subject, detail) == ("2", "1"))
    return recipient and code in (550, 551, 553)


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _encoding(envelope: Envelope) -> str:
    return "utf-8" if envelope.utf8 else "ascii"
