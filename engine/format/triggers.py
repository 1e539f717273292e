"""The seven trigger kinds of DESIGN section 2.1: each one a params model, its checks, its SQL.

A trigger decides *who* enters and *which occurrence* they enter for (the occurrence key that
makes re-entry `once` mean "once per episode"). `Trigger.sql` gives the trigger's part of the one
query per playbook (engine/query/evaluate.py): clauses over `customers` (and, for event triggers, a
joined alias of `events`), and the occurrence key as a SQL text expression:

| trigger | fires at `as_of` for | occurrence key |
|---|---|---|
| inactive | last activity (of `activity` types, else the kept fact) at or before as_of - days | that time, `YYYY-MM-DDTHH:MM:SSZ` |
| first_purchase | a purchase in (as_of - lookback, as_of] with no earlier purchase | its event_id |
| negative_feedback | a feedback with score <= max_score in the lookback | its event_id |
| event | an event of `type` matching `where` in the lookback | its event_id |
| date | 09:00 local + offset on the field's month and day, in the lookback | the year |
| schedule | the latest cron tick, if less than 1 hour before as_of | the tick, UTC |
| segment | every customer matching `when` with no open membership | as_of |

Time zones: a customer without a valid IANA `timezone` is treated as UTC. A date trigger on a
time field (like `created_at`) uses its UTC calendar date. February 29 falls on February 28 in
other years. A state trigger with `backfill: false` enrolls only those who cross the line after
the playbook was first enabled (before its first live run: nobody yet).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from engine.clock import iso
from engine.errors import Problem
from engine.format.compile import (
    CompileContext,
    at,
    compile_event_condition,
    customer_field,
    historical_fact,
    refused_conditions,
)
from engine.format.conditions import AllOf, ConditionParser, event_property_type
from engine.format.durations import Duration, SignedDuration
from engine.format.fields import (
    ATTRIBUTE_PREFIX,
    CUSTOMER_FIELDS,
    DATE_TRIGGER_FIELDS,
    FieldType,
    customer_field_type,
    did_you_mean,
)
from engine.format.registry import Registry
from engine.format.yamlsource import PathKey
from engine.store.dialect import Bool, Column, iso_text, json_reading, month_day, scanned
from engine.store.facts import FEEDBACK, PURCHASE, customers, events

ONE_DAY = timedelta(days=1)
LOCAL_HOUR = time(9)  # date triggers fire at 09:00 in the customer's time zone
CATCH_UP = timedelta(hours=1)  # a schedule tick later than this is skipped (RELIABILITY defaults)
MAX_LOOKBACK_DAYS = 400


@dataclass(frozen=True)
class TriggerContext:
    """What a trigger's SQL depends on besides its params: the instant, zones, the first enable."""

    compile: CompileContext
    zones: tuple[str | None, ...] = (None,)  # distinct customers.timezone values (date triggers)
    enabled_at: datetime | None = None  # the playbook's first live enable; None: not yet

    @property
    def as_of(self) -> datetime:
        """The instant evaluated at."""
        return self.compile.as_of


@dataclass(frozen=True)
class TriggerSql:
    """A trigger's part of a playbook's query: clauses, the occurrence key, the event it fired on."""

    where: tuple[Bool, ...]
    occurrence: Column
    event: sa.FromClause | None = None  # an alias of `events` joined on customer_id
    note: str | None = None  # said in the plan, e.g. when a schedule has no tick due
    membership: bool = False  # segment edge: only customers with no open membership enter


class TriggerParams(BaseModel):
    """Base of every trigger's params: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Trigger:
    """A trigger kind: `Params` is its schema; `check` adds what a schema cannot say."""

    kind: ClassVar[str]
    Params: ClassVar[type[TriggerParams]]
    state_based: ClassVar[bool] = False  # enrolls on a state, so `backfill` applies
    # its enrollments are memberships: one open per customer (enrollments.membership)
    membership: ClassVar[bool] = False

    def __init__(self, params: TriggerParams, path: PathKey = ()) -> None:
        """`path` is where the params sit in the document (`("trigger", kind)`), for problems."""
        self.params = params
        self.path = path

    def check(self, path: PathKey) -> list[Problem]:
        """Semantic problems beyond the params model; none by default."""
        return []

    def refused(self) -> list[Problem]:
        """Conditions of the trigger that parse but that SQL cannot express; none by default."""
        return []

    def sql(self, tc: TriggerContext, backfill: bool) -> TriggerSql:
        """This trigger's clauses and occurrence key at `tc.as_of`."""
        raise NotImplementedError

    def wanted(self) -> str:
        """What the trigger asks, in words, for `explain`."""
        raise NotImplementedError

    def actual(self, tc: TriggerContext) -> Column:
        """The customer's value the trigger looks at, for `explain`."""
        raise NotImplementedError


TRIGGERS: Registry[type[Trigger]] = Registry("trigger")


def _last_activity(tc: TriggerContext, activity: list[str] | None) -> Column:
    """Last activity as DESIGN 2.1 defines it: of the listed types, or the kept fact."""
    if activity is None:
        if tc.compile.historical:
            return historical_fact(tc.compile, "last_active_at")
        return customers.c.last_active_at
    ev = events.alias("activity_events")
    latest = (sa.select(sa.func.max(ev.c.occurred_at))
              .where(ev.c.customer_id == customers.c.customer_id, ev.c.type.in_(activity),
                     ev.c.occurred_at <= at(tc.as_of))
              .correlate_except(ev).scalar_subquery())
    return sa.func.coalesce(latest, customers.c.created_at)


def _window(tc: TriggerContext, column: Column, lookback: timedelta) -> tuple[Bool, Bool]:
    return column > at(tc.as_of - lookback), column <= at(tc.as_of)


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

    def sql(self, tc: TriggerContext, backfill: bool) -> TriggerSql:
        last = _last_activity(tc, self.params.activity)  # type: ignore[attr-defined]
        days = timedelta(days=self.params.days)  # type: ignore[attr-defined]
        if backfill:  # everyone ever lapsed: a large share of customers, scanned, not looked up
            where = [scanned(last) <= at(tc.as_of - days)]
        else:  # only episodes whose threshold is crossed after the first enable: the index helps
            where = [last <= at(tc.as_of - days),
                     last > at((tc.enabled_at or tc.as_of) - days)]
        return TriggerSql(tuple(where), iso_text(last))

    def wanted(self) -> str:
        kinds = self.params.activity  # type: ignore[attr-defined]
        what = f"last {'/'.join(kinds)} event" if kinds else "last activity"
        return f"{what} at least {self.params.days} days before as-of"  # type: ignore[attr-defined]

    def actual(self, tc: TriggerContext) -> Column:
        return _last_activity(tc, self.params.activity)  # type: ignore[attr-defined]


class LookbackParams(TriggerParams):
    """Event and date triggers look back a bounded window, so enabling one skips old history."""

    lookback: Duration = ONE_DAY


class EventTriggerBase(Trigger):
    """Triggers that fire on one event: the occurrence is that event's id."""

    event_type: ClassVar[str] = ""

    def event_type_name(self) -> str:
        """The event type this trigger fires on."""
        return self.event_type

    def event_clauses(self, tc: TriggerContext, ev: sa.FromClause) -> list[Bool]:
        """What the event must satisfy beyond its type and the lookback window."""
        return []

    def sql(self, tc: TriggerContext, backfill: bool) -> TriggerSql:
        ev = events.alias("trigger_event")
        where = [ev.c.type == self.event_type_name(),
                 *_window(tc, ev.c.occurred_at, self.params.lookback),  # type: ignore[attr-defined]
                 *self.event_clauses(tc, ev)]
        return TriggerSql(tuple(where), ev.c.event_id, event=ev)

    def wanted(self) -> str:
        lookback = self.params.lookback  # type: ignore[attr-defined]
        return f"a {self.event_type_name()} event{self.condition_words()} in the {_words(lookback)} " \
               "before as-of"

    def condition_words(self) -> str:
        """The event's extra conditions in words."""
        return ""

    def actual(self, tc: TriggerContext) -> Column:
        ev = events.alias("latest_event")
        return (sa.select(sa.func.max(ev.c.occurred_at))
                .where(ev.c.customer_id == customers.c.customer_id,
                       ev.c.type == self.event_type_name(), ev.c.occurred_at <= at(tc.as_of))
                .correlate_except(ev).scalar_subquery())


def _words(delta: timedelta) -> str:
    if delta % timedelta(days=1) == timedelta(0):
        days = delta // timedelta(days=1)
        return "day" if days == 1 else f"{days} days"
    return str(delta)


@TRIGGERS.register("first_purchase")
class FirstPurchaseTrigger(EventTriggerBase):
    """A customer's first `purchase` event (occurrence: that event).

    ```yaml
    trigger:
      first_purchase: {}
    ```
    """

    Params = LookbackParams
    event_type = PURCHASE

    def event_clauses(self, tc: TriggerContext, ev: sa.FromClause) -> list[Bool]:
        earlier = events.alias("earlier_purchase")
        return [~sa.exists().where(
            earlier.c.customer_id == ev.c.customer_id, earlier.c.type == PURCHASE,
            sa.or_(earlier.c.occurred_at < ev.c.occurred_at,
                   sa.and_(earlier.c.occurred_at == ev.c.occurred_at, earlier.c.id < ev.c.id)))]

    def condition_words(self) -> str:
        return " that is the customer's first"


class NegativeFeedbackParams(LookbackParams):
    """`negative_feedback: {max_score: 6}`: an NPS detractor by default."""

    max_score: Annotated[StrictInt, Field(ge=0, le=10)] = 6


@TRIGGERS.register("negative_feedback")
class NegativeFeedbackTrigger(EventTriggerBase):
    """A `feedback` event with `score <= max_score` (occurrence: that event).

    ```yaml
    trigger:
      negative_feedback: { max_score: 6 }
    ```
    """

    Params = NegativeFeedbackParams
    event_type = FEEDBACK

    def event_clauses(self, tc: TriggerContext, ev: sa.FromClause) -> list[Bool]:
        return [ev.c.score <= float(self.params.max_score)]  # type: ignore[attr-defined]

    def condition_words(self) -> str:
        return f" with score <= {self.params.max_score}"  # type: ignore[attr-defined]


class EventParams(LookbackParams):
    """`event: {type: support_ticket, where: [{priority: {eq: high}}]}`."""

    type: Annotated[str, Field(min_length=1)]
    where: list[Any] | None = None


@TRIGGERS.register("event")
class EventTrigger(EventTriggerBase):
    """Any event of `type` whose properties match `where` (occurrence: that event).

    ```yaml
    trigger:
      event: { type: support_ticket, where: [{ priority: { eq: high } }] }
    ```
    """

    Params = EventParams

    def __init__(self, params: TriggerParams, path: PathKey = ("trigger", "event")) -> None:
        """The `where` filter is parsed here, with the trigger, so it is there whatever the call
        order; its problems wait for `check`."""
        super().__init__(params, path)
        parser = ConditionParser(event_property_type, allow_events=False)
        self.where: AllOf = parser.parse_list(params.where, (*path, "where"))  # type: ignore[attr-defined]
        self.where_problems = parser.problems

    def check(self, path: PathKey) -> list[Problem]:
        return list(self.where_problems)

    def refused(self) -> list[Problem]:
        return refused_conditions(self.where, event_scope=True)

    def event_type_name(self) -> str:
        return self.params.type  # type: ignore[attr-defined]

    def event_clauses(self, tc: TriggerContext, ev: sa.FromClause) -> list[Bool]:
        return [compile_event_condition(tc.compile, self.where, ev)] if self.where.items else []

    def condition_words(self) -> str:
        return " matching where" if self.where.items else ""


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

    def value(self, tc: TriggerContext) -> Column:
        """The customer's date (or time) the trigger follows."""
        name = self.params.field  # type: ignore[attr-defined]
        if name.startswith(ATTRIBUTE_PREFIX):
            return json_reading(customers.c.attributes, name[len(ATTRIBUTE_PREFIX):], "time")
        return customer_field(tc.compile, name)

    def sql(self, tc: TriggerContext, backfill: bool) -> TriggerSql:
        name = self.params.field  # type: ignore[attr-defined]
        md = month_day(self.value(tc), CUSTOMER_FIELDS.get(name) == FieldType.DATE)
        by_year: dict[tuple[str, frozenset[str]], list[str | None]] = defaultdict(list)
        for zone_name in tc.zones:  # zones that fire on the same days share one clause
            for year, days in self.anniversaries(tc, _zone(zone_name)).items():
                by_year[(year, frozenset(days))].append(zone_name)
        cases = [(sa.and_(_zone_in(names), md.in_(sorted(days))), sa.literal(year))
                 for (year, days), names in sorted(by_year.items(), key=str)]
        if not cases:
            return TriggerSql((sa.false(),), sa.literal(""))
        return TriggerSql((sa.or_(*(test for test, _ in cases)),), sa.case(*cases))

    def anniversaries(self, tc: TriggerContext, zone: ZoneInfo) -> dict[str, set[str]]:
        """Year -> `MM-DD`s whose 09:00 local (+ offset) falls in (as_of - lookback, as_of]."""
        offset, lookback = self.params.offset, self.params.lookback  # type: ignore[attr-defined]
        lookback = min(lookback, timedelta(days=MAX_LOOKBACK_DAYS))
        low, high = tc.as_of - lookback, tc.as_of
        day = (low - offset).astimezone(zone).date() - timedelta(days=2)
        last = (high - offset).astimezone(zone).date() + timedelta(days=2)
        found: dict[str, set[str]] = defaultdict(set)
        while day <= last:
            fires = datetime.combine(day, LOCAL_HOUR, tzinfo=zone).astimezone(UTC) + offset
            if low < fires <= high:
                found[str(day.year)].add(f"{day:%m-%d}")
                if (day.month, day.day) == (2, 28) and not _leap(day.year):
                    found[str(day.year)].add("02-29")
            day += timedelta(days=1)
        return found

    def wanted(self) -> str:
        offset = self.params.offset  # type: ignore[attr-defined]
        shift = f" {'+' if offset >= timedelta(0) else '-'} {_words(abs(offset))}" if offset else ""
        return (f"month and day of {self.params.field}{shift} at 09:00 local "  # type: ignore[attr-defined]
                f"in the {_words(self.params.lookback)} before as-of")  # type: ignore[attr-defined]

    def actual(self, tc: TriggerContext) -> Column:
        return self.value(tc)


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _zone(name: str | None) -> ZoneInfo:
    """A customer's zone; a missing or unknown name means UTC."""
    if name and valid_timezone(name):
        return ZoneInfo(name)
    return ZoneInfo("UTC")


def _zone_in(names: list[str | None]) -> Bool:
    """The customers in these zones. The date trigger lists every zone, so the index on
    `timezone` would only turn a scan into a million lookups: it is kept out of this test."""
    known = sorted(name for name in names if name is not None)
    tests = [scanned(customers.c.timezone).in_(known)] if known else []
    if None in names:
        tests.append(customers.c.timezone.is_(None))
    return sa.or_(*tests)


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
        from croniter import croniter  # only playbooks with a schedule pay for it

        cron, zone = self.params.cron, self.params.timezone  # type: ignore[attr-defined]
        if not croniter.is_valid(cron):
            problems.append(Problem((*path, "cron"), f"invalid cron expression {cron!r}: expected "
                                    "five fields like \"0 9 * * 1\""))
        if not valid_timezone(zone):
            problems.append(Problem((*path, "timezone"), f"unknown time zone {zone!r}: expected an "
                                    "IANA name like Europe/Berlin"))
        return problems

    def last_tick(self, as_of: datetime) -> datetime:
        """The latest tick at or before `as_of`, iterated in the schedule's zone (DST-safe)."""
        from croniter import croniter

        zone = ZoneInfo(self.params.timezone)  # type: ignore[attr-defined]
        start = (as_of + timedelta(seconds=1)).astimezone(zone)
        tick: datetime = croniter(self.params.cron, start).get_prev(datetime)  # type: ignore[attr-defined]
        return tick.astimezone(UTC)

    def sql(self, tc: TriggerContext, backfill: bool) -> TriggerSql:
        tick = self.last_tick(tc.as_of)
        if tc.as_of - tick >= CATCH_UP:
            note = f"no tick due: the last was {iso(tick)}, more than 1 hour before as-of"
            return TriggerSql((sa.false(),), sa.literal(iso(tick)), note=note)
        return TriggerSql((), sa.literal(iso(tick)), note=f"tick {iso(tick)}")

    def wanted(self) -> str:
        return f"a tick of {self.params.cron!r} ({self.params.timezone}) less than 1 hour " \
               "before as-of"  # type: ignore[attr-defined]

    def actual(self, tc: TriggerContext) -> Column:
        return sa.literal(iso(self.last_tick(tc.as_of)))


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
    membership = True

    def sql(self, tc: TriggerContext, backfill: bool) -> TriggerSql:
        """Membership is kept on enrollments: one stays open (`left_at` NULL) until a live run
        sees the customer no longer match. With `backfill: false`, nobody enters before the first
        live run has recorded who already matches."""
        where = () if backfill or tc.enabled_at else (sa.false(),)
        note = None if where == () else "backfill: false: the first live run records who " \
            "already matches; only later arrivals enter"
        return TriggerSql(where, sa.literal(iso(tc.as_of)), note=note, membership=True)

    def wanted(self) -> str:
        return "matches when, and was not already in the segment"

    def actual(self, tc: TriggerContext) -> Column:
        return sa.literal("see when")
