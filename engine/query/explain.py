"""`retain explain`: why one customer does or does not enter one playbook.

Every clause is evaluated with the same compiled SQL the playbook's query uses (engine/format/compile.py,
engine/format/triggers.py), for the one customer, in one SELECT: what `explain` says is what the
evaluation does. Each clause gets its path, what it wants, the customer's actual value and the
result; combinators (`any`, `all`, `not`) show their own result above their items.

Besides the clauses it shows the trigger's window at as-of (the instants it looks at), for an
event trigger each `where` clause against the triggering event (or, when none fired, the latest
event of the type in the window, so a failing clause shows why), whether an entering occurrence
falls in the holdout (decided by the plan's rule, passed in: query code does not import the
planner), and the latest synced event when as-of is far past it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.clock import iso
from engine.errors import Issue
from engine.format.compile import (
    CompileContext,
    compile_condition,
    compile_event_condition,
    customer_field,
    event_field,
    events_measure,
)
from engine.format.conditions import AllOf, AnyOf, Condition, EventsTest, FieldTest, Not
from engine.format.playbook import Every, Playbook
from engine.format.triggers import (
    MAX_LOOKBACK_DAYS,
    DateTrigger,
    EventTrigger,
    EventTriggerBase,
    InactiveTrigger,
    TriggerContext,
)
from engine.format.yamlsource import dotted
from engine.query.evaluate import candidates, compose, prepare
from engine.query.staleness import stale_as_of_issues
from engine.store.dialect import Bool, Column
from engine.store.facts import customers, events, existed_at

HoldoutRule = Callable[[Playbook, str, str], bool]
"""(playbook, customer_id, occurrence) -> in the control group: engine/plan/planner.in_holdout."""

MONEY_FIELDS = frozenset({"total_spent", "amount"})
"""Fields whose values are money: shown rounded to the cent."""

Term = tuple[str, int, str, Column | None, Bool, bool]  # path, depth, wanted, actual, test, money


@dataclass(frozen=True)
class Clause:
    """One line of an explanation."""

    path: str
    depth: int
    wanted: str
    actual: Any
    result: bool
    money: bool = False  # the actual value is money: shown to the cent


@dataclass(frozen=True)
class Window:
    """The instants the trigger looks at, as of the explained instant: `(low, high]`."""

    words: str
    low: datetime | None
    high: datetime

    def to_json(self) -> dict[str, Any]:
        """`{"from": ..., "to": ..., "text": ...}`; `from` is null when unbounded."""
        return {"from": iso(self.low) if self.low else None, "to": iso(self.high),
                "text": self.words}


@dataclass(frozen=True)
class Explanation:
    """The clauses, and the verdict with the occurrences entered or kept out by re-entry."""

    playbook: Playbook
    customer_id: str
    as_of: datetime
    historical: bool
    clauses: list[Clause]
    entering: list[str]  # occurrence keys the customer enters for
    kept_out: list[str]  # occurrence keys trigger and when allow but re-entry refuses
    existed: bool  # the customer was created by as_of
    holdout: list[str]  # entering occurrence keys in the control group: they get nothing
    window: Window | None = None
    event: dict[str, Any] | None = None  # the event the `where` clauses were checked against
    warnings: tuple[Issue, ...] = ()  # e.g. as-of far past the latest event

    def to_json(self) -> dict[str, Any]:
        """The explanation as plain data."""
        return {"playbook": self.playbook.id, "customer_id": self.customer_id,
                "as_of": iso(self.as_of), "historical": self.historical,
                "enters": bool(self.entering), "occurrences": self.entering,
                "holdout": bool(self.entering) and set(self.entering) <= set(self.holdout),
                "holdout_occurrences": self.holdout,
                "kept_out_by_reentry": self.kept_out, "existed": self.existed,
                "window": self.window.to_json() if self.window else None,
                "trigger_event": self.event and {k: show_value(v) for k, v in self.event.items()},
                "clauses": [{"path": c.path, "depth": c.depth, "wanted": c.wanted,
                             "actual": show_value(c.actual, money=c.money), "result": c.result}
                            for c in self.clauses]}


def show_value(value: Any, *, money: bool = False) -> Any:
    """A value as people read it: times in ISO, durations in days, money to the cent.

    Other floats lose only their binary noise (a sum reads 155.68, not 155.67999999999998).
    """
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return words(value)
    if isinstance(value, float):
        return round(value, 2 if money else 10)
    return value


def words(delta: timedelta) -> str:
    """A duration as the playbook would write it (`30d`, `12h`, `15m`, else seconds)."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def explain(connection: sa.Connection, playbook: Playbook, customer_id: str,
            as_of: datetime, *, holdout: HoldoutRule) -> Explanation:
    """Evaluate each clause of `playbook` for one customer at `as_of` (reads only)."""
    moment = prepare(connection, as_of, [playbook])
    tc = moment.trigger_context(playbook.id)
    part = playbook.trigger.sql(tc, playbook.document.backfill)
    if part.event is None:
        fired: Bool = sa.and_(sa.true(), *part.where)
    else:
        fired = sa.exists().where(part.event.c.customer_id == customers.c.customer_id, *part.where)
    kind = next(iter(playbook.document.trigger))
    terms: list[Term] = [(f"trigger.{kind}", 0, playbook.trigger.wanted(),
                          playbook.trigger.actual(tc), fired, False)]
    _walk(tc.compile, playbook.when, 0, terms)
    columns = []
    for index, (_, _, _, actual, test, _) in enumerate(terms):
        columns.append((actual if actual is not None else sa.null()).label(f"a{index}"))
        columns.append(test.label(f"t{index}"))
    columns.append(existed_at(as_of).label("existed"))
    row = connection.execute(sa.select(*columns).where(
        customers.c.customer_id == customer_id)).mappings().one()
    clauses = [Clause(path, depth, wanted, row[f"a{i}"], bool(row[f"t{i}"]), money)
               for i, (path, depth, wanted, _, _, money) in enumerate(terms)]
    found = list(candidates(connection, compose(playbook, tc, part, customer_id)))
    allowed = list(candidates(connection, compose(playbook, tc, part, customer_id,
                                                  reentry=False)))
    entering = [c.occurrence for c in found]
    ref = next((c.event_ref for c in [*found, *allowed] if c.event_ref is not None), None)
    event, event_clauses = _trigger_event(connection, tc, playbook, customer_id, ref)
    clauses[1:1] = event_clauses
    keys = [c.occurrence for c in allowed]
    clauses.append(Clause("reentry", 0, _reentry_words(playbook), ", ".join(keys) or None,
                          bool(entering) or not keys))
    return Explanation(playbook, customer_id, as_of, moment.historical, clauses, entering,
                       [key for key in keys if key not in entering], bool(row["existed"]),
                       [key for key in entering if holdout(playbook, customer_id, key)],
                       trigger_window(playbook, tc), event,
                       tuple(stale_as_of_issues(as_of, moment)))


def trigger_window(playbook: Playbook, tc: TriggerContext) -> Window | None:
    """The instants the trigger looks at as of `tc.as_of` (None: a schedule or segment trigger)."""
    trigger, as_of = playbook.trigger, tc.as_of
    if isinstance(trigger, InactiveTrigger):
        days = trigger.params.days  # type: ignore[attr-defined]
        kinds = trigger.params.activity  # type: ignore[attr-defined]
        what = f"last {'/'.join(kinds)} event" if kinds else "last activity"
        high = as_of - timedelta(days=days)
        text = f"{what} at or before {iso(high)} ({days} days before as-of {iso(as_of)})"
        if playbook.document.backfill:
            return Window(text, None, high)
        low = (tc.enabled_at or as_of) - timedelta(days=days)
        return Window(f"{text}, after {iso(low)} (backfill: false: only episodes since the "
                      "first enable)", low, high)
    if isinstance(trigger, EventTriggerBase):
        low = as_of - trigger.params.lookback  # type: ignore[attr-defined]
        return Window(f"{trigger.event_type_name()} events in ({iso(low)}, {iso(as_of)}] "
                      f"(lookback {words(as_of - low)})", low, as_of)
    if isinstance(trigger, DateTrigger):
        lookback = min(trigger.params.lookback,  # type: ignore[attr-defined]
                       timedelta(days=MAX_LOOKBACK_DAYS))
        low = as_of - lookback
        return Window(f"{trigger.wanted().split(' in the ')[0]} in ({iso(low)}, {iso(as_of)}] "
                      f"(lookback {words(lookback)})", low, as_of)
    return None


def _trigger_event(connection: sa.Connection, tc: TriggerContext, playbook: Playbook,
                   customer_id: str, ref: int | None
                   ) -> tuple[dict[str, Any] | None, list[Clause]]:
    """The event an event trigger fired on (else the latest of its type in the window, else the
    latest up to as-of) and its `where` clauses evaluated against it."""
    trigger = playbook.trigger
    if not isinstance(trigger, EventTriggerBase):
        return None, []
    ev = events.alias("explained_event")
    if ref is None:
        low = tc.as_of - trigger.params.lookback  # type: ignore[attr-defined]
        latest = connection.execute(
            sa.select(ev.c.id).where(ev.c.customer_id == customer_id,
                                     ev.c.type == trigger.event_type_name(),
                                     ev.c.occurred_at <= tc.as_of)
            .order_by((ev.c.occurred_at > low).desc(), ev.c.occurred_at.desc(), ev.c.id.desc())
            .limit(1)).scalar()
        ref = latest
    kind = next(iter(playbook.document.trigger))
    if ref is None:
        return None, [Clause(f"trigger.{kind}.event", 1, f"a {trigger.event_type_name()} event",
                             None, False)]
    terms: list[Term] = []
    if isinstance(trigger, EventTrigger) and trigger.where.items:
        _walk_event(tc.compile, ev, trigger.where, 1, terms)
    elif not isinstance(trigger, EventTrigger) and trigger.condition_words():
        (test, *_) = trigger.event_clauses(tc, ev) or [sa.true()]
        terms.append((f"trigger.{kind}.event", 1, trigger.condition_words().strip(),
                      ev.c.score if kind == "negative_feedback" else None, test, False))
    columns = [ev.c.event_id, ev.c.occurred_at]
    for index, (_, _, _, actual, test, _) in enumerate(terms):
        columns += [(actual if actual is not None else sa.null()).label(f"a{index}"),
                    test.label(f"t{index}")]
    row = connection.execute(sa.select(*columns).where(ev.c.id == ref)).mappings().one()
    event = {"event_id": row["event_id"], "occurred_at": row["occurred_at"]}
    return event, [Clause(path, depth, wanted, row[f"a{i}"], bool(row[f"t{i}"]), money)
                   for i, (path, depth, wanted, _, _, money) in enumerate(terms)]


def _reentry_words(playbook: Playbook) -> str:
    reentry = playbook.document.reentry
    if isinstance(reentry, Every):
        return f"not enrolled for this occurrence, nor within {words(reentry.every)} before"
    return "not enrolled before for this occurrence"


def _walk_event(ctx: CompileContext, ev: sa.FromClause, condition: Condition, depth: int,
                terms: list[Term]) -> None:
    """An event trigger's `where:` clauses, each against the event's own values."""
    if isinstance(condition, AllOf) and condition.path[-1:] == ("where",):
        for item in condition.items:
            _walk_event(ctx, ev, item, depth, terms)
        return
    test = compile_event_condition(ctx, condition, ev)
    path = dotted(condition.path)
    if isinstance(condition, FieldTest):
        terms.append((path, depth, f"{condition.operator} {_wanted_value(condition.value)}",
                      event_field(ev, condition.field), test, condition.field in MONEY_FIELDS))
        return
    items = condition.items if isinstance(condition, AllOf | AnyOf) else (condition.item,)  # type: ignore[attr-defined]
    terms.append((path, depth, _combinator_words(condition), None, test, False))
    for item in items:
        _walk_event(ctx, ev, item, depth + 1, terms)


def _walk(ctx: CompileContext, condition: Condition, depth: int, terms: list[Term]) -> None:
    """Clauses in reading order; the `when:` list itself is not a line of its own."""
    if isinstance(condition, AllOf) and condition.path == ("when",):
        for item in condition.items:
            _walk(ctx, item, depth, terms)
        return
    path = dotted(condition.path)
    test = compile_condition(ctx, condition)
    if isinstance(condition, FieldTest):
        wanted = f"{condition.operator} {_wanted_value(condition.value)}"
        terms.append((path, depth, wanted, customer_field(ctx, condition.field), test,
                      condition.field in MONEY_FIELDS))
    elif isinstance(condition, EventsTest):
        window = f" within {words(condition.within)}" if condition.within else ""
        what = f"{condition.type or 'any'} events{window}"
        measure = "count" if condition.measure == "count" else f"sum of {condition.sum_field}"
        tests = ", ".join(f"{name} {_wanted_value(value)}" for name, value in condition.tests)
        terms.append((path, depth, f"{measure} of {what}: {tests}",
                      events_measure(ctx, condition), test, condition.sum_field in MONEY_FIELDS))
    else:
        terms.append((path, depth, _combinator_words(condition), None, test, False))
        items = condition.items if isinstance(condition, AllOf | AnyOf) else (condition.item,)  # type: ignore[attr-defined]
        for item in items:
            _walk(ctx, item, depth + 1, terms)


def _combinator_words(condition: Condition) -> str:
    if isinstance(condition, Not):
        return "not (the item below)"
    return f"{'any of' if isinstance(condition, AnyOf) else 'all of'} the items below"


def _wanted_value(value: Any) -> str:
    """A wanted value as the playbook spells it: lists in brackets, true/false in lower case."""
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_wanted_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(show_value(value))
