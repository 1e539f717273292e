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
  in files) is rendered here in one context (`Planner.renderer`), so a template that fails
  for one customer marks that action `dead` (flagged `error`), naming customer and action,
  before anything is sent: a live run dead-letters that action only. `retain preview` renders
  through the same `Renderer` and takes its status from `action`.
- Caps and quiet hours (engine/plan/delivery.py): an action in its channel's quiet hours is
  `deferred` to the window's end; an action of the stage committed now that does not fit its
  channel's cap is `capped`, judged against the outbox (`booked`) and what higher-priority
  playbooks got in this run (the `CapLedger`). Later stages are capped when their wait ends.
- Live payloads: with `unsubscribe` (address -> link), templates see the real link and each
  `planned`/`deferred` action's fields are the connector's `payload` (what the outbox freezes)
  instead of `plan`; statuses, keys and due times are the same either way (dry-run == live).

Statuses are the words of engine/store/status.py: planned, deferred, capped, skipped,
suppressed, dead.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from jinja2 import Environment

from engine.clock import iso
from engine.errors import TemplateError
from engine.format.playbook import ActionStep, Playbook, Wait
from engine.format.templates import (
    as_value,
    has_template,
    inline_names,
    render,
    render_file,
)
from engine.plan.delivery import Booking, CapLedger, DeliveryRules
from engine.store.status import CAPPED, DEAD, DEFERRED, PLANNED, SKIPPED, SUPPRESSED

UNSUBSCRIBE_URL = "https://retain.example.invalid/unsubscribe?token=made-when-sent"
"""What `unsubscribe_url` is until a message is sent (dry-run, preview): the real link carries a
token made at send time. A URL, so it reads right in an `href` and in `List-Unsubscribe`, and
`.invalid` (RFC 2606) never resolves."""
KEY_PREFIX_CHARS = 48  # of the playbook id and of the customer id, for a readable key
SENDABLE = (PLANNED, DEFERRED)
"""The statuses a live run hands to the dispatcher (and that take a cap slot)."""
Unsubscribe = Callable[[str], str]
"""An address -> its unsubscribe link (engine/consent.py makes them for a live run)."""
Booked = Mapping[str, Sequence[Booking]]
"""A customer's outbox rows that fill a cap, by channel (engine/plan/reader.py `bookings`)."""


@dataclass(frozen=True)
class PlannedAction:
    """One action for one enrollment, with its rendered fields, due time and idempotency key."""

    step: int  # index in the playbook's `actions:` list (waits count)
    stage: int  # waits before it: stage 0 is committed now, later stages when their wait ends
    kind: str
    run_at: datetime  # when it is due: as-of plus the waits before it, or after quiet hours
    status: str  # planned | deferred | capped | skipped | suppressed | dead (status.py)
    fields: Mapping[str, Any]  # plan() fields; a live plan's sendable ones: payload()
    key: str
    reason: str | None = None
    error: bool = False  # dead because it cannot be made (a template that fails): a plan error

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
                "commit_now": self.commit_now, "run_at": _iso(self.run_at),
                "status": self.status,
                "fields": plain_fields(self.fields)}
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
        return [f"{playbook_id}: {a.reason}" for a in self.actions if a.error]


@dataclass(frozen=True)
class Scheduled:
    """Where one action sits in the playbook: its step, stage and delay after as-of."""

    step: int
    stage: int
    delay: timedelta
    action: ActionStep


def plain_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """An action's fields as plain JSON data (times as ISO text): its `to_json` `fields`, and
    the payload a live run writes to the outbox."""
    return {k: _iso(v) if isinstance(v, datetime) else v for k, v in fields.items()}


_iso = lru_cache(maxsize=4096)(iso)
"""`iso`, remembered: a plan's due times are a few instants shared by every enrollment (as-of
plus the waits), spelled once each instead of once per action."""


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
    """Plans one playbook's enrollments from plain records: no database, only the clock.

    `rules` (caps, quiet hours), `ledger` (what this run gave each customer, shared by every
    playbook of the run) and `rank` (this playbook's place in priority order) decide deferred
    and capped actions; `unsubscribe` makes it a live plan (real links, payload fields).
    `commit_stage` is the stage a run commits now, the one caps are judged for: 0 for a new
    enrollment, the next stage for one whose wait is over. `sends_at` is the run's moment when
    it is later than `as_of` plus the waits (a stage resumed by a late run): quiet hours are
    judged then, when the action will really go.
    """

    def __init__(self, playbook: Playbook, as_of: datetime, connectors: Mapping[str, Any],
                 environment: Environment, *, rules: DeliveryRules | None = None,
                 ledger: CapLedger | None = None, rank: int = 0,
                 unsubscribe: Unsubscribe | None = None, commit_stage: int = 0,
                 sends_at: datetime | None = None) -> None:
        self.playbook, self.as_of, self.sends_at = playbook, as_of, sends_at
        self.connectors, self.environment = connectors, environment
        self.rules = rules if rules is not None else DeliveryRules()
        self.ledger = ledger if ledger is not None else CapLedger()
        self.rank, self.unsubscribe, self.commit_stage = rank, unsubscribe, commit_stage
        self.schedule = schedule(playbook)
        self._files: dict[str, bool] = {}
        self._playbook = as_value("playbook", {"id": playbook.id, "name": playbook.document.name})

    def enrollment(self, customer_id: str, occurrence: str, customer: Mapping[str, Any],
                   event: Mapping[str, Any] | None, suppressions: Mapping[str, str],
                   booked: Booked | None = None) -> PlannedEnrollment:
        """What this (customer, occurrence) gets: nothing in holdout, else every action."""
        holdout = in_holdout(self.playbook, customer_id, occurrence)
        actions = () if holdout else tuple(self.actions(occurrence, customer, event,
                                                        suppressions, booked))
        return PlannedEnrollment(customer_id, occurrence, holdout,
                                 event["event_id"] if event else None, actions)

    def renderer(self, customer: Mapping[str, Any],
                 event: Mapping[str, Any] | None) -> Renderer:
        """The templates of one enrollment, rendered in one context (DESIGN 2.4: `customer`, the triggering `event`,
        `playbook`, `unsubscribe_url`; made lazily: a
        live plan signs the customer's unsubscribe link when something reads it)."""
        values: dict[str, Any] = {"customer": customer, "playbook": self._playbook}
        if event is not None:
            values["event"] = event
        if self.unsubscribe is None:
            values["unsubscribe_url"] = UNSUBSCRIBE_URL
            return Renderer(self.environment, values, self._has_file)
        return Renderer(self.environment, values, self._has_file, lambda: self.link(customer))

    def link(self, customer: Mapping[str, Any]) -> str:
        """The customer's `unsubscribe_url`: the placeholder unless live; live and without an
        address, empty (there is nothing to unsubscribe)."""
        if self.unsubscribe is None:
            return UNSUBSCRIBE_URL
        address = customer.get("email")
        return self.unsubscribe(address) if address else ""

    def actions(self, occurrence: str, customer: Mapping[str, Any],
                event: Mapping[str, Any] | None, suppressions: Mapping[str, str],
                booked: Booked | None = None) -> Iterator[PlannedAction]:
        """Each action rendered for this customer, due after the waits before it."""
        renderer = self.renderer(customer, event)  # one context for all of its templates
        for item in self.schedule:
            key = action_key(self.playbook, customer["customer_id"], occurrence, item.stage,
                             item.step)
            yield self.action(item, key, customer, renderer, suppressions, booked)

    def action(self, item: Scheduled, key: str, customer: Mapping[str, Any],
               renderer: Renderer, suppressions: Mapping[str, str],
               booked: Booked | None = None) -> PlannedAction:
        """One action's status, due time and fields; a failing template is `dead`, not a crash.

        Quiet hours move the due time first (deferred) and the templates are rendered for
        that time; a template that fails makes the action dead whatever else holds (the
        dry-run fails for it), else no address or a suppressed one keeps it from going
        (skipped, suppressed, at the original time), else the cap is judged when it goes: the
        deferred time, or for a stage resumed late the run's moment (its due time has passed).
        """
        kind, due = item.action.kind, self.as_of + item.delay
        connector = self.connectors[kind]
        blocked = self._blocked(connector, customer, suppressions)
        sends = max(due, self.sends_at) if self.sends_at is not None else due
        moved = None if blocked else self.rules.defer(kind, sends, customer.get("timezone"))
        at = moved.at if moved else due

        def made(status: str, fields: Mapping[str, Any], reason: str | None = None, *,
                 when: datetime = at, error: bool = False) -> PlannedAction:
            return PlannedAction(item.step, item.stage, kind, when, status, fields, key, reason,
                                 error)

        try:  # an address or name the message cannot carry: dead in dry-run and live alike
            if blocked is None and (problem := connector.recipient_problem(customer)):
                raise TemplateError(problem)
            fields = self._fields(connector, item, renderer, at, key, customer,
                                  live=blocked is None and self.unsubscribe is not None)
        except (TemplateError, ValueError) as exc:  # ValueError: a header the email refuses
            where = f"customer {customer['customer_id']}, actions[{item.step}].{kind}"
            return made(DEAD, {}, f"{where}: {exc}", when=due, error=True)
        if blocked is not None:
            return made(blocked[0], fields, blocked[1], when=due)
        capped = self._cap(item, kind, moved.at if moved else sends, key, customer, booked)
        if capped is not None:
            return made(CAPPED, fields, capped)
        return made(DEFERRED if moved else PLANNED, fields, moved.reason if moved else None)

    def _blocked(self, connector: Any, customer: Mapping[str, Any],
                 suppressions: Mapping[str, str]) -> tuple[str, str] | None:
        """(skipped | suppressed, why) for a mail action this customer cannot get, or None."""
        if not connector.needs_email:
            return None
        address = customer.get("email")
        if not address:
            return SKIPPED, "no email address"
        why = connector.blocked(address, suppressions)
        return None if why is None else (SUPPRESSED, why)

    def _fields(self, connector: Any, item: Scheduled, renderer: Renderer, at: datetime,
                key: str, customer: Mapping[str, Any], *, live: bool) -> Mapping[str, Any]:
        """The connector's `plan` fields (with `to` for mail), or live its frozen `payload`."""
        params = item.action.params
        if live:
            return connector.payload(params, renderer.inline, renderer.file, at, key=key,
                                     customer=customer,
                                     unsubscribe_url=renderer.unsubscribe_url)
        fields = connector.plan(params, renderer.inline, renderer.file, at)
        address = customer.get("email")
        return {"to": address, **fields} if connector.needs_email and address else fields

    def _cap(self, item: Scheduled, kind: str, at: datetime, key: str,
             customer: Mapping[str, Any], booked: Booked | None) -> str | None:
        """Why this action does not fit its channel's cap, or None (then it takes a slot).

        Only the stage committed now takes or is refused a slot; a later stage is judged
        when its wait ends and it is committed."""
        if kind not in self.rules.caps or item.stage != self.commit_stage:
            return None
        customer_id = customer["customer_id"]
        taken = [*(booked or {}).get(kind, ()), *self.ledger.booked(kind, customer_id)]
        reason = self.rules.cap(kind, at, key, taken)
        if reason is None:
            self.ledger.book(kind, customer_id, Booking(at, self.playbook.id, key, self.rank))
        return reason

    def _has_file(self, name: str) -> bool:
        """Whether templates/NAME exists, asked once per plan (not once per customer)."""
        if name not in self._files:  # in the folder, or in a stored version's templates
            self._files[name] = has_template(self.environment, name)
        return self._files[name]


class Renderer:
    """One enrollment's templates in one context: `inline` and `file` are what a connector gets
    as `render` and `render_file` (connectors/base.py), in a plan and in a preview alike.

    `context` maps the names templates see to their values. A live plan passes `link`, which
    makes `unsubscribe_url` when a template or the connector's `payload` first asks for it. An
    inline template is rendered with only the names it reads, each wrapped once
    (engine/format/templates.py `as_value`): the others are never wrapped, and a name it reads
    that is missing is as undefined as in the whole context.
    """

    __slots__ = ("_link", "_values", "_wrapped", "environment", "has_file")

    def __init__(self, environment: Environment, context: Mapping[str, Any],
                 has_file: Callable[[str], bool], link: Callable[[], str] | None = None) -> None:
        self.environment, self.has_file = environment, has_file
        self._values, self._link = dict(context), link
        self._wrapped: dict[str, Any] = {}

    @property
    def context(self) -> dict[str, Any]:
        """The whole context, wrapped: what a template file sees."""
        return self._context(None)

    @property
    def unsubscribe_url(self) -> str:
        """The link the templates see as `unsubscribe_url` ("" when there is none)."""
        return self._context(("unsubscribe_url",)).get("unsubscribe_url", "")

    def _context(self, names: Iterable[str] | None) -> dict[str, Any]:
        """The wrapped values of `names` that the context has (None: all of them)."""
        if self._link is not None and (names is None or "unsubscribe_url" in names):
            self._values["unsubscribe_url"] = self._link()
            self._link = None
        found = {}
        for name in self._values if names is None else names:
            if name in self._wrapped:
                found[name] = self._wrapped[name]
            elif name in self._values:
                found[name] = self._wrapped[name] = as_value(name, self._values[name])
        return found

    def inline(self, source: str, *, header: bool = False, html: bool = False) -> str:
        """An inline template (a subject, a body); `html` autoescapes like an `.html.j2` file."""
        names = inline_names(self.environment, source, html)
        return render(self.environment, source, self._context(names), header=header, html=html)

    def file(self, name: str) -> str | None:
        """templates/NAME rendered, or None when the playbook's templates folder has no NAME."""
        return render_file(self.environment, name, self.context) if self.has_file(name) else None
