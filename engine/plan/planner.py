"""The pure planner: what one enrollment gets, decided from plain values and the run's clock.

No database here (no sqlalchemy, no connection): engine/plan/reader.py reads candidates, customer
records, triggering events and suppressions; this module decides, so every rule is unit-tested
without a database (tests/test_planner.py) and a live run commits exactly what a dry-run shows.

- Holdout: a stable hash of (playbook, customer, occurrence) below the holdout share, so a
  customer's group never changes between a dry-run and the live run.
- Limits: a playbook whose entering count is over `max_enrollments` or `max_percent` of all
  customers is over the limit, with the numbers; it gets no enrollments at all.
- Stages and due times: the actions before the first `wait` are stage 0, due at as-of, and are
  what a run commits now; each `wait` starts the next stage, due after the waits before it
  (written by the run when its wait ends).
- Idempotency keys: from playbook id, version (content hash), customer, occurrence, stage and
  step, so every re-plan gives the same key and any other action a different one.
- Email: a customer without an address is `skipped`; whether an address may be mailed is the
  connector's pure `blocked` check (suppressed), called here and again at send time.
- Templates: every template an action would send (an email's subject and body, inline or
  in files) is rendered here in the one context of `template_context`, so a template that fails
  for one customer marks that action `error`, naming customer and action, before anything is
  sent. `retain preview` renders through the same `Renderer` and takes its status from `action`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jinja2 import Environment

from engine.clock import iso
from engine.errors import TemplateError
from engine.format.playbook import ActionStep, Playbook, Wait
from engine.format.templates import as_context, has_template, render, render_file

UNSUBSCRIBE_URL = "https://retain.example.invalid/unsubscribe?token=made-when-sent"
"""What `unsubscribe_url` is until a message is sent (dry-run, preview): the real link carries a
token made at send time. A URL, so it reads right in an `href` and in `List-Unsubscribe`, and
`.invalid` (RFC 2606) never resolves."""
KEY_PREFIX_CHARS = 48  # of the playbook id and of the customer id, for a readable key


@dataclass(frozen=True)
class PlannedAction:
    """One action for one enrollment, with its rendered fields, due time and idempotency key."""

    step: int  # index in the playbook's `actions:` list (waits count)
    stage: int  # waits before it: stage 0 is committed now, later stages when their wait ends
    kind: str
    run_at: datetime  # when the action is due (as-of plus the waits before it)
    status: str  # planned | skipped | suppressed | error
    fields: Mapping[str, Any]
    key: str
    reason: str | None = None

    @property
    def commit_now(self) -> bool:
        """Whether a live run writes this action now (before the first wait)."""
        return self.stage == 0

    def to_json(self) -> dict[str, Any]:
        """`{"type": "email", "step": 0, ..., "status": ..., "fields": {"to": ..., ...}}`.

        The connector's rendered fields are nested under `fields`, apart from the plan's own keys:
        a points action's `reason` is not a skip reason, and no field can overwrite `key`.
        """
        data = {"type": self.kind, "step": self.step, "stage": self.stage, "key": self.key,
                "commit_now": self.commit_now, "run_at": iso(self.run_at),
                "status": self.status,
                "fields": {k: _plain(v) for k, v in self.fields.items()}}
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

    def errors(self, playbook_id: str) -> list[str]:
        """Actions that could not be planned, as `playbook: reason` lines."""
        return [f"{playbook_id}: {a.reason}" for a in self.actions if a.status == "error"]


@dataclass(frozen=True)
class Scheduled:
    """Where one action sits in the playbook: its step, stage and delay after as-of."""

    step: int
    stage: int
    delay: timedelta
    action: ActionStep


def _plain(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


def schedule(playbook: Playbook) -> tuple[Scheduled, ...]:
    """Every action of the playbook with its stage and its delay (the waits before it)."""
    found, stage, delay = [], 0, timedelta(0)
    for index, step in enumerate(playbook.steps):
        if isinstance(step, Wait):
            stage, delay = stage + 1, delay + step.duration
            continue
        assert isinstance(step, ActionStep)
        found.append(Scheduled(index, stage, delay, step))
    return tuple(found)


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


def action_key(playbook: Playbook, customer_id: str, occurrence: str, stage: int,
               step: int) -> str:
    """The idempotency key of one action: `winback-30d/12347/0.0/<32 hex>`, under 160 chars.

    The hash covers every part in full (playbook id, version, customer, occurrence, stage,
    step), so a re-plan gives the same key and any other action another one; the prefix only
    makes the key readable in the outbox and the provider's logs.
    """
    parts = "\0".join((playbook.id, playbook.version, customer_id, occurrence, str(stage),
                       str(step)))
    digest = hashlib.sha256(parts.encode()).hexdigest()[:32]
    return (f"{playbook.id[:KEY_PREFIX_CHARS]}/{customer_id[:KEY_PREFIX_CHARS]}/"
            f"{stage}.{step}/{digest}")


class Planner:
    """Plans one playbook's enrollments from plain records: no database, only the clock."""

    def __init__(self, playbook: Playbook, as_of: datetime, connectors: Mapping[str, Any],
                 environment: Environment) -> None:
        self.playbook, self.as_of = playbook, as_of
        self.connectors, self.environment = connectors, environment
        self.schedule = schedule(playbook)
        self._files: dict[str, bool] = {}

    def enrollment(self, customer_id: str, occurrence: str, customer: Mapping[str, Any],
                   event: Mapping[str, Any] | None,
                   suppressions: Mapping[str, str]) -> PlannedEnrollment:
        """What this (customer, occurrence) gets: nothing in holdout, else every action."""
        holdout = in_holdout(self.playbook, customer_id, occurrence)
        actions = () if holdout else tuple(self.actions(occurrence, customer, event,
                                                        suppressions))
        return PlannedEnrollment(customer_id, occurrence, holdout,
                                 event["event_id"] if event else None, actions)

    def renderer(self, customer: Mapping[str, Any],
                 event: Mapping[str, Any] | None) -> Renderer:
        """The templates of one enrollment, rendered in its `template_context`."""
        return Renderer(self.environment, template_context(self.playbook, customer, event),
                        self._has_file)

    def actions(self, occurrence: str, customer: Mapping[str, Any],
                event: Mapping[str, Any] | None,
                suppressions: Mapping[str, str]) -> Iterator[PlannedAction]:
        """Each action rendered for this customer, due after the waits before it."""
        renderer = self.renderer(customer, event)  # one context for all of its templates
        for item in self.schedule:
            key = action_key(self.playbook, customer["customer_id"], occurrence, item.stage,
                             item.step)
            yield self.action(item, key, customer, renderer, suppressions)

    def action(self, item: Scheduled, key: str, customer: Mapping[str, Any],
               renderer: Renderer, suppressions: Mapping[str, str]) -> PlannedAction:
        """One action's fields and status; a failing template is an `error`, not a crash."""
        kind, due = item.action.kind, self.as_of + item.delay
        connector = self.connectors[kind]

        def made(status: str, fields: Mapping[str, Any], reason: str | None = None
                 ) -> PlannedAction:
            return PlannedAction(item.step, item.stage, kind, due, status, fields, key, reason)

        try:
            fields = connector.plan(item.action.params, renderer.inline, renderer.file, due)
        except TemplateError as exc:
            where = f"customer {customer['customer_id']}, actions[{item.step}].{kind}"
            return made("error", {}, f"{where}: {exc}")
        if connector.needs_email:
            address = customer.get("email")
            if not address:
                return made("skipped", fields, "no email address")
            fields = {"to": address, **fields}
            blocked = connector.blocked(address, suppressions)
            if blocked is not None:
                return made("suppressed", fields, blocked)
        return made("planned", fields)

    def _has_file(self, name: str) -> bool:
        """Whether templates/NAME exists, asked once per plan (not once per customer)."""
        if name not in self._files:  # in the folder, or in a stored version's templates
            self._files[name] = has_template(self.environment, name)
        return self._files[name]


def template_context(playbook: Playbook, customer: Mapping[str, Any],
                     event: Mapping[str, Any] | None) -> dict[str, Any]:
    """What every template of an action sees (DESIGN 2.4): `customer`, the triggering `event`
    (when there is one), `playbook` and `unsubscribe_url`; wrapped once for all of them."""
    values: dict[str, Any] = {
        "customer": customer, "unsubscribe_url": UNSUBSCRIBE_URL,
        "playbook": {"id": playbook.id, "name": playbook.document.name}}
    if event is not None:
        values["event"] = event
    return as_context(values)


class Renderer:
    """One enrollment's templates in one context: `inline` and `file` are what a connector gets
    as `render` and `render_file` (connectors/base.py), in a plan and in a preview alike."""

    __slots__ = ("context", "environment", "has_file")

    def __init__(self, environment: Environment, context: dict[str, Any],
                 has_file: Callable[[str], bool]) -> None:
        self.environment, self.context, self.has_file = environment, context, has_file

    def inline(self, source: str, *, header: bool = False, html: bool = False) -> str:
        """An inline template (a subject, a body); `html` autoescapes like an `.html.j2` file."""
        return render(self.environment, source, self.context, header=header, html=html)

    def file(self, name: str) -> str | None:
        """templates/NAME rendered, or None when the playbook's templates folder has no NAME."""
        return render_file(self.environment, name, self.context) if self.has_file(name) else None
