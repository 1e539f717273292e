"""What the outbox and the task list hold, read-only, for `retain outbox` and `retain tasks`.

The on-call person's questions: what is stuck or dead and why (`outbox list --status dead`),
what exactly was sent and what each try said (`outbox show ID`), which follow-ups are open for
me (`tasks list --assignee me --open`). Answers are plain JSON-able dicts (times as ISO 8601
UTC text), so the CLI's table and its `--json` say the same thing. Lists read at most `limit`
rows (newest first by id, the primary key: the order rows were committed in, which a run at an
earlier `--as-of` does not reorder, and a backward index scan instead of a sort) plus one count.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from engine.query.customer_view import plain
from engine.store.status import TASK_OPEN
from engine.store.tables import actions, attempts, payloads, tasks

Row = dict[str, Any]

LIST_COLUMNS = ("id", "playbook_id", "customer_id", "connector", "status", "attempts",
                "next_attempt_at", "reason", "last_error", "created_at")
"""An outbox row as a list shows it: no payload (an email body can be large)."""
TASK_COLUMNS = ("id", "due_at", "assignee", "customer_id", "playbook_id", "title", "note",
                "status", "created_at", "done_at")


def list_actions(connection: sa.Connection, *, status: str | None = None,
                 playbook: str | None = None, limit: int = 50) -> Row:
    """The `limit` outbox rows committed last that match the filters, and how many match."""
    where = _filters(status=status, playbook=playbook)
    total = connection.execute(sa.select(sa.func.count()).select_from(actions).where(*where)
                               ).scalar_one()
    rows = connection.execute(
        sa.select(*(actions.c[name] for name in LIST_COLUMNS)).where(*where)
        .order_by(actions.c.id.desc()).limit(limit)).mappings()
    return {"total": total, "actions": [_plain(row) for row in rows]}


def show_action(connection: sa.Connection, action_id: int) -> Row | None:
    """One outbox row whole (payload included) and every attempt at it, oldest first; None when
    there is no such id. The payload is read from its own table (`action_payloads`)."""
    row = connection.execute(
        sa.select(actions, payloads.c.payload)
        .select_from(actions.outerjoin(payloads, payloads.c.action_id == actions.c.id))
        .where(actions.c.id == action_id)).mappings().first()
    if row is None:
        return None
    tries = connection.execute(
        sa.select(attempts.c.attempt, attempts.c.worker, attempts.c.started_at,
                  attempts.c.finished_at, attempts.c.outcome, attempts.c.error)
        .where(attempts.c.action_id == action_id).order_by(attempts.c.id)).mappings()
    return {"action": _plain(row), "attempts": [_plain(t) for t in tries]}


def list_tasks(connection: sa.Connection, *, assignee: str | None = None,
               open_only: bool = False, limit: int = 100) -> Row:
    """Follow-up tasks, open ones first, each group by due time (no due time last), and how many
    match in all."""
    t = tasks.c
    where = [*([t.assignee == assignee] if assignee is not None else []),
             *([t.status == TASK_OPEN] if open_only else [])]
    total = connection.execute(sa.select(sa.func.count()).select_from(tasks).where(*where)
                               ).scalar_one()
    rows = connection.execute(
        sa.select(*(t[name] for name in TASK_COLUMNS)).where(*where)
        .order_by(sa.case((t.status == TASK_OPEN, 0), else_=1), t.due_at.is_(None), t.due_at,
                  t.id).limit(limit)).mappings()
    return {"total": total, "tasks": [_plain(row) for row in rows]}


def _filters(*, status: str | None, playbook: str | None) -> list[sa.ColumnElement[bool]]:
    return [*([actions.c.status == status] if status is not None else []),
            *([actions.c.playbook_id == playbook] if playbook is not None else [])]


def _plain(row: sa.RowMapping) -> Row:
    return {key: plain(value) for key, value in row.items()}
