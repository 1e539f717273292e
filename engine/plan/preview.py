"""`retain preview`: the whole message one action would send one customer, without sending it.

The email connector builds the real `EmailMessage` (connectors/email.py `build_message`, which the
dispatcher will send), rendered with the customer's record as the plan renders it (facts as of
`as_of`) and the triggering event when the customer enters; other kinds show their payload. A
customer who would not enter now is previewed anyway, with a note saying so (and why to look at
`retain explain`). What only sending makes (the unsubscribe token, the Date) is a placeholder.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.clock import iso
from engine.errors import InputError, TemplateError
from engine.format.compile import CompileContext
from engine.format.playbook import ActionStep, Playbook, Wait
from engine.format.registry import load_connectors
from engine.format.templates import make_environment, render, render_file
from engine.format.validation import templates_dir
from engine.plan.planner import action_key, in_holdout
from engine.plan.reader import customer_records, event_records, suppressed
from engine.query.evaluate import candidates, compose, prepare

UNSUBSCRIBE_URL = "https://retain.example.invalid/unsubscribe?token=made-when-sent"
"""The link templates and List-Unsubscribe get in a preview: the real token is made at send time."""


@dataclass(frozen=True)
class Preview:
    """One action of one playbook for one customer, rendered in full."""

    playbook: Playbook
    customer_id: str
    as_of: datetime
    step: int  # index in the playbook's `actions:` list (waits count)
    kind: str
    due_at: datetime
    enters: bool
    occurrence: str | None
    holdout: bool
    notes: tuple[str, ...]
    message: EmailMessage | None  # an email action's message, as it would be sent
    payload: dict[str, Any] | None  # another kind's rendered fields

    def to_json(self) -> dict[str, Any]:
        """The preview as plain data; an email as its headers and its text and HTML parts."""
        data: dict[str, Any] = {
            "playbook": self.playbook.id, "customer_id": self.customer_id,
            "as_of": iso(self.as_of), "step": self.step, "type": self.kind,
            "due_at": iso(self.due_at), "enters": self.enters, "occurrence": self.occurrence,
            "holdout": self.holdout, "notes": list(self.notes)}
        if self.message is not None:
            data["message"] = message_parts(self.message)
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
    and action) when a template fails for this customer.
    """
    index = pick_step(playbook, step)
    action = playbook.steps[index]
    assert isinstance(action, ActionStep)
    moment = prepare(connection, as_of, [playbook])
    tc = moment.trigger_context(playbook.id)
    part = playbook.trigger.sql(tc, playbook.document.backfill)
    found = list(candidates(connection, compose(playbook, tc, part, customer_id)))
    allowed = list(candidates(connection, compose(playbook, tc, part, customer_id, reentry=False)))
    chosen = (found or allowed or [None])[0]
    occurrence = chosen.occurrence if chosen else None
    ctx = CompileContext(as_of, moment.historical)
    customer = customer_records(connection, ctx, [customer_id])[customer_id]
    event = None
    if chosen is not None and chosen.event_ref is not None:
        event = event_records(connection, [chosen.event_ref])[chosen.event_ref]
    waits = [s for s in playbook.steps[:index] if isinstance(s, Wait)]
    due = as_of + sum((w.duration for w in waits), timedelta(0))
    notes = _notes(playbook, customer_id, found, allowed, as_of)
    connector = load_connectors()[action.kind]()
    if customer.get("email"):
        blocked = connector.blocked(customer["email"],
                                    suppressed(connection, [customer["email"]]))
        if blocked:
            notes.append(f"{blocked}: a run would not send this")
    result = _render(playbook, index, action, connector, customer, event, due,
                     action_key(playbook, customer_id, occurrence or "(none)", len(waits),
                                index))
    holdout = bool(found) and in_holdout(playbook, customer_id, found[0].occurrence)
    if holdout:
        notes.append("in the holdout (control group): a run would send nothing; shown anyway")
    if not customer.get("email") and action.kind == "email":
        notes.append("the customer has no email address: a run would skip this")
    return Preview(playbook, customer_id, as_of, index, action.kind, due, bool(found),
                   occurrence, holdout, tuple(notes),
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


def _notes(playbook: Playbook, customer_id: str, found: list[Any], allowed: list[Any],
           as_of: datetime) -> list[str]:
    if found:
        return []
    why = "already enrolled for this occurrence (reentry)" if allowed else \
        "trigger or conditions do not hold"
    return [f"customer {customer_id} would not enter {playbook.id} as of {iso(as_of)}: {why} "
            f"(retain explain {playbook.id} {customer_id}); previewed anyway"]


def _render(playbook: Playbook, index: int, action: ActionStep, connector: Any,
            customer: dict[str, Any], event: dict[str, Any] | None, due: datetime, key: str
            ) -> EmailMessage | dict[str, Any]:
    """The connector's preview with this customer's context; a template error names both."""
    folder = templates_dir(Path(playbook.file))
    environment = make_environment(folder)
    context: dict[str, Any] = {"customer": customer, "unsubscribe_url": UNSUBSCRIBE_URL,
                               "playbook": {"id": playbook.id, "name": playbook.document.name}}
    if event is not None:
        context["event"] = event

    def render_inline(source: str, *, header: bool = False, html: bool = False) -> str:
        return render(environment, source, context, header=header, html=html)

    def render_named(name: str) -> str | None:
        if folder is None or not (folder / name).is_file():
            return None
        return render_file(environment, name, context)

    try:
        return connector.preview(action.params, render_inline, render_named, due, key=key,
                                 customer=customer, unsubscribe_url=UNSUBSCRIBE_URL)
    except (TemplateError, ValueError) as exc:  # ValueError: a header value email refuses
        raise TemplateError(f"customer {customer['customer_id']}, actions[{index}]."
                            f"{action.kind}: {exc}") from exc
