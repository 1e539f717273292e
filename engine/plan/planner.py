"""The plan (DESIGN 4): who enters which playbook at `as_of`, and what each would get.

A dry-run prints the plan; a live run commits the same object (enrollments and outbox rows), so
what a dry-run shows is what would happen (DESIGN 3). Planning only reads: the per-playbook
query (engine/query/evaluate.py) finds who enters, then, for the enrollments asked for (the first
`show`, or all), the planner reads those customers and triggering events in batches and renders
each action's fields. Deterministic: the same database and as_of give the same plan.

- Holdout: a stable hash of (playbook, customer, occurrence) below the holdout share, so a
  customer's group never changes between a dry-run and the live run.
- Limits: a playbook whose entering count is over `max_enrollments` or `max_percent` of all
  customers is marked over the limit (a live run enrolls no one in it) with the numbers.
- Email: a customer without an address, or whose address is suppressed (any case), is shown
  with the action skipped and why.
- A template that fails for one customer marks that action `error`, naming customer and action.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from jinja2 import Environment

from engine.clock import iso
from engine.errors import TemplateError
from engine.format.compile import DERIVED_FACTS, CompileContext, historical_fact
from engine.format.fields import CUSTOMER_FIELDS
from engine.format.playbook import ActionStep, Playbook, Wait
from engine.format.registry import load_connectors
from engine.format.templates import make_environment, render
from engine.format.validation import templates_dir
from engine.query.evaluate import Candidate, Moment, compose, count_and_first, prepare
from engine.store.facts import customers, events, existed_at
from engine.store.tables import Suppression

BATCH = 500
suppressions: sa.Table = Suppression.__table__  # type: ignore[assignment]
UNSUBSCRIBE_PLACEHOLDER = "(unsubscribe link, made when the email is sent)"


@dataclass(frozen=True)
class PlannedAction:
    """One step's action for one enrollment, with its rendered fields."""

    step: int
    kind: str
    run_at: datetime  # when the action is due to run (after the steps' waits)
    status: str  # planned | skipped | suppressed | error
    fields: Mapping[str, Any]
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """`{"type": "email", "step": 0, "run_at": ..., "status": ..., "subject": ...}`."""
        data = {"type": self.kind, "step": self.step, "run_at": iso(self.run_at),
                "status": self.status, **{k: _plain(v) for k, v in self.fields.items()}}
        if self.reason:
            data["reason"] = self.reason
        return data


@dataclass(frozen=True)
class PlannedEnrollment:
    """A customer entering a playbook for one occurrence, and what they would get."""

    customer_id: str
    occurrence: str
    holdout: bool
    event_id: str | None
    actions: tuple[PlannedAction, ...]

    def to_json(self) -> dict[str, Any]:
        """The enrollment as the `--json` document spells it."""
        data: dict[str, Any] = {"customer_id": self.customer_id, "occurrence": self.occurrence,
                                "holdout": self.holdout}
        if self.event_id is not None:
            data["event_id"] = self.event_id
        data["actions"] = [action.to_json() for action in self.actions]
        return data


@dataclass
class PlaybookPlan:
    """One playbook's part of the plan."""

    playbook: Playbook
    entering: int = 0
    enrollments: list[PlannedEnrollment] = field(default_factory=list)
    over_limit: str | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The playbook as the `--json` document spells it."""
        p = self.playbook
        return {"id": p.id, "name": p.document.name, "version": p.version, "file": p.file,
                "priority": p.document.priority, "entering": self.entering,
                "shown": len(self.enrollments), "over_limit": self.over_limit, "note": self.note,
                "enrollments": [e.to_json() for e in self.enrollments]}


@dataclass
class Plan:
    """Every enabled playbook's plan at one instant."""

    moment: Moment
    playbooks: list[PlaybookPlan]
    disabled: list[str]

    @property
    def errors(self) -> list[str]:
        """Every action that could not be planned, as `playbook: reason` lines."""
        return [f"{pp.playbook.id}: {action.reason}" for pp in self.playbooks
                for enrollment in pp.enrollments for action in enrollment.actions
                if action.status == "error"]

    def to_json(self) -> dict[str, Any]:
        """`{"as_of": ..., "playbooks": [{"id": ..., "enrollments": [...]}, ...]}`."""
        latest = self.moment.latest_event
        return {"as_of": iso(self.moment.as_of), "historical": self.moment.historical,
                "latest_event": iso(latest) if latest else None,
                "playbooks": [pp.to_json() for pp in self.playbooks], "disabled": self.disabled}


def _plain(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


def make_plan(connection: sa.Connection, playbooks: list[Playbook], as_of: datetime, *,
              customer_id: str | None = None, show: int | None = None,
              progress: Callable[[int], object] | None = None) -> Plan:
    """Evaluate every enabled playbook at `as_of` and plan the first `show` enrollments (None: all).

    Reads only; the caller's transaction sees no writes from here.
    """
    active = sorted((p for p in playbooks if p.document.enabled),
                    key=lambda p: (-p.document.priority, p.id))
    moment = prepare(connection, as_of, active)
    total: int | None = None
    connectors = {kind: cls() for kind, cls in load_connectors().items()}
    plans = []
    for playbook in active:
        tc = moment.trigger_context(playbook.id)
        part = playbook.trigger.sql(tc, playbook.document.backfill)
        result = PlaybookPlan(playbook, note=part.note)
        result.entering, kept = count_and_first(
            connection, compose(playbook, tc, part, customer_id), show)
        limits = playbook.document.limits
        if limits and limits.max_percent is not None and total is None:
            total = connection.execute(sa.select(sa.func.count()).where(existed_at(as_of))).scalar_one()
        result.over_limit = over_limit(playbook, result.entering, total)
        planner = _Planner(connection, playbook, moment, connectors)
        result.enrollments = list(planner.enrollments(kept))
        plans.append(result)
        if progress is not None:
            progress(1)
    disabled = sorted(p.id for p in playbooks if not p.document.enabled)
    return Plan(moment, plans, disabled)


def over_limit(playbook: Playbook, entering: int, total_customers: int | None) -> str | None:
    """Why a run would enroll no one in this playbook (its `limits`), or None."""
    limits = playbook.document.limits
    if limits is None:
        return None
    if limits.max_enrollments is not None and entering > limits.max_enrollments:
        return (f"{entering:,} would enter, over limits.max_enrollments {limits.max_enrollments:,}"
                ": a live run enrolls no one")
    if limits.max_percent is not None and total_customers is not None:
        allowed = math.floor(limits.max_percent * total_customers)
        if entering > allowed:
            return (f"{entering:,} would enter, over limits.max_percent "
                    f"{limits.max_percent * 100:g}% = {allowed:,} of {total_customers:,} "
                    "customers: a live run enrolls no one")
    return None


def in_holdout(playbook: Playbook, customer_id: str, occurrence: str) -> bool:
    """Whether this enrollment is in the control group: stable across runs and machines."""
    share = playbook.document.holdout
    if not share:
        return False
    digest = hashlib.sha256(f"{playbook.id}\0{customer_id}\0{occurrence}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def customer_records(connection: sa.Connection, ctx: CompileContext,
                     ids: list[str]) -> dict[str, dict[str, Any]]:
    """Customers by id as templates and explain see them: fields, facts as of ctx, attributes."""
    columns = [historical_fact(ctx, name).label(name)
               if ctx.historical and name in DERIVED_FACTS else customers.c[name]
               for name in CUSTOMER_FIELDS]
    records = {}
    for start in range(0, len(ids), BATCH):
        query = sa.select(*columns, customers.c.attributes).where(
            customers.c.customer_id.in_(ids[start:start + BATCH]))
        for row in connection.execute(query).mappings():
            record = dict(row)
            # Sums of float amounts carry binary noise (49.989999999999995); money reads in cents.
            record["total_spent"] = round(record["total_spent"] or 0.0, 2)
            records[row["customer_id"]] = record
    return records


def _event_records(connection: sa.Connection, refs: list[int]) -> dict[int, dict[str, Any]]:
    """Triggering events by row id; `amount` and `score` also appear among the properties."""
    records = {}
    for start in range(0, len(refs), BATCH):
        query = sa.select(events).where(events.c.id.in_(refs[start:start + BATCH]))
        for row in connection.execute(query).mappings():
            properties = dict(row["properties"] or {})
            typed = {name: _number(row[name]) for name in ("amount", "score")}
            properties.update({k: v for k, v in typed.items() if v is not None})
            records[row["id"]] = {"event_id": row["event_id"], "customer_id": row["customer_id"],
                                  "type": row["type"], "occurred_at": row["occurred_at"],
                                  **typed, "properties": properties}
    return records


def _number(value: float | None) -> float | int | None:
    """A typed number as the source wrote it: a score of 6 reads `6`, not `6.0`."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _suppressed(connection: sa.Connection, emails: list[str]) -> dict[str, str]:
    """Lower-cased address -> reason, for those of `emails` that get no mail."""
    found: dict[str, str] = {}
    wanted = sorted({email.lower() for email in emails})
    for start in range(0, len(wanted), BATCH):
        query = sa.select(suppressions.c.email, suppressions.c.reason).where(
            suppressions.c.email.in_(wanted[start:start + BATCH]))
        found.update((email, reason) for email, reason in connection.execute(query))
    return found


class _Planner:
    """Plans the enrollments of one playbook: contexts read in batches, actions rendered."""

    def __init__(self, connection: sa.Connection, playbook: Playbook, moment: Moment,
                 connectors: Mapping[str, Any]) -> None:
        self.connection, self.playbook, self.moment = connection, playbook, moment
        self.connectors = connectors
        folder = templates_dir(Path(playbook.file))
        self.environment: Environment = make_environment(folder)

    def enrollments(self, kept: list[Candidate]) -> Iterator[PlannedEnrollment]:
        ctx = CompileContext(self.moment.as_of, self.moment.historical)
        for start in range(0, len(kept), BATCH):
            batch = kept[start:start + BATCH]
            people = customer_records(self.connection, ctx, [c.customer_id for c in batch])
            found = _event_records(self.connection, [c.event_ref for c in batch
                                                     if c.event_ref is not None])
            blocked = _suppressed(self.connection, [p["email"] for p in people.values()
                                                    if p["email"]])
            for candidate in batch:
                event = found.get(candidate.event_ref) if candidate.event_ref else None
                yield self.enrollment(candidate, people[candidate.customer_id], event, blocked)

    def enrollment(self, candidate: Candidate, customer: dict[str, Any],
                   event: dict[str, Any] | None, blocked: Mapping[str, str]) -> PlannedEnrollment:
        holdout = in_holdout(self.playbook, candidate.customer_id, candidate.occurrence)
        actions = () if holdout else tuple(self.actions(customer, event, blocked))
        return PlannedEnrollment(candidate.customer_id, candidate.occurrence, holdout,
                                 event["event_id"] if event else None, actions)

    def actions(self, customer: dict[str, Any], event: dict[str, Any] | None,
                blocked: Mapping[str, str]) -> Iterator[PlannedAction]:
        context = {"customer": customer, "playbook": {"id": self.playbook.id,
                                                      "name": self.playbook.document.name},
                   "unsubscribe_url": UNSUBSCRIBE_PLACEHOLDER}
        if event is not None:
            context["event"] = event

        def render_for(source: str, *, header: bool = False) -> str:
            return render(self.environment, source, context, header=header)

        due = self.moment.as_of
        for index, step in enumerate(self.playbook.steps):
            if isinstance(step, Wait):
                due = due + step.duration
                continue
            assert isinstance(step, ActionStep)
            yield self.action(index, step, due, customer, render_for, blocked)

    def action(self, index: int, step: ActionStep, due: datetime, customer: dict[str, Any],
               render_for: Any, blocked: Mapping[str, str]) -> PlannedAction:
        connector = self.connectors[step.kind]
        where = f"customer {customer['customer_id']}, actions[{index}].{step.kind}"
        try:
            fields = connector.plan(step.params, render_for, due)
        except TemplateError as exc:
            return PlannedAction(index, step.kind, due, "error", {}, f"{where}: {exc}")
        if connector.needs_email:
            address = customer.get("email")
            if not address:
                return PlannedAction(index, step.kind, due, "skipped", fields, "no email address")
            fields = {"to": address, **fields}
            if address.lower() in blocked:
                return PlannedAction(index, step.kind, due, "suppressed", fields,
                                     f"address is suppressed ({blocked[address.lower()]})")
        return PlannedAction(index, step.kind, due, "planned", fields)
