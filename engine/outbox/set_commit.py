"""A playbook's first stage committed by `INSERT ... SELECT` (engine/plan/set_plan.py says when).

Three kinds of insert, each reading the rows the one before it inserted:

1. the enrollments, straight from the plan's statement (`SetPlan.candidates`), the holdout
   group decided in SQL, in (customer, occurrence) order, `ON CONFLICT DO NOTHING` on their
   unique key, as the per-customer commit writes them;
2. per first-stage action, one row for each of those enrollments that is not in the holdout,
   keyed in SQL, `ON CONFLICT DO NOTHING` on the key;
3. and the payloads of the rows 2 inserted, built by the database.

On PostgreSQL they are one statement, chained by `WITH ... INSERT ... RETURNING`
(`_commit_chained`). SQLite has no data-modifying `WITH`: its statements run one after the
other in a transaction holding the write lock (engine/store/txn.py), where "inserted by this
transaction" is "id above the largest before it"; one transaction per slice of customers keeps
that lock short (`_slices`). Another run racing this one writes the same keys, so the inserts
skip what it wrote. Nothing is held in Python: memory is flat in the number of enrollments, and
a crash rolls a transaction back whole (every enrollment written has all its actions); the next
run writes the rest.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.format.template_sql import TemplateSql
from engine.plan.set_plan import SetAction, SetPlan, holdout_sql, key_sql, payload_sql
from engine.store import status as st
from engine.store.dialect import insert_ignoring, scanned
from engine.store.tables import actions, customers, enrollments, events, payloads
from engine.store.txn import immediate, writing

SLICE_ROWS = 600_000  # rows the first SQLite transaction should write (`_slices`)
MAX_ROWS = 1_000_000  # rows an SQLite transaction would write at most if everyone entered
SLICE_SECONDS = 3.0  # how long an SQLite transaction should hold the write lock
PAUSE = 0.11  # seconds the lock is left free between two (SQLite's busy handler: 100 ms)


def commit_set(writer: sa.Engine, plan: SetPlan, wake: datetime | None, as_of: datetime,
               entering: int, fence: Callable[[sa.Connection], None] | None = None
               ) -> tuple[int, int, Counter[str]]:
    """Write `plan` (`wake`: when the enrollments' next stage is due, None: they complete
    now; `entering`: how many the plan counted); (enrollments inserted, of them in holdout,
    actions inserted by status). `fence` runs first in every transaction (a daemon leader's
    check, engine/daemon/leader.py): raising there rolls that transaction back."""
    if writer.dialect.name == "postgresql":
        with writing(writer) as connection:
            if fence is not None:
                fence(connection)
            return _commit_chained(connection, plan, wake, as_of)
    entered = holdout = 0
    written: Counter[str] = Counter()
    with writer.connect() as connection, _checkpoint_after(connection):
        for part in _slices(connection, 1 + 2 * len(plan.actions), entering):
            with immediate(connection):
                if fence is not None:
                    fence(connection)
                n, held, statuses = _commit_slice(connection, plan, part, wake, as_of)
            entered, holdout = entered + n, holdout + held
            written.update(statuses)
    return entered, holdout, written


def _slices(connection: sa.Connection, rows: int, entering: int
            ) -> Iterator[sa.ColumnElement[bool]]:
    """SQLite has one writer: each transaction takes a slice of customers (by rowid, read in
    order), so a dispatcher or a sync waiting for the lock gets it between slices, within a
    few seconds, never after the whole commit. `rows`: what each enrollment writes (an
    enrollment, and an action and a payload per action).

    The first slice is sized from the share of customers entering for SLICE_ROWS rows, and
    never so large that it would write more than MAX_ROWS if every customer in it entered;
    each next one is sized from how long the last took, towards SLICE_SECONDS. Between slices
    the lock is left free for PAUSE seconds: SQLite's busy handler retries every 100 ms at
    most, so a waiter retries inside the pause (without it this loop took the lock back at
    once, slice after slice, and a dispatcher waiting past its 10 s gave up)."""
    last = connection.execute(sa.text("SELECT coalesce(max(rowid), 0) FROM customers")
                              ).scalar_one()
    connection.rollback()  # that read began a transaction; each slice begins its own
    share = max(entering / max(last, 1), 0.01)
    size = max(1, min(int(SLICE_ROWS / (rows * share)), MAX_ROWS // rows))
    rowid = sa.literal_column("customers.rowid")
    start = 0
    while start < max(last, 1):
        began = time.perf_counter()
        yield sa.and_(rowid > start, rowid <= start + size)
        took = time.perf_counter() - began
        start += size
        if start < last:
            time.sleep(PAUSE)
            grow = min(4.0, max(0.25, SLICE_SECONDS / max(took, 1e-3)))
            size = max(1, min(int(size * grow), MAX_ROWS // rows))


@contextmanager
def _checkpoint_after(connection: sa.Connection) -> Iterator[None]:
    """SQLite copies the WAL into the database at a commit once the WAL is large: after every
    slice, the same index pages again and again (measured: four slices instead of one made a
    1M-customer commit 1.3 s slower). Off during the slices, one checkpoint after them."""
    every = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()
    connection.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
    try:
        yield
    finally:
        connection.exec_driver_sql(f"PRAGMA wal_autocheckpoint={int(every)}")
        connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


def _commit_chained(connection: sa.Connection, plan: SetPlan, wake: datetime | None,
                    as_of: datetime) -> tuple[int, int, Counter[str]]:
    """PostgreSQL: every statement in one, chained by `WITH ... INSERT ... RETURNING`: each
    insert reads exactly the rows the one before it inserted (no rescan, whatever the tables
    already hold), and the counts come from the same statement."""
    dialect = connection.dialect
    e, a = enrollments.c, actions.c
    entered = _enroll(plan, None, wake, as_of, dialect).returning(
        e.id, e.customer_id, e.occurrence_key, e.holdout).cte("entered")
    counts: list[Any] = [
        sa.select(sa.func.count()).select_from(entered).scalar_subquery(),
        sa.select(sa.func.count()).where(entered.c.holdout).scalar_subquery()]
    frozen = []
    for n, action in enumerate(plan.actions):
        written = _actions(plan, action, entered, [sa.not_(entered.c.holdout)], as_of,
                           dialect).returning(a.id, a.customer_id, a.step).cte(f"written_{n}")
        frozen.append(_payloads(plan, action, written, [], dialect).cte(f"frozen_{n}"))
        counts.append(sa.select(sa.func.count()).select_from(written).scalar_subquery())
    statement = sa.select(*counts)
    for part in frozen:  # run, though nothing reads them
        statement = statement.add_cte(part)
    row = connection.execute(statement).one()
    return row[0], row[1], Counter({st.PLANNED: sum(row[2:])})


def _commit_slice(connection: sa.Connection, plan: SetPlan, part: sa.ColumnElement[bool],
                  wake: datetime | None, as_of: datetime) -> tuple[int, int, Counter[str]]:
    """SQLite: the statements for the customers of `part`, in the caller's transaction. The
    rows a statement inserted are those with ids above the largest before it (the transaction
    holds the write lock)."""
    playbook = plan.playbook
    e = enrollments.c
    mine = (scanned(e.playbook_id) == playbook.id, e.version == playbook.version)  # by id
    dialect = connection.dialect
    before = _largest(connection, enrollments)
    connection.execute(_enroll(plan, part, wake, as_of, dialect))
    entered, holdout = connection.execute(  # counted: a driver's rowcount may be -1
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(
            sa.case((e.holdout, 1), else_=0)), 0)).where(*mine, e.id > before)).one()
    written: Counter[str] = Counter()
    for action in plan.actions if entered > holdout else ():
        first = _largest(connection, actions)
        connection.execute(_actions(plan, action, enrollments, [
            scanned(e.playbook_id) == playbook.id, e.version == playbook.version,
            e.id > before, sa.not_(e.holdout)], as_of, dialect))  # by the id range: the
        # playbook's index would read every enrollment the playbook ever had
        connection.execute(_payloads(plan, action, actions, [
            actions.c.id > first, actions.c.playbook_id == playbook.id,
            actions.c.step == action.step], dialect))
        written[st.PLANNED] += connection.execute(
            sa.select(sa.func.count()).where(actions.c.id > first,
                                             actions.c.playbook_id == playbook.id)
        ).scalar_one()
    return entered, holdout, written


def _largest(connection: sa.Connection, table: sa.Table) -> int:
    return connection.execute(sa.select(sa.func.coalesce(sa.func.max(table.c.id), 0))
                              ).scalar_one()


def _enroll(plan: SetPlan, part: sa.ColumnElement[bool] | None, wake: datetime | None,
            as_of: datetime, dialect: sa.Dialect) -> Any:
    """Statement 1: the enrollments, as `commit._Rows` writes them."""
    playbook = plan.playbook
    times = enrollments.c.entered_at.type
    chosen_rows = plan.candidates if part is None else plan.candidates.where(part)
    entering = chosen_rows.subquery("entering")
    held = holdout_sql(playbook, entering.c.customer_id, entering.c.occurrence)
    source: sa.FromClause = entering
    event_id: Any = sa.null()
    if not isinstance(chosen_rows.selected_columns.event_ref.element, sa.Null):
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
        sa.literal(0), now, sa.literal(playbook.trigger.membership),
    ).order_by(chosen.c.customer_id, chosen.c.occurrence)
    columns = ["playbook_id", "version", "customer_id", "occurrence_key", "event_id", "holdout",
               "wake_at", "status", "ended_at", "end_reason", "step", "entered_at",
               "membership"]
    # no conflict target: the occurrence key and the open-membership index both skip a row
    return insert_ignoring(enrollments, dialect, None).from_select(columns, rows)


def _actions(plan: SetPlan, action: SetAction, new: sa.FromClause,
             where: list[sa.ColumnElement[bool]], as_of: datetime, dialect: sa.Dialect) -> Any:
    """Statement 2: one first-stage action for each new enrollment (`new` where `where`: id,
    customer_id, occurrence_key) not in holdout, in enrollment order."""
    playbook = plan.playbook
    e = new.c
    times = actions.c.created_at.type
    rows = sa.select(
        sa.literal(playbook.id), e.id, e.customer_id, sa.literal(0), sa.literal(action.step),
        sa.literal(action.kind),
        key_sql(playbook, e.customer_id, e.occurrence_key, 0, action.step),
        sa.literal(st.PLANNED), sa.literal(0), sa.literal(plan.run_at, times),
        sa.literal(as_of, times), sa.literal(as_of, times),
    ).select_from(new).where(*where).order_by(e.id)
    columns = ["playbook_id", "enrollment_id", "customer_id", "stage", "step", "connector",
               "idempotency_key", "status", "attempts", "next_attempt_at", "created_at",
               "updated_at"]
    return insert_ignoring(actions, dialect, ["idempotency_key"]).from_select(columns, rows)


def _payloads(plan: SetPlan, action: SetAction, new: sa.FromClause,
              where: list[sa.ColumnElement[bool]], dialect: sa.Dialect) -> Any:
    """Statement 3: the payload of each action statement 2 inserted (`new` where `where`: id,
    customer_id), built by the database (an action another replica wrote in between already
    has its payload: skipped)."""
    source: sa.FromClause = new
    if any(isinstance(value, TemplateSql) for value in action.payload.values()):
        source = new.join(customers, customers.c.customer_id == new.c.customer_id)
    rows = (sa.select(new.c.id, payload_sql(action.payload)).select_from(source).where(*where)
            .order_by(new.c.id))
    return insert_ignoring(payloads, dialect, ["action_id"]).from_select(
        ["action_id", "payload"], rows)
