"""The format of a playbook test file (`*.test.yaml`), as pydantic models, and its clock.

A file names the playbooks it tests, gives customers and events (times relative to the test's
clock: `-45d`), and holds tests; each test is a list of steps (`run`, `advance`, `events`,
`customers`, `unsubscribe`, `expect`) run against a store of its own. docs/PLAYBOOKS.md ("Testing a
playbook") is the reference; `retain schema --tests` prints the JSON Schema made from these
models.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.format.durations import parse_duration

DEFAULT_START = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC
"""The clock at the start of a test that names no `start`: fixed, so a test never depends on
the day it runs."""

RELATIVE = re.compile(r"^(now|[+-]?[0-9]+[mhdw])$")
RELATIVE_PATTERN = r"^(now|[+-]?[0-9]+[mhdw])$"
STEP_KINDS = ("run", "advance", "events", "customers", "unsubscribe", "expect")
ACTION_LISTS = ("sent", "due", "capped", "suppressed", "skipped", "dead", "cancelled")
"""The expectation keys that list actions, by what the last run made of them (`due`: committed
and waiting, planned or deferred)."""
ENROLLMENT_STATES = ("active", "waiting", "completed", "exited")


class Strict(BaseModel):
    """Unknown keys are errors everywhere in a test file, as in a playbook."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TestSettings(Strict):
    """What a test relies on from `retain.toml`, stated in the test (it reads no file and no
    RETAIN_* variable): caps, quiet hours, the default time zone, the sender."""

    caps: dict[str, str] = Field(default_factory=dict, description='e.g. {email: "2/7d"}')
    quiet_hours: dict[str, str] = Field(default_factory=dict,
                                        description='e.g. {email: "21:00-08:00"}')
    timezone: str = "UTC"
    email_from: str = "Retain test <retain-test@example.com>"


class Expect(Strict):
    """What must hold after the steps before it. Keys about "the last run" compare with what
    the latest `run` step did; `enrollments` and `customers` with the store as it is."""

    playbook: str | None = Field(default=None, description="which playbook (default: the only "
                                 "one the file tests)")
    entered: list[str] | None = Field(default=None, description="exactly the customers who "
                                      "entered in the last run (holdout ones not counted)")
    holdout: list[str] | None = Field(default=None, description="exactly the customers who "
                                      "entered the control group in the last run")
    not_entered: dict[str, str | None] | None = Field(
        default=None, description="customers who did not enter in the last run, each with the "
        "clause that kept them out (a part of its path or words, as `retain explain` shows "
        "them), or null")
    sent: list[dict[str, dict[str, Any]]] | None = None
    due: list[dict[str, dict[str, Any]]] | None = None
    capped: list[dict[str, dict[str, Any]]] | None = None
    suppressed: list[dict[str, dict[str, Any]]] | None = None
    skipped: list[dict[str, dict[str, Any]]] | None = None
    dead: list[dict[str, dict[str, Any]]] | None = None
    cancelled: list[dict[str, dict[str, Any]]] | None = None
    exited: list[str] | None = Field(default=None, description="exactly the customers whose "
                                     "enrollment ended by exit_when or a new version in the "
                                     "last run")
    converted: list[str] | None = Field(default=None, description="exactly the customers who "
                                        "reached the goal in the last run")
    over_limit: bool | None = Field(default=None, description="the last run refused to enroll "
                                    "anyone because of the playbook's limits")
    enrollments: dict[str, Literal["active", "waiting", "completed", "exited", "none"]] | None = \
        Field(default=None, description="the state of each customer's latest enrollment now")
    customers: dict[str, dict[str, Any]] | None = Field(
        default=None, description="customer fields and facts now (points_balance, tags, ...)")


class TestCase(Strict):
    """One test: more customers and events for it alone, then its steps."""

    name: str = Field(min_length=1)
    customers: list[dict[str, Any]] = Field(default_factory=list)
    events: list[dict[str, Any]] = Field(default_factory=list)
    settings: TestSettings | None = None
    steps: list[Any] = Field(min_length=1, description="run | {advance: 3d} | {events: [...]} "
                             "| {customers: [...]} | {unsubscribe: ADDRESS} | {expect: {...}}")


class TestFile(Strict):
    """A whole `*.test.yaml` file."""

    playbooks: list[str] = Field(min_length=1, description="ids of the playbooks under test; "
                                 "only these run")
    start: datetime | None = Field(default=None, description="the clock at the start of every "
                                   "test (default 2026-01-05T10:00:00Z)")
    settings: TestSettings = Field(default_factory=TestSettings)
    customers: list[dict[str, Any]] = Field(default_factory=list)
    events: list[dict[str, Any]] = Field(default_factory=list)
    tests: list[TestCase] = Field(min_length=1)


def resolve_time(value: Any, clock: datetime) -> datetime:
    """A time as a test writes it: relative to the clock (`-45d`, `+2h`, `now`) or absolute
    (ISO 8601; naive means UTC). Raises ValueError with the accepted forms."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    text = str(value).strip()
    if RELATIVE.match(text):
        return clock if text == "now" else clock + parse_duration(text, signed=True)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not a time: expected one relative to the test's clock "
                         "(-45d, +2h, now) or ISO 8601 (2026-01-05T10:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def resolve_duration(value: Any) -> timedelta:
    """`advance:`'s duration (15m, 12h, 3d, 2w)."""
    return parse_duration(str(value))
