"""One live cycle (`retain run`): evaluate, commit the plan, resume waits, dispatch.

In this order, all at one business time `as_of` (docs/EVALUATION.md, "One clock"):

1. refuse before writing anything when a playbook sends email and no transport is set;
2. record each enabled playbook's version (sources and templates), first enable included;
3. per playbook: `on_change: exit` ends enrollments of older versions, goals reached are
   recorded, `exit_when` ends enrollments and cancels what they had pending, and segment
   memberships of customers who no longer match close;
4. the plan (the same `make_plan` a dry-run prints) is committed playbook by playbook, in
   priority order (engine/outbox/commit.py); a playbook over its `limits` enrolls no one;
5. enrollments whose wait is over get their next step (engine/outbox/resume.py);
6. unless `dispatch=False`, everything due is delivered (engine/outbox/dispatch.py).

Running it again at once finds nothing new: every write is keyed. A daemon leader passes
`fence` (engine/daemon/leader.py): it runs inside every transaction of steps 2-5, so a replica
that lost the lead mid-cycle has its next commit rolled back (engine.errors.NotLeader).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.errors import InputError
from engine.format.playbook import Playbook
from engine.format.registry import make_connectors
from engine.outbox import lifecycle
from engine.outbox.commit import commit_playbook
from engine.plan.build import make_plan
from engine.query.evaluate import prepare
from engine.store.txn import writing


@dataclass
class PlaybookRun:
    """What one cycle did for one playbook."""

    id: str
    entered: int = 0
    holdout: int = 0
    over_limit: str | None = None
    exited: int = 0
    converted: int = 0
    committed: Counter[str] = field(default_factory=Counter)  # actions written, by status
    delivered: Counter[str] = field(default_factory=Counter)  # dispatch outcomes, by status

    def to_json(self) -> dict[str, Any]:
        """The playbook's line of `retain run --json`."""
        return {"id": self.id, "entered": self.entered, "holdout": self.holdout,
                "over_limit": self.over_limit, "exited": self.exited,
                "converted": self.converted, "committed": dict(self.committed),
                "dispatched": dict(self.delivered)}


@dataclass
class RunReport:
    """One cycle, per playbook, plus what dispatch did."""

    as_of: datetime
    playbooks: dict[str, PlaybookRun]
    dispatched: bool

    def to_json(self) -> dict[str, Any]:
        """`retain run --json`."""
        from engine.clock import iso

        return {"as_of": iso(self.as_of), "dispatched": self.dispatched,
                "playbooks": [p.to_json() for p in self.playbooks.values()]}


def require_transport(playbooks: list[Playbook], settings: Any) -> None:
    """A live run that would send needs somewhere to send it, and a webhook a secret to sign
    with: refuse before any write, naming the settings."""
    def using(kind: str) -> list[str]:
        return [p.id for p in playbooks if p.document.enabled
                and any(getattr(step, "kind", None) == kind for step in p.steps)]

    emails, webhooks = using("email"), using("webhook")
    transport = getattr(settings, "email_transport", None)
    if emails and not ((transport == "file" and getattr(settings, "email_dir", None))
                       or (transport in (None, "smtp") and settings.smtp.host)):
        raise InputError(
            f"{', '.join(emails)} send email, and no mail transport is configured: set "
            "RETAIN_SMTP_HOST (and RETAIN_SMTP_PORT, RETAIN_SMTP_TLS, RETAIN_SMTP_USERNAME, "
            "RETAIN_SMTP_PASSWORD, RETAIN_EMAIL_FROM as needed), or RETAIN_EMAIL_TRANSPORT=file "
            "with RETAIN_EMAIL_DIR to write messages to a folder. Nothing was committed.")
    if emails and transport != "file" and not getattr(settings, "email_from", None):
        raise InputError(
            f"{', '.join(emails)} send email over SMTP, and no sender is configured: set "
            "RETAIN_EMAIL_FROM (or email_from in retain.toml). Nothing was committed.")
    if webhooks and not getattr(settings, "webhook_secret", None):
        raise InputError(
            f"{', '.join(webhooks)} call webhooks, which are signed (Standard Webhooks): set "
            "RETAIN_WEBHOOK_SECRET to a whsec_ secret. Nothing was committed.")


def run_cycle(writer: sa.Engine, playbooks: list[Playbook], as_of: datetime, settings: Any, *,
              dispatch: bool = True, customers: Sequence[str] | None = None,
              progress: Callable[[int], object] | None = None,
              fence: Callable[[sa.Connection], None] | None = None,
              connectors: Mapping[str, Any] | None = None) -> RunReport:
    """One live cycle at `as_of` (module docstring); the writer engine comes from open_store.

    `customers` narrows the cycle to the plan of those customers (the daemon evaluating the
    customers that events just touched): steps 3 and 5 are left to the next whole cycle.
    `fence`: a daemon leader's check, run first inside each transaction that commits.
    `connectors`: the instances dispatch sends with (default: the installed ones; `retain
    test` passes recording ones)."""
    require_transport(playbooks, settings)
    active = [p for p in playbooks if p.document.enabled]
    report = RunReport(as_of, {p.id: PlaybookRun(p.id) for p in
                               sorted(active, key=lambda p: (-p.document.priority, p.id))},
                       dispatch)
    from engine.outbox.versions import record_versions

    with writing(writer) as connection:
        if fence is not None:
            fence(connection)
        options = _plan_options(connection, settings)
        record_versions(connection, active, as_of)
        segments = [p for p in active if p.trigger.membership] if customers is None else []
        moment = prepare(connection, as_of, segments) if segments else None
        for playbook in active if customers is None else ():
            line = report.playbooks[playbook.id]
            line.exited += _version_exits(connection, playbook, as_of)
            line.converted += lifecycle.record_goals(connection, playbook, as_of)
            line.exited += lifecycle.apply_exits(connection, playbook, as_of)
            if moment is not None and playbook.trigger.membership:
                lifecycle.close_memberships(connection, playbook, moment)
    with writer.connect() as reading:  # the plan reads here while each batch commits apart
        plan = make_plan(reading, active, as_of, customer_id=customers, show=0,
                         complete=False, progress=progress, **options)
        for part in plan.playbooks:
            line = report.playbooks[part.playbook.id]
            line.over_limit = part.over_limit
            done = commit_playbook(writer, part, as_of, fence)
            line.entered, line.holdout = done.entered, done.holdout
            line.committed.update(done.statuses)
        reading.rollback()
    resumed = (_resume(writer, active, as_of, options, fence) if customers is None
               else Counter())
    for (playbook_id, status), n in resumed.items():
        if playbook_id in report.playbooks:
            report.playbooks[playbook_id].committed[status] += n
    if dispatch:
        from engine.outbox.dispatch import dispatch as deliver

        outcome = deliver(writer, settings, as_of, connectors=connectors)
        for (playbook_id, status), n in outcome.counts.items():
            if playbook_id in report.playbooks:
                report.playbooks[playbook_id].delivered[status] += n
    return report


def resume_waits(writer: sa.Engine, playbooks: list[Playbook], as_of: datetime, settings: Any,
                 *, fence: Callable[[sa.Connection], None] | None = None
                 ) -> Counter[tuple[str, str]]:
    """Step 5 alone: the enrollments of these playbooks whose wait is over get their next step
    (the daemon does this every few seconds, between the sweeps that run the whole cycle)."""
    active = [p for p in playbooks if p.document.enabled]
    if not active:
        return Counter()
    with writing(writer) as connection:
        if fence is not None:
            fence(connection)
        options = _plan_options(connection, settings)
    return _resume(writer, active, as_of, options, fence)


def _plan_options(connection: sa.Connection, settings: Any) -> dict[str, Any]:
    """What a live plan takes beyond a dry-run's: the settings (caps, quiet hours) and the real
    unsubscribe links, signed with the kept key (made here, in the caller's transaction, the
    first time). A bad RETAIN_PUBLIC_URL stops the run here, before anything is committed."""
    from engine.consent import unsubscribe_links
    from engine.outbox.admin import signing_key

    links = unsubscribe_links(signing_key(connection, settings), settings.public_url)
    return {"settings": settings, "unsubscribe": links}


def _version_exits(connection: sa.Connection, playbook: Playbook, as_of: datetime) -> int:
    if playbook.document.on_change != "exit":
        return 0
    from engine.outbox.versions import exit_changed

    return exit_changed(connection, playbook, as_of)


def _resume(writer: sa.Engine, playbooks: list[Playbook], as_of: datetime,
            options: dict[str, Any], fence: Callable[[sa.Connection], None] | None
            ) -> Counter[tuple[str, str]]:
    from engine.outbox.resume import resume_due
    from engine.outbox.versions import version_lookup

    connectors = make_connectors(options.get("settings"))
    return resume_due(writer, as_of, version_lookup(writer, playbooks), connectors,
                      playbook_ids={p.id for p in playbooks}, fence=fence, **options)
