"""`retain tasks list/done`: the follow-up tasks playbooks create for people, and closing them.

`list` reads through `open_reader`; `done` is a writer (`open_store`). Open tasks come first,
soonest due first, so the list is a to-do list; `--json` carries every field.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli import plain, render
from engine.clock import iso
from engine.store.status import TASK_OPEN

tasks_app = typer.Typer(help="Follow-up tasks for people: list them, mark one done.",
                        no_args_is_help=True)

HEAD = [("ID", 6, ">"), ("DUE (UTC)", 16, "<"), ("ASSIGNEE", 12, "<"), ("CUSTOMER", 12, "<"),
        ("PLAYBOOK", 14, "<"), ("TITLE", 15, "<")]


@tasks_app.command("list")
def list_command(
    ctx: typer.Context,
    assignee: Annotated[str | None, typer.Option("--assignee", metavar="WHO", show_default=False,
                                                 help="Only tasks assigned to WHO.")] = None,
    open_only: Annotated[bool, typer.Option("--open", help="Only tasks not done yet.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="N",
                                       help="Show at most N tasks.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print the tasks as JSON.")] = False,
) -> None:
    """List follow-up tasks: open ones first by due time, then done ones."""
    from engine.query.outbox import list_tasks

    found = plain.read(ctx, lambda c: list_tasks(c, assignee=assignee, open_only=open_only,
                                                  limit=limit))
    if as_json:
        render.print_json(found)
        return
    rows = found["tasks"]
    if not rows:
        typer.echo("no tasks" + (f" for {assignee}" if assignee else "")
                   + (" open" if open_only else ""))
        return
    typer.echo(plain.row([h for h, _, _ in HEAD], HEAD))
    for task in rows:
        done = f"done {plain.when(task['done_at'])}: " if task["status"] != TASK_OPEN else ""
        typer.echo(plain.row([task["id"], plain.when(task["due_at"]), task["assignee"],
                              task["customer_id"], task["playbook_id"], task["title"]], HEAD))
        if done or len(task["title"]) > HEAD[-1][1]:
            typer.echo(plain.clip(f"       {done}{plain.one_line(task['title'])}", plain.WIDTH))
    if found["total"] > len(rows):
        typer.echo(f"showing {len(rows):,} of {found['total']:,}; --limit N for more")


@tasks_app.command("done")
def done(ctx: typer.Context,
         task_id: Annotated[int, typer.Argument(metavar="ID", help="The task's id.")]) -> None:
    """Mark a task done (now); a task done before keeps the time it was done."""
    from engine.clock import utcnow
    from engine.outbox.admin import complete_task

    result = plain.write(ctx, lambda c: complete_task(c, task_id, utcnow()))
    when = iso(result.done_at) if result.done_at else "an unknown time"
    if result.already:
        typer.echo(f"task {task_id} ({result.title}) was already done, at {when}")
    else:
        typer.echo(f"task {task_id} ({result.title}) done at {when}")
