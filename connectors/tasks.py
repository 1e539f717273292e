"""The `task` action: a follow-up task for a person (a call, a review of a complaint).

It sends nothing itself: `send` returns the task row as a `Write`, and the dispatcher inserts
it in the same transaction as the outcome, once per idempotency key (engine/outbox/writes.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from connectors.base import (
    Connector,
    ConnectorParams,
    Delivery,
    Render,
    RenderFile,
    Sent,
    Write,
    expect,
    inline_problems,
)
from engine import Duration, Inline, Problem, TemplateChecker, iso


class TaskParams(ConnectorParams):
    """A templated title, who does it, when it is due, and an optional templated note."""

    title: str = Field(min_length=1, description="Templated.")
    assignee: str | None = Field(None, min_length=1, description="A person or a team queue.")
    due_in: Duration | None = Field(None, description="Due this long after the task is created.")
    note: str | None = Field(None, description="Templated; may span several lines.")


class TaskConnector(Connector):
    """Open a follow-up task.

    ```yaml
    - task:
        title: "Call {{ customer.name }}: inactive since {{ customer.last_active_at | date }}"
        assignee: retention-team
        due_in: 2d
    ```
    """

    kind = "task"
    local = True
    Params = TaskParams

    def check(self, params: BaseModel, templates: TemplateChecker) -> list[Problem]:
        """Title and note are templates."""
        task = expect(params, TaskParams)
        problems = inline_problems(templates, ("title",), task.title)
        if task.note is not None:
            problems += inline_problems(templates, ("note",), task.note)
        return problems

    def plan(self, params: BaseModel, render: Render, render_file: RenderFile,
             due_at: datetime) -> dict[str, Any]:
        """Rendered title and note, the assignee and the due time."""
        task = expect(params, TaskParams)
        return {"title": render(task.title, header=True), "assignee": task.assignee,
                "due_at": due_at + task.due_in if task.due_in else None,
                "note": render(task.note) if task.note is not None else None}

    def payload(self, params: BaseModel, render: Render, render_file: RenderFile,
                due_at: datetime, *, key: str, customer: Mapping[str, Any],
                unsubscribe_url: str) -> dict[str, Any]:
        """The planned fields as JSON: the due time spelled as an ISO instant."""
        fields = self.plan(params, render, render_file, due_at)
        return {**fields, "due_at": iso(fields["due_at"]) if fields["due_at"] else None}

    def payload_template(self, params: BaseModel, due_at: datetime) -> dict[str, Any] | None:
        """`payload` with the title and note as templates: the same for every customer."""
        task = expect(params, TaskParams)
        return {"title": Inline(task.title, header=True), "assignee": task.assignee,
                "due_at": iso(due_at + task.due_in) if task.due_in else None,
                "note": Inline(task.note) if task.note is not None else None}

    async def send(self, delivery: Delivery) -> Sent:
        """The task row for the dispatcher to write, exactly once by the action's key."""
        values = {name: delivery.payload.get(name) for name in ("title", "assignee", "due_at",
                                                                 "note")}
        return Sent(detail="task created", writes=(Write("task", values),))
