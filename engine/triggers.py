"""The seven trigger kinds of DESIGN section 2.1: each one a params model plus its own checks.

A trigger decides *who* enters and *which occurrence* they enter for (the occurrence key that
makes re-entry `once` mean "once per episode"). SQL compilation is layered on these classes by
the evaluation code; here they only parse and validate.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from engine.conditions import AllOf, ConditionParser, event_property_type
from engine.durations import Duration, SignedDuration
from engine.errors import Problem
from engine.fields import DATE_TRIGGER_FIELDS, customer_field_type, did_you_mean
from engine.registry import Registry
from engine.yamlsource import PathKey

ONE_DAY = timedelta(days=1)


class TriggerParams(BaseModel):
    """Base of every trigger's params: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Trigger:
    """A trigger kind: `Params` is its schema; `check` adds what a schema cannot say."""

    kind: ClassVar[str]
    Params: ClassVar[type[TriggerParams]]
    state_based: ClassVar[bool] = False  # enrolls on a state, so `backfill` applies

    def __init__(self, params: TriggerParams) -> None:
        self.params = params

    def check(self, path: PathKey) -> list[Problem]:
        """Semantic problems beyond the params model; none by default."""
        return []


TRIGGERS: Registry[type[Trigger]] = Registry("trigger")


class InactiveParams(TriggerParams):
    """`inactive: {days: 30, activity: [purchase, login]}`."""

    days: Annotated[StrictInt, Field(ge=1)]
    activity: list[str] | None = None


@TRIGGERS.register("inactive")
class InactiveTrigger(Trigger):
    """Customers whose last activity is `days` or more old; a new inactivity episode fires again.

    ```yaml
    trigger:
      inactive: { days: 30 }
    ```
    """

    Params = InactiveParams
    state_based = True


class LookbackParams(TriggerParams):
    """Event and date triggers look back a bounded window, so enabling one skips old history."""

    lookback: Duration = ONE_DAY


@TRIGGERS.register("first_purchase")
class FirstPurchaseTrigger(Trigger):
    """A customer's first `purchase` event (occurrence: that event).

    ```yaml
    trigger:
      first_purchase: {}
    ```
    """

    Params = LookbackParams


class NegativeFeedbackParams(LookbackParams):
    """`negative_feedback: {max_score: 6}`: an NPS detractor by default."""

    max_score: Annotated[StrictInt, Field(ge=0, le=10)] = 6


@TRIGGERS.register("negative_feedback")
class NegativeFeedbackTrigger(Trigger):
    """A `feedback` event with `score <= max_score` (occurrence: that event).

    ```yaml
    trigger:
      negative_feedback: { max_score: 6 }
    ```
    """

    Params = NegativeFeedbackParams


class EventParams(LookbackParams):
    """`event: {type: support_ticket, where: [{priority: {eq: high}}]}`."""

    type: Annotated[str, Field(min_length=1)]
    where: list[Any] | None = None


@TRIGGERS.register("event")
class EventTrigger(Trigger):
    """Any event of `type` whose properties match `where` (occurrence: that event).

    ```yaml
    trigger:
      event: { type: support_ticket, where: [{ priority: { eq: high } }] }
    ```
    """

    Params = EventParams

    def __init__(self, params: TriggerParams) -> None:
        super().__init__(params)
        self.where = AllOf((), ())

    def check(self, path: PathKey) -> list[Problem]:
        parser = ConditionParser(event_property_type, allow_events=False)
        self.where = parser.parse_list(self.params.where, (*path, "where"))  # type: ignore[attr-defined]
        return parser.problems


class DateParams(LookbackParams):
    """`date: {field: birthday, offset: -7d}`."""

    field: str = "birthday"
    offset: SignedDuration = timedelta(0)


@TRIGGERS.register("date")
class DateTrigger(Trigger):
    """Yearly on a customer date's month and day, shifted by offset, at 09:00 in their time zone.

    ```yaml
    trigger:
      date: { field: birthday, offset: -7d }
    ```
    """

    Params = DateParams

    def check(self, path: PathKey) -> list[Problem]:
        name = self.params.field  # type: ignore[attr-defined]
        if name in DATE_TRIGGER_FIELDS or (customer_field_type(name) and "." in name):
            return []
        hint = did_you_mean(name, DATE_TRIGGER_FIELDS) or (
            f" (expected one of: {', '.join(DATE_TRIGGER_FIELDS)}, or attributes.NAME)")
        return [Problem((*path, "field"), f"{name!r} is not a date field{hint}")]


class ScheduleParams(TriggerParams):
    """`schedule: {cron: "0 9 1 * *", timezone: Europe/Berlin}`."""

    cron: str
    timezone: str = "UTC"


@TRIGGERS.register("schedule")
class ScheduleTrigger(Trigger):
    """Every customer matching `when` at each tick of a cron schedule (occurrence: the tick).

    ```yaml
    trigger:
      schedule: { cron: "0 9 * * 1", timezone: Europe/London }
    ```
    """

    Params = ScheduleParams

    def check(self, path: PathKey) -> list[Problem]:
        problems = []
        cron, zone = self.params.cron, self.params.timezone  # type: ignore[attr-defined]
        if not croniter.is_valid(cron):
            problems.append(Problem((*path, "cron"), f"invalid cron expression {cron!r}: expected "
                                    "five fields like \"0 9 * * 1\""))
        if not valid_timezone(zone):
            problems.append(Problem((*path, "timezone"), f"unknown time zone {zone!r}: expected an "
                                    "IANA name like Europe/Berlin"))
        return problems


def valid_timezone(name: str) -> bool:
    """True for an IANA zone name this machine knows."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


class SegmentParams(TriggerParams):
    """`segment: {}`: the edge of `when`, not its level."""


@TRIGGERS.register("segment")
class SegmentTrigger(Trigger):
    """Customers who newly match `when` (occurrence: the time they entered).

    ```yaml
    trigger:
      segment: {}
    when:
      - rfm_segment: { eq: at_risk }
    ```
    """

    Params = SegmentParams
    state_based = True
