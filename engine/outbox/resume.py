"""Enrollments whose `wait` is over: the next stage's actions planned and committed.

A resumed enrollment is planned with the version it entered with (templates included), by the
same Planner a new one uses, so its keys, statuses and payloads follow the same rules; its due
times are counted from its entry (entered_at + the waits before the stage), not from the run,
except that quiet hours are judged at the run's moment when the run comes later than that (a
step due at noon, resumed by a run at 23:00, is deferred to the end of the quiet hours).
`exit_when` was checked before this (engine/outbox/lifecycle.py runs first in a cycle), so an
enrollment that met its exit event is no longer waiting here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from jinja2 import Environment

from engine.clock import iso
from engine.format.compile import CompileContext
from engine.format.playbook import Playbook
from engine.outbox.commit import StagePlan, action_row, insert_actions
from engine.outbox.lifecycle import end
from engine.plan import reader
from engine.plan.delivery import CapLedger, DeliveryRules
from engine.plan.planner import PlannedEnrollment, Planner, Unsubscribe
from engine.store import status as st
from engine.store.tables import enrollments, events
from engine.store.txn import writing

BATCH = 500
Lookup = Callable[[str, str], "tuple[Playbook, Environment] | None"]
"""(playbook id, version) -> that version and its templates, or None when it is not known."""


def resume_due(writer: sa.Engine, as_of: datetime, lookup: Lookup,
               connectors: Mapping[str, Any], *, playbook_ids: Collection[str],
               settings: Any = None,
               unsubscribe: Unsubscribe | None = None,
               fence: Callable[[sa.Connection], None] | None = None
               ) -> Counter[tuple[str, str]]:
    """Commit the next stage of every enrollment whose wake-up time has come; returns the
    committed actions counted by (playbook id, status).

    Caps and quiet hours apply as they do to a new enrollment's first step: the outbox rows
    already there fill the caps (read per batch), and one ledger keeps what this pass gave.
    `fence` runs first in each batch's transaction (a daemon leader's check): raising there
    rolls the batch back.
    """
    counts: Counter[tuple[str, str]] = Counter()
    with writer.connect() as reading:  # most runs resume nothing: no write lock for that
        if not _due(reading, as_of, 0, playbook_ids, limit=1):
            return counts
    rules = DeliveryRules.from_settings(settings)
    ledger = CapLedger()
    last = 0
    while True:
        with writing(writer) as connection:
            if fence is not None:
                fence(connection)
            due = _due(connection, as_of, last, playbook_ids)
            if not due:
                return counts
            last = due[-1]["id"]
            ctx = CompileContext(as_of, False)
            people = reader.customer_records(connection, ctx, [r["customer_id"] for r in due])
            triggering = _events(connection, [r["event_id"] for r in due if r["event_id"]])
            blocked = reader.suppressed(connection, [p["email"] for p in people.values()
                                                     if p.get("email")])
            booked = reader.bookings(connection, list(people), rules.capped_channels,
                                     as_of - rules.longest_window, as_of=as_of)
            unknown = []
            for row in due:
                found = lookup(row["playbook_id"], row["version"])
                customer = people.get(row["customer_id"])
                if found is None or customer is None:
                    what = (f"version {row['version']} of {row['playbook_id']} is not recorded"
                            if found is None else "the customer is gone")
                    unknown.append({"ident": row["id"], "why": f"cannot resume: {what}"})
                    continue
                playbook, environment = found
                stages = StagePlan(playbook)
                stage = stages.after(row["step"])
                if not _advance(connection, row, stages, stage, as_of):
                    continue  # another run resumed or ended it since it was read
                planned = []
                if stage is not None:
                    planner = Planner(playbook, row["entered_at"], connectors, environment,
                                      rules=rules, ledger=ledger, unsubscribe=unsubscribe,
                                      commit_stage=stage, sends_at=as_of)
                    planned = [a for a in planner.actions(
                        row["occurrence_key"], customer, triggering.get(row["event_id"]),
                        blocked, booked.get(row["customer_id"])) if a.stage == stage]
                enrollment = PlannedEnrollment(row["customer_id"], row["occurrence_key"],
                                               False, row["event_id"], tuple(planned))
                rows = [action_row(playbook.id, row["id"], enrollment, a, as_of)
                        for a in planned]
                insert_actions(connection, rows)
                counts.update((playbook.id, r["status"]) for r in rows)
            if unknown:
                end(connection, unknown, as_of, st.EXITED)


def _due(connection: sa.Connection, as_of: datetime, after: int,
         playbook_ids: Collection[str], limit: int = BATCH) -> list[dict[str, Any]]:
    """Waiting enrollments of this run's playbooks whose time has come: a disabled playbook's,
    or one not named on the command line, wait until a run that includes it."""
    return [dict(row) for row in connection.execute(_DUE, {
        "as_of": as_of, "after": after, "ids": sorted(playbook_ids), "limit": limit}).mappings()]


_e = enrollments.c
_DUE = (sa.select(_e.id, _e.playbook_id, _e.version, _e.customer_id, _e.occurrence_key,
                  _e.event_id, _e.step, _e.entered_at)
        .where(_e.status == st.WAITING_STEP,
               _e.wake_at <= sa.bindparam("as_of", type_=_e.wake_at.type),
               _e.id > sa.bindparam("after"),
               _e.playbook_id.in_(sa.bindparam("ids", expanding=True)))
        .order_by(_e.id).limit(sa.bindparam("limit")))
"""`_due`'s statement, built once (building it cost as much as running it on a small store)."""


def _events(connection: sa.Connection, event_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Triggering events by their event id, as templates see them."""
    if not event_ids:
        return {}
    refs = list(connection.execute(sa.select(events.c.id).where(
        events.c.event_id.in_(sorted(set(event_ids))))).scalars())
    return {record["event_id"]: record
            for record in reader.event_records(connection, refs).values()}


def _advance(connection: sa.Connection, row: Mapping[str, Any], stages: StagePlan,
             stage: int | None, as_of: datetime) -> bool:
    """Move the enrollment to `stage`: waiting for the one after it, or completed. Only if it is
    still waiting at the step it was read at: False when another run (a replica, a second
    `retain run`) resumed or ended it in between, whose write then stands (the row lock on
    PostgreSQL, the write lock on SQLite make the check and the write one)."""
    e = enrollments.c
    wake = None if stage is None else stages.wake_at(row["entered_at"], stage)
    values: dict[str, Any] = {"wake_at": wake}
    if stage is not None:
        values["step"] = stage
    if wake is None:
        values.update(status=st.COMPLETED, ended_at=as_of,
                      end_reason=f"every step done by {iso(as_of)}")
    moved = connection.execute(enrollments.update().where(
        e.id == row["id"], e.status == st.WAITING_STEP, e.step == row["step"]).values(**values))
    return bool(moved.rowcount)
