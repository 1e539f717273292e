"""`retain preview`: the whole message one action would send one customer, without sending it.

The planner decides, the connector renders: the action's status (planned, skipped without an
address, suppressed, dead on a template error), its due time, its idempotency key and holdout
all come from engine/plan/planner.py as a dry-run gets them, and its templates are rendered
through the planner's `Renderer` in its one template context (the same placeholder
`unsubscribe_url`).
The email connector then builds the real `EmailMessage` (connectors/email.py `build_message`,
which the dispatcher will send); other kinds show their payload. A customer who would not
enter now is previewed anyway, with a note saying so (and why to look at `retain explain`), and
no Message-ID: no run would make its key. What only sending makes (the unsubscribe token, the
Date) is a placeholder.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.clock import iso
from engine.errors import InputError, TemplateError
from engine.format.compile import CompileContext
from engine.format.playbook import ActionStep, Playbook
from engine.format.registry import load_connectors
from engine.format.templates import make_environment
from engine.format.validation import templates_dir
from engine.plan.planner import (
    UNSUBSCRIBE_URL,
    PlannedAction,
    Planner,
    Renderer,
    action_key,
    in_holdout,
)
from engine.plan.reader import customer_records, event_records, suppressed
from engine.query.evaluate import Candidate, Moment, candidates, compose, prepare

NOT_ENTERING = "(none: this customer would not enter now)"
"""The key and Message-ID shown for a customer who would not enter: no run would make a key for
this customer now, so none is made up."""


@dataclass(frozen=True)
class Preview:
    """One action of one playbook for one customer, rendered in full."""

    playbook: Playbook
    customer_id: str
    as_of: datetime
    enters: bool
    occurrence: str | None
    holdout: bool
    action: PlannedAction  # the planner's decision: step, kind, due time, key, status, reason
    notes: tuple[str, ...]
    message: EmailMessage | None  # an email action's message, as it would be sent
    payload: dict[str, Any] | None  # another kind's rendered fields

    @property
    def step(self) -> int:
        """The index in the playbook's `actions:` list (waits count)."""
        return self.action.step

    @property
    def kind(self) -> str:
        """The action's connector kind."""
        return self.action.kind

    @property
    def due_at(self) -> datetime:
        """When the planner would have the action due: as-of plus the waits before it."""
        return self.action.run_at

    def headers(self) -> list[list[str]]:
        """The message's headers in order, as shown: a customer who would not enter gets
        `Message-ID: (none: ...)` where the header would be (the wire text has none)."""
        assert self.message is not None
        found = [[name, str(value)] for name, value in self.message.items()]
        if self.message["Message-ID"] is None:
            at = next((i for i, (name, _) in enumerate(found) if name == "Subject"), -1) + 1
            found.insert(at, ["Message-ID", NOT_ENTERING])
        return found

    def to_json(self) -> dict[str, Any]:
        """The preview as plain data; an email as its headers and its text and HTML parts."""
        data: dict[str, Any] = {
            "playbook": self.playbook.id, "customer_id": self.customer_id,
            "as_of": iso(self.as_of), "step": self.step, "type": self.kind,
            "due_at": iso(self.due_at), "enters": self.enters, "occurrence": self.occurrence,
            "holdout": self.holdout, "key": self.action.key, "status": self.action.status,
            "reason": self.action.reason, "notes": list(self.notes)}
        if self.message is not None:
            data["message"] = {**message_parts(self.message), "headers": self.headers()}
        else:
            data["payload"] = {key: iso(value) if isinstance(value, datetime) else value
                               for key, value in (self.payload or {}).items()}
        return data


def message_parts(message: EmailMessage) -> dict[str, Any]:
    """Headers (in order), the text part and the HTML part (None when absent), and the whole
    message as it would go on the wire (`raw`, RFC 5322 text)."""
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    return {"headers": [[name, str(value)] for name, value in message.items()],
            "raw": message.as_string(),
            "text": text.get_content() if text is not None else None,  # type: ignore[attr-defined]
            "html": html.get_content() if html is not None else None}  # type: ignore[attr-defined]


def preview(connection: sa.Connection, playbook: Playbook, customer_id: str, as_of: datetime,
            *, step: int | None = None) -> Preview:
    """Render action `step` (default: the first email, else the first action) for one customer.

    Reads only. Raises InputError for a step that is no action, TemplateError (naming customer
    and action) when a template fails for this customer, as the plan marks it `dead`.
    """
    index = pick_step(playbook, step)
    moment = prepare(connection, as_of, [playbook])
    found, allowed = _candidates(connection, playbook, moment, customer_id)
    chosen = (found or allowed or [None])[0]
    customer = customer_records(connection, CompileContext(as_of, moment.historical),
                                [customer_id])[customer_id]
    event = None
    if chosen is not None and chosen.event_ref is not None:
        event = event_records(connection, [chosen.event_ref])[chosen.event_ref]
    connectors = {kind: cls() for kind, cls in load_connectors().items()}
    planner = Planner(playbook, as_of, connectors,
                      make_environment(templates_dir(Path(playbook.file))))
    item = next(scheduled for scheduled in planner.schedule if scheduled.step == index)
    occurrence = found[0].occurrence if found else None
    key = NOT_ENTERING if occurrence is None else action_key(
        playbook, customer_id, occurrence, item.stage, item.step)
    renderer = planner.renderer(customer, event)
    address = customer.get("email")
    decision = planner.action(item, key, customer, renderer,
                              suppressed(connection, [address] if address else []))
    if decision.error:
        raise TemplateError(decision.reason or "")
    result = _render(connectors[decision.kind], item.action, decision, renderer, customer,
                     occurrence is not None)
    holdout = occurrence is not None and in_holdout(playbook, customer_id, occurrence)
    notes = _notes(playbook, customer_id, found, allowed, as_of, decision, holdout)
    return Preview(playbook, customer_id, as_of, bool(found),
                   chosen.occurrence if chosen else None, holdout, decision, tuple(notes),
                   result if isinstance(result, EmailMessage) else None,
                   None if isinstance(result, EmailMessage) else result)


def pick_step(playbook: Playbook, step: int | None) -> int:
    """The `actions:` index to preview; a wait or a number out of range is an InputError."""
    actions = [(i, s.kind) for i, s in enumerate(playbook.steps) if isinstance(s, ActionStep)]
    listed = ", ".join(f"{i} ({kind})" for i, kind in actions)
    if step is None:
        emails = [i for i, kind in actions if kind == "email"]
        return (emails or [i for i, _ in actions])[0]
    if not any(i == step for i, _ in actions):
        what = "a wait" if 0 <= step < len(playbook.steps) else "not a step"
        raise InputError(f"{playbook.id}: actions[{step}] is {what}; the action steps are "
                         f"{listed}")
    return step


def _candidates(connection: sa.Connection, playbook: Playbook, moment: Moment,
                customer_id: str) -> tuple[list[Candidate], list[Candidate]]:
    """The customer's rows entering now, and those trigger and `when` select before reentry."""
    tc = moment.trigger_context(playbook.id)
    part = playbook.trigger.sql(tc, playbook.document.backfill)
    found = list(candidates(connection, compose(playbook, tc, part, customer_id)))
    allowed = list(candidates(connection, compose(playbook, tc, part, customer_id,
                                                  reentry=False)))
    return found, allowed


def _notes(playbook: Playbook, customer_id: str, found: list[Candidate],
           allowed: list[Candidate], as_of: datetime, decision: PlannedAction,
           holdout: bool) -> list[str]:
    """What a run would do differently from sending this, as the planner decided it."""
    notes = []
    if not found:
        why = "already enrolled for this occurrence (reentry)" if allowed else \
            "trigger or conditions do not hold"
        notes.append(f"customer {customer_id} would not enter {playbook.id} as of {iso(as_of)}: "
                     f"{why} (retain explain {playbook.id} {customer_id}); previewed anyway")
    if holdout:
        notes.append("in the holdout (control group): a run would send nothing; shown anyway")
    if decision.status == "skipped":
        notes.append(f"{decision.reason}: a run would skip this")
    elif decision.status == "suppressed":
        notes.append(f"{decision.reason}: a run would not send this")
    return notes


def _render(connector: Any, action: ActionStep, decision: PlannedAction, renderer: Renderer,
            customer: dict[str, Any], enters: bool) -> EmailMessage | dict[str, Any]:
    """The connector's preview through the planner's renderer; a failure names customer and
    action as the plan does (a header value the email package refuses, like a name with a
    line break in To)."""
    try:
        return connector.preview(action.params, renderer.inline, renderer.file, decision.run_at,
                                 key=decision.key if enters else None, customer=customer,
                                 unsubscribe_url=UNSUBSCRIBE_URL)
    except (TemplateError, ValueError) as exc:
        raise TemplateError(f"customer {customer['customer_id']}, actions[{decision.step}]."
                            f"{decision.kind}: {exc}") from exc
