"""The `task` action: a follow-up task for a person (a call, a review of a complaint).

Parameters and checks only; writing the task row exactly once is a later issue.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from connectors.base import (
    Connector,
    ConnectorParams,
    Render,
    RenderFile,
    expect,
    inline_problems,
)
from engine import Duration, Problem, TemplateChecker


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
