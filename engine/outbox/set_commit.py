"""A playbook's first stage committed by `INSERT ... SELECT` (engine/plan/set_plan.py says when).

Statements in one transaction, each reading what the one before wrote:

1. the enrollments, straight from the plan's statement (`SetPlan.candidates`), the holdout
   group decided in SQL, in (customer, occurrence) order, `ON CONFLICT DO NOTHING` on their
   unique key, as the per-customer commit writes them;
2. per first-stage action, one row for each enrollment this transaction inserted that is not
   in the holdout, keyed in SQL, `ON CONFLICT DO NOTHING` on the key;
3. and the payloads of the rows statement 2 inserted, built by the database.

"Inserted by this transaction" is "id above the largest before it", which holds because the
transaction takes SQLite's write lock first (engine/outbox/txn.py) and PostgreSQL's ids come
from a sequence. On PostgreSQL another replica may commit rows of the same playbook in between;
they have the same keys, so the inserts skip them. Nothing is held in Python: memory is flat in
the number of enrollments, and a crash rolls the whole playbook back for the next run.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.format.template_sql import TemplateSql
from engine.outbox.txn import writing
from engine.plan.set_plan import SetAction, SetPlan, holdout_sql, key_sql, payload_sql
from engine.store import status as st
from engine.store.dialect import insert_ignoring
from engine.store.tables import actions, customers, enrollments, events, payloads


def commit_set(writer: sa.Engine, plan: SetPlan, wake: datetime | None,
               as_of: datetime) -> tuple[int, int, Counter[str]]:
    """Write `plan` (`wake`: when the enrollments' next stage is due, None: they complete
    now); (enrollments inserted, of them in holdout, actions inserted by status)."""
    playbook = plan.playbook
    e = enrollments.c
    mine = (e.playbook_id == playbook.id, e.version == playbook.version)
    with writing(writer) as connection:
        dialect = connection.dialect
        before = _largest(connection, enrollments)
        connection.execute(_enroll(plan, wake, as_of, dialect))
        entered, holdout = connection.execute(  # counted: a driver's rowcount may be -1
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(
                sa.case((e.holdout, 1), else_=0)), 0)).where(*mine, e.id > before)).one()
        written: Counter[str] = Counter()
        for action in plan.actions if entered > holdout else ():
            first = _largest(connection, actions)
            connection.execute(_actions(plan, action, before, as_of, dialect))
            connection.execute(_payloads(plan, action, first, dialect))
            written[st.PLANNED] += connection.execute(
                sa.select(sa.func.count()).where(actions.c.id > first,
                                                 actions.c.playbook_id == playbook.id)
            ).scalar_one()
    return entered, holdout, written


def _largest(connection: sa.Connection, table: sa.Table) -> int:
    return connection.execute(sa.select(sa.func.coalesce(sa.func.max(table.c.id), 0))
                              ).scalar_one()


def _enroll(plan: SetPlan, wake: datetime | None, as_of: datetime, dialect: sa.Dialect) -> Any:
    """Statement 1: the enrollments, as `commit._Rows` writes them."""
    playbook = plan.playbook
    times = enrollments.c.entered_at.type
    entering = plan.candidates.subquery("entering")
    held = holdout_sql(playbook, entering.c.customer_id, entering.c.occurrence)
    source: sa.FromClause = entering
    event_id: Any = sa.null()
    if not isinstance(plan.candidates.selected_columns.event_ref.element, sa.Null):
        triggering = events.alias("triggering")  # an event trigger: keep the event's id
        source = entering.outerjoin(triggering, triggering.c.id == entering.c.event_ref)
        event_id = triggering.c.event_id
    chosen = (sa.select(entering.c.customer_id, entering.c.occurrence, event_id.label("event_id"),
                        held.label("holdout")).select_from(source).subquery("chosen"))
    now = sa.literal(as_of, times)
    later = st.COMPLETED if wake is None else st.WAITING_STEP
    rows = sa.select(
        sa.literal(playbook.id), sa.literal(playbook.version), chosen.c.customer_id,
        chosen.c.occurrence, chosen.c.event_id, chosen.c.holdout,
        sa.case((chosen.c.holdout, sa.null()), else_=sa.literal(wake, times)),
        sa.case((chosen.c.holdout, st.COMPLETED), else_=later),
        sa.case((chosen.c.holdout, now), else_=now if wake is None else sa.null()),
        sa.case((chosen.c.holdout, "holdout"), else_=sa.null()),
        sa.literal(0), now,
    ).order_by(chosen.c.customer_id, chosen.c.occurrence)
    columns = ["playbook_id", "version", "customer_id", "occurrence_key", "event_id", "holdout",
               "wake_at", "status", "ended_at", "end_reason", "step", "entered_at"]
    return insert_ignoring(enrollments, dialect, ["playbook_id", "customer_id",
                                                  "occurrence_key"]).from_select(columns, rows)


def _actions(plan: SetPlan, action: SetAction, before: int, as_of: datetime,
             dialect: sa.Dialect) -> Any:
    """Statement 2: one first-stage action for each new enrollment not in holdout, in
    enrollment order (the ids' order: no sort)."""
    playbook = plan.playbook
    e = enrollments.c
    times = actions.c.created_at.type
    rows = sa.select(
        sa.literal(playbook.id), e.id, e.customer_id, sa.literal(0), sa.literal(action.step),
        sa.literal(action.kind),
        key_sql(playbook, e.customer_id, e.occurrence_key, 0, action.step),
        sa.literal(st.PLANNED), sa.literal(0), sa.literal(plan.run_at, times),
        sa.literal(as_of, times), sa.literal(as_of, times),
    ).where(e.playbook_id == playbook.id, e.version == playbook.version, e.id > before,
            sa.not_(e.holdout)).order_by(e.id)
    columns = ["playbook_id", "enrollment_id", "customer_id", "stage", "step", "connector",
               "idempotency_key", "status", "attempts", "next_attempt_at", "created_at",
               "updated_at"]
    return insert_ignoring(actions, dialect, ["idempotency_key"]).from_select(columns, rows)


def _payloads(plan: SetPlan, action: SetAction, first: int, dialect: sa.Dialect) -> Any:
    """Statement 3: the payload of each action statement 2 inserted, built by the database
    (an action another replica wrote in between already has its payload: skipped)."""
    a = actions.c
    source: sa.FromClause = actions
    if any(isinstance(value, TemplateSql) for value in action.payload.values()):
        source = actions.join(customers, customers.c.customer_id == a.customer_id)
    rows = (sa.select(a.id, payload_sql(action.payload)).select_from(source)
            .where(a.id > first, a.playbook_id == plan.playbook.id, a.step == action.step)
            .order_by(a.id))
    return insert_ignoring(payloads, dialect, ["action_id"]).from_select(
        ["action_id", "payload"], rows)
