"""The settings model: every setting Retain has, typed, with its default and its check.

`Settings(...)` reads no file and no variable (config/load.py does), so a test or the demo builds
one from plain values. Secrets are `SecretStr`: a repr or a log line shows `**********`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from engine.format.durations import Duration, parse_duration

DEFAULT_URL = "sqlite:///retain.db"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8765"
ENV_PREFIX = "RETAIN_"


@dataclass(frozen=True)
class Cap:
    """`[caps] email = "2/7d"`: at most `count` actions of a channel per customer per `window`,
    across all playbooks."""

    count: int
    window: timedelta

    @classmethod
    def parse(cls, text: str) -> Cap:
        """`"2/7d"` -> Cap(2, 7 days); ValueError naming the accepted form."""
        count, _, window = str(text).partition("/")
        form = f"malformed cap {text!r}: expected COUNT/DURATION, like \"2/7d\""
        if not count.strip().isdigit() or int(count) < 1 or not window:
            raise ValueError(form)
        try:
            return cls(int(count), parse_duration(window))
        except ValueError:
            raise ValueError(f"{form}, the duration like 15m, 12h, 30d or 2w") from None

    def __str__(self) -> str:
        from engine.format.durations import format_duration

        return f"{self.count}/{format_duration(self.window)}"


_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


@dataclass(frozen=True)
class QuietHours:
    """`[quiet_hours] email = "21:00-08:00"`: no sends from `start` until `end`, in the
    customer's local time (a window may cross midnight)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        """`"21:00-08:00"` -> QuietHours(21:00, 08:00); ValueError naming the accepted form."""
        parts = str(text).split("-")
        matches = [_CLOCK.fullmatch(part.strip()) for part in parts]
        if len(parts) != 2 or not all(matches) or parts[0].strip() == parts[1].strip():
            raise ValueError(f"malformed quiet hours {text!r}: expected HH:MM-HH:MM, like "
                             "\"21:00-08:00\"")
        start, end = (time(int(m.group(1)), int(m.group(2))) for m in matches if m)
        return cls(start, end)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def _parser(kind: type[Cap] | type[QuietHours]) -> Any:
    """A pydantic validator taking the parsed value as it is, or its text through `kind.parse`."""
    def validate(value: object) -> Any:
        return value if isinstance(value, kind) else kind.parse(str(value))
    return PlainValidator(validate)


CapValue = Annotated[Cap, _parser(Cap), PlainSerializer(str)]
QuietHoursValue = Annotated[QuietHours, _parser(QuietHours), PlainSerializer(str)]
_CHANNEL = re.compile(r"[a-z][a-z0-9_]*")


def _channel(name: str) -> str:
    """A connector's name as the playbooks spell it (`email`, `webhook`)."""
    if not _CHANNEL.fullmatch(name):
        raise ValueError(f"{name!r} is not a channel: a connector's name in lower case, like "
                         "email or webhook")
    return name


Channel = Annotated[str, AfterValidator(_channel)]
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}


class SmtpSettings(BaseModel):
    """`[smtp]`: the mail server the email connector delivers through (`RETAIN_SMTP_*`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str | None = None
    port: int = Field(default=587, ge=1, le=65535)  # unset: the usual port for `tls`
    username: str | None = None
    password: SecretStr | None = None  # environment only: RETAIN_SMTP_PASSWORD
    tls: Literal["none", "starttls", "tls"] = "starttls"
    connections: int = Field(default=8, ge=1, le=256)
    timeout: float = Field(default=30.0, gt=0)
    validate_certs: bool = True

    @model_validator(mode="before")
    @classmethod
    def _usual_port(cls, data: Any) -> Any:
        """No port given: the one that goes with `tls` (25 plain, 587 STARTTLS, 465 TLS)."""
        if isinstance(data, dict) and data.get("port") is None:
            return {**data, "port": DEFAULT_PORTS.get(str(data.get("tls", "starttls")), 587)}
        return data


DEFAULT_SEGMENT_EVENTS = {"Order Completed": "purchase"}
"""Segment's e-commerce spec, the names most senders already use for the events Retain knows."""
DEFAULT_SEGMENT_AMOUNT = ("total", "revenue")


class SegmentSettings(BaseModel):
    """`[segment]`: how Segment-protocol messages (`/v1/track`, `/v1/batch`) become Retain events.

    Senders name events their own way ("Order Completed"); the playbooks speak Retain's types
    (`purchase`), so the map is configuration, not code. A name not in the map is kept as it is.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_SEGMENT_EVENTS))
    amount: tuple[str, ...] = DEFAULT_SEGMENT_AMOUNT  # properties read as `amount`, first found

    @field_validator("events")
    @classmethod
    def _types(cls, value: dict[str, str]) -> dict[str, str]:
        """Every name maps to a non-empty Retain event type."""
        empty = [name for name, kind in value.items() if not str(kind).strip()]
        if empty:
            raise ValueError(f"event name(s) {', '.join(map(repr, empty))} map to an empty type")
        return {name: kind.strip() for name, kind in value.items()}


class DaemonSettings(BaseModel):
    """`[daemon]`: how `retain daemon` schedules and how replicas share the lead
    (`RETAIN_DAEMON_*`; docs/CONFIG.md, docs/DEPLOYMENT.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # state triggers and the event sweep, per playbook unless it sets `interval`
    interval: Duration = timedelta(minutes=5)
    # seconds a leader lease lasts unless renewed: how long a dead leader's replica waits
    lease_ttl: float = Field(default=15.0, ge=1, le=600)
    # seconds a dispatch claim holds an outbox row unless its heartbeat renews it: how long a
    # killed replica's rows wait before another replica sends them (engine/outbox/claim.py)
    claim_lease: float = Field(default=60.0, ge=1, le=3600)


class Settings(BaseSettings):
    """What a Retain project is configured with: every setting, typed, documented in
    docs/CONFIG.md. Build one with `load_settings`; `Settings(...)` reads no file or variable."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="_", env_nested_max_split=1,
        env_ignore_empty=True, extra="forbid", frozen=True, case_sensitive=False)

    # [retain]
    database_url: str = DEFAULT_URL
    playbooks_dir: str = "playbooks"
    timezone: str = "UTC"
    email_from: str | None = None
    email_transport: Literal["smtp", "file"] | None = None
    email_dir: str | None = None
    public_url: str = DEFAULT_PUBLIC_URL
    # the other tables
    caps: dict[Channel, CapValue] = Field(default_factory=dict)
    quiet_hours: dict[Channel, QuietHoursValue] = Field(default_factory=dict)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    segment: SegmentSettings = Field(default_factory=SegmentSettings)
    # secrets: environment only
    secret_key: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    api_token: SecretStr | None = None  # the daemon's HTTP API: bearer token and Segment write key

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   **_: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values given: `load_settings` gathers file and environment itself, so that
        an error can say which of the two a bad value came from."""
        return (init_settings,)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}: expected an IANA name like "
                             "\"Europe/Oslo\" or \"UTC\"") from None
        return value

    @field_validator("public_url")
    @classmethod
    def _unsubscribe_base(cls, value: str) -> str:
        """RFC 8058: one-click unsubscribe links are HTTPS, except on this machine (the one
        rule, engine/consent.py's, which the links are made by)."""
        from engine.consent import public_url_problem

        problem = public_url_problem(value)
        if problem is not None:
            raise ValueError(f"{value!r} {problem}")
        return value.strip().rstrip("/")

    @field_validator("webhook_secret")
    @classmethod
    def _standard_webhooks_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """`whsec_<base64>` as the Standard Webhooks libraries expect (the prefix and the `=`
        padding may be left out, as connectors/webhook_send.py reads it); never shown."""
        import base64
        import binascii

        if value is None:
            return None
        text = value.get_secret_value().strip().removeprefix("whsec_").rstrip("=")
        try:
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not key:
            raise ValueError("not a Standard Webhooks secret: expected \"whsec_\" followed by "
                             "the base64 of the signing key (the value is not shown)")
        return value

    @field_validator("email_from")
    @classmethod
    def _one_address(cls, value: str | None) -> str | None:
        from email.utils import parseaddr

        if value is not None and ("@" not in parseaddr(value)[1] or re.search(r"[\r\n]", value)):
            raise ValueError(f"{value!r} is not an address like \"Shop <news@shop.example>\"")
        return value

    @model_validator(mode="after")
    def _transport(self) -> Settings:
        """An SMTP host alone chooses SMTP; a chosen transport has what it needs."""
        if self.email_transport is None and self.smtp.host:
            object.__setattr__(self, "email_transport", "smtp")
        if self.email_transport == "smtp" and not self.smtp.host:
            raise ValueError("email_transport 'smtp' needs [smtp] host (RETAIN_SMTP_HOST)")
        if self.email_transport == "file" and not self.email_dir:
            raise ValueError("email_transport 'file' needs email_dir (RETAIN_EMAIL_DIR)")
        return self
