"""A plan written: each enrollment and its current step's actions, in one transaction.

A playbook whose first stage the database can plan by itself (engine/plan/set_plan.py) is
written by three `INSERT ... SELECT` statements (engine/outbox/set_commit.py); the customers it
leaves out, and every other playbook, are written from the planner's enrollments as follows.

What `dry-run` printed is what is written (DESIGN 3): the same enrollments, and for each the
plan's stage-0 actions with their keys, statuses, reasons and due times, payloads frozen by the
connector at planning (`Connector.payload`). Rows are written a batch of the plan at a time with
`INSERT ... ON CONFLICT DO NOTHING`: the unique key (playbook, customer, occurrence) makes a
second enrollment impossible, so a run repeated at once, or another replica racing this one,
writes nothing twice; an enrollment that was already there gets no actions from this run.
Actions follow only the enrollments this transaction inserted (RETURNING), and the action key is
unique too. A `segment` playbook's enrollment is a membership (`membership`), and the database
holds at most one open per playbook and customer (a partial unique index): a second evaluator
planning the same edge at another as-of has another occurrence key, and its insert is skipped
all the same, since the conflict clause names no one index. Each payload goes to `action_payloads`, in the same transaction, for the actions
the insert returned (a key already there keeps the payload it had). A crash between batches
loses nothing: the next run plans the rest again.

`fence` (a daemon's leader check, engine/daemon/leader.py) runs first in every transaction
that writes here: a replica that lost the lead raises inside it and writes nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.format.playbook import Playbook
from engine.outbox.bulk import ANY_KEY, Bulk
from engine.outbox.set_commit import commit_set
from engine.plan.build import PlaybookPlan
from engine.plan.planner import PlannedAction, PlannedEnrollment, plain_fields, schedule
from engine.store import status as st
from engine.store.tables import actions, enrollments, payloads
from engine.store.txn import writing

Fence = Callable[[sa.Connection], None]
"""Run first inside each committing transaction; raises (engine.errors.NotLeader) to roll it
back when the caller may no longer write (a deposed daemon leader)."""


@dataclass
class Committed:
    """What one playbook's commit wrote: enrollments, the holdout among them, actions by status."""

    entered: int = 0
    holdout: int = 0
    statuses: Counter[str] = field(default_factory=Counter)


def commit_playbook(writer: sa.Engine, plan: PlaybookPlan, as_of: datetime,
                    fence: Fence | None = None) -> Committed:
    """Write every enrollment of `plan` (none when it is over its limits), batch by batch;
    `fence` runs first in each batch's transaction."""
    done = Committed()
    if plan.over_limit is not None:
        return done
    stages = StagePlan(plan.playbook)
    rest = None
    if plan.set_plan is not None:  # the customers SQL renders exactly, in three statements
        done.entered, done.holdout, written = commit_set(
            writer, plan.set_plan, stages.wake_at(as_of, 0), as_of, plan.entering, fence)
        done.statuses.update(written)
        if done.entered >= plan.entering:  # everyone counted was written in SQL
            return done
        rest = plan.set_plan.rest  # those SQL could not render exactly (or another run took)
    rows: _Rows | None = None
    for batch in plan.batches(rest):
        if not batch:
            continue
        with writing(writer) as connection:  # SQLite: queued with this process's writers
            if fence is not None:
                fence(connection)
            if rows is None:
                rows = _Rows(connection.dialect, plan.playbook, stages, as_of)
            inserted = rows.enrollments(connection, batch)
            statuses = rows.actions(connection, batch, inserted)
        done.entered += len(inserted)
        done.holdout += sum(1 for e in batch
                            if e.holdout and (e.customer_id, e.occurrence) in inserted)
        done.statuses.update(statuses)
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


class _Rows:
    """One playbook's enrollment and outbox rows for one commit, in the form `Bulk` sends them:
    what is the same for every row (playbook, version, as-of) bound once, times converted once.
    """

    ENROLLMENT = ("customer_id", "occurrence_key", "event_id", "holdout", "wake_at", "status",
                  "ended_at", "end_reason")
    ACTION = ("enrollment_id", "customer_id", "stage", "step", "connector",
              "idempotency_key", "status", "reason", "last_error", "next_attempt_at")

    def __init__(self, dialect: sa.Dialect, playbook: Playbook, stages: StagePlan,
                 as_of: datetime) -> None:
        self.playbook = playbook
        self.enrollment_bulk = Bulk(enrollments, dialect, self.ENROLLMENT,
                                    ("playbook_id", "version", "step", "entered_at",
                                     "membership"),
                                    ANY_KEY, ("id", "customer_id", "occurrence_key"))
        self.action_bulk = Bulk(actions, dialect, self.ACTION,
                                ("playbook_id", "attempts", "created_at", "updated_at"),
                                ("idempotency_key",), ("id", "idempotency_key"))
        self.payload_bulk = payload_bulk(dialect)
        self.time = self.action_bulk.time
        wake = stages.wake_at(as_of, 0)
        now = self.time(as_of)
        # the columns after (customer, occurrence, event) of an enrollment in / not in holdout
        self.tail = {True: [True, None, st.COMPLETED, now, "holdout"],
                     False: [False, self.time(wake), st.COMPLETED if wake is None
                             else st.WAITING_STEP, now if wake is None else None, None]}
        self.enrollment_constants = {"playbook_id": playbook.id, "version": playbook.version,
                                     "step": 0, "entered_at": as_of,
                                     "membership": playbook.trigger.membership}
        self.action_constants = {"playbook_id": playbook.id, "attempts": 0,
                                 "created_at": as_of, "updated_at": as_of}

    def enrollments(self, connection: sa.Connection,
                    batch: list[PlannedEnrollment]) -> dict[tuple[str, str], int]:
        """Insert the batch's enrollments; (customer, occurrence) -> id of those this one
        wrote (RETURNING: one already there, a re-plan or another replica's, is not)."""
        tail = self.tail
        packed = [[e.customer_id, e.occurrence, e.event_id, *tail[e.holdout]] for e in batch]
        result = self.enrollment_bulk.execute(connection, packed, self.enrollment_constants)
        return {(customer, occurrence): ident for ident, customer, occurrence in result}

    def actions(self, connection: sa.Connection, batch: list[PlannedEnrollment],
                inserted: Mapping[tuple[str, str], int]) -> list[str]:
        """Insert the stage-0 actions of the enrollments this transaction inserted; their
        statuses."""
        time, dumps = self.time, json.dumps
        packed: list[list[Any]] = []
        frozen: dict[str, str] = {}  # key -> payload, written for the actions inserted
        for e in batch:
            ident = inserted.get((e.customer_id, e.occurrence))
            if ident is None:
                continue
            for a in e.actions:
                if a.stage == 0:
                    packed.append([ident, e.customer_id, a.stage, a.step, a.kind, a.key,
                                   a.status, a.reason, a.reason if a.status == st.DEAD else None,
                                   time(a.run_at)])
                    frozen[a.key] = dumps(plain_fields(a.fields))
        if packed:
            written = self.action_bulk.execute(connection, packed, self.action_constants)
            self.payload_bulk.execute(connection, [[ident, frozen[key]] for ident, key in written],
                                      {})
        return [row[6] for row in packed]


def payload_bulk(dialect: sa.Dialect) -> Bulk:
    """The insert of `action_payloads` rows: [action id, payload as JSON text] each."""
    return Bulk(payloads, dialect, ("action_id", "payload"), (), ("action_id",))


def action_row(playbook_id: str, enrollment_id: int | None, enrollment: PlannedEnrollment,
               action: PlannedAction, as_of: datetime) -> dict[str, Any]:
    """The outbox row of one planned action, as the plan decided it (`payload` included: it
    goes to its own table)."""
    return {"playbook_id": playbook_id, "enrollment_id": enrollment_id,
            "customer_id": enrollment.customer_id, "stage": action.stage, "step": action.step,
            "connector": action.kind, "payload": plain_fields(action.fields),
            "idempotency_key": action.key, "status": action.status, "reason": action.reason,
            "last_error": action.reason if action.status == st.DEAD else None,
            "attempts": 0, "next_attempt_at": action.run_at, "created_at": as_of,
            "updated_at": as_of}


def insert_actions(connection: sa.Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Insert outbox rows (`action_row`s) and, for those inserted, their payloads; a key
    already there (a re-plan of the same action) is skipped, its payload too."""
    rows = list(rows)
    if rows:
        dialect = connection.dialect
        frozen = {row["idempotency_key"]: Bulk.document(row["payload"]) for row in rows}
        rows = [{name: value for name, value in row.items() if name != "payload"}
                for row in rows]
        columns = tuple(rows[0])
        bulk = _DICT_BULKS.get((dialect.name, columns))
        if bulk is None:
            bulk = _DICT_BULKS[(dialect.name, columns)] = Bulk(
                actions, dialect, columns, (), ("idempotency_key",), ("id", "idempotency_key"))
        written = bulk.execute_dicts(connection, rows)
        payload_bulk(dialect).execute(
            connection, [[ident, frozen[key]] for ident, key in written], {})


_DICT_BULKS: dict[tuple[str, tuple[str, ...]], Bulk] = {}
