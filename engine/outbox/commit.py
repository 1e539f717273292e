"""A plan written: each enrollment and its current step's actions, in one transaction.

What `dry-run` printed is what is written (DESIGN 3): the same enrollments, and for each the
plan's stage-0 actions with their keys, statuses, reasons and due times, payloads frozen by the
connector at planning (`Connector.payload`). Rows are written a batch of the plan at a time with
`INSERT ... ON CONFLICT DO NOTHING`: the unique key (playbook, customer, occurrence) makes a
second enrollment impossible, so a run repeated at once, or another replica racing this one,
writes nothing twice; an enrollment that was already there gets no actions from this run.
Actions follow only the enrollments this transaction inserted (RETURNING), and the action key is
unique too. A crash between batches loses nothing: the next run plans the rest again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.format.playbook import Playbook
from engine.plan.build import PlaybookPlan
from engine.plan.planner import PlannedAction, PlannedEnrollment, schedule
from engine.store import status as st
from engine.store.dialect import insert_ignoring
from engine.store.tables import actions, enrollments


@dataclass
class Committed:
    """What one playbook's commit wrote: enrollments, the holdout among them, actions by status."""

    entered: int = 0
    holdout: int = 0
    statuses: Counter[str] = field(default_factory=Counter)


def commit_playbook(writer: sa.Engine, plan: PlaybookPlan, as_of: datetime) -> Committed:
    """Write every enrollment of `plan` (none when it is over its limits), batch by batch."""
    done = Committed()
    if plan.over_limit is not None:
        return done
    stages = StagePlan(plan.playbook)
    for batch in plan.batches():
        with writer.begin() as connection:
            inserted = insert_enrollments(connection, plan.playbook, stages, batch, as_of)
            rows = [action_row(plan.playbook.id, inserted[(e.customer_id, e.occurrence)], e,
                               action, as_of)
                    for e in batch if (e.customer_id, e.occurrence) in inserted
                    for action in e.actions if action.stage == 0]
            insert_actions(connection, rows)
        done.entered += len(inserted)
        done.holdout += sum(1 for e in batch
                            if e.holdout and (e.customer_id, e.occurrence) in inserted)
        done.statuses.update(row["status"] for row in rows)
    return done


class StagePlan:
    """Where a playbook's stages start: the delay after entry at which each stage is due.

    Stage 0 is committed at entry; a `wait` parks the enrollment until the next stage that has
    actions (consecutive waits add up).
    """

    def __init__(self, playbook: Playbook) -> None:
        self.delays: dict[int, Any] = {}
        for item in schedule(playbook):
            self.delays.setdefault(item.stage, item.delay)

    def after(self, stage: int) -> int | None:
        """The next stage with actions after `stage`, or None: the enrollment is complete."""
        later = [s for s in self.delays if s > stage]
        return min(later) if later else None

    def wake_at(self, entered_at: datetime, stage: int) -> datetime | None:
        """When the stage after `stage` is due for an enrollment that entered at `entered_at`."""
        following = self.after(stage)
        return None if following is None else entered_at + self.delays[following]


def insert_enrollments(connection: sa.Connection, playbook: Playbook, stages: StagePlan,
                       batch: list[PlannedEnrollment],
                       as_of: datetime) -> dict[tuple[str, str], int]:
    """Insert the batch's enrollments; (customer, occurrence) -> id of those this one wrote."""
    if not batch:
        return {}
    wake = stages.wake_at(as_of, 0)
    rows = [{"playbook_id": playbook.id, "version": playbook.version,
             "customer_id": e.customer_id, "occurrence_key": e.occurrence,
             "event_id": e.event_id, "step": 0, "holdout": e.holdout, "entered_at": as_of,
             "wake_at": None if e.holdout else wake,
             "status": st.COMPLETED if e.holdout or wake is None else st.WAITING_STEP,
             "ended_at": as_of if e.holdout or wake is None else None,
             "end_reason": "holdout" if e.holdout else None}
            for e in batch]
    statement = insert_ignoring(enrollments, connection.dialect,
                                ["playbook_id", "customer_id", "occurrence_key"])
    c = enrollments.c
    result = connection.execute(statement.returning(c.id, c.customer_id, c.occurrence_key), rows)
    return {(customer, occurrence): ident for ident, customer, occurrence in result}


def action_row(playbook_id: str, enrollment_id: int | None, enrollment: PlannedEnrollment,
               action: PlannedAction, as_of: datetime) -> dict[str, Any]:
    """The outbox row of one planned action, as the plan decided it."""
    return {"playbook_id": playbook_id, "enrollment_id": enrollment_id,
            "customer_id": enrollment.customer_id, "stage": action.stage, "step": action.step,
            "connector": action.kind, "payload": action.to_json()["fields"],
            "idempotency_key": action.key, "status": action.status, "reason": action.reason,
            "last_error": action.reason if action.status == st.DEAD else None,
            "attempts": 0, "next_attempt_at": action.run_at, "created_at": as_of,
            "updated_at": as_of}


def insert_actions(connection: sa.Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Insert outbox rows; a key already there (a re-plan of the same action) is skipped."""
    rows = list(rows)
    if rows:
        connection.execute(insert_ignoring(actions, connection.dialect, ["idempotency_key"]),
                           rows)
