"""`retain outbox list/show/retry`: see what the outbox holds and re-drive dead actions.

Reading goes through `open_reader` (never writes, never migrates); `retry` is the one writer and
goes through `open_store`. The data comes from engine/query/outbox.py as plain dicts, so the text
and `--json` say the same thing. Text stays within 80 columns: a row's reason or error goes on
its own line under the row.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer

from cli import plain, render
from engine.clock import iso
from engine.errors import InputError, did_you_mean
from engine.store.status import STATUSES

outbox_app = typer.Typer(help="See and re-drive the outbox: list, show, retry dead actions.",
                         no_args_is_help=True)

Row = dict[str, Any]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the data as JSON.")]
PlaybookOpt = Annotated[str | None, typer.Option("--playbook", metavar="ID", show_default=False,
                                                 help="Only this playbook's actions.")]
LIST_HEAD = [("ID", 6, ">"), ("PLAYBOOK", 15, "<"), ("CUSTOMER", 12, "<"), ("CONNECTOR", 9, "<"),
             ("STATUS", 10, "<"), ("TRIES", 5, ">"), ("NEXT (UTC)", 16, "<")]


def _status(value: str | None) -> str | None:
    """A word of engine/store/status.py, or a usage error (exit 2) listing them."""
    if value is None or value in STATUSES:
        return value
    raise typer.BadParameter(f"unknown status {value!r}{did_you_mean(value, list(STATUSES))}; "
                             f"the statuses are: {', '.join(STATUSES)}", param_hint="--status")


StatusOpt = Annotated[str | None, typer.Option(
    "--status", metavar="STATUS", callback=_status, show_default=False,
    help=f"Only actions in this status: {', '.join(STATUSES)}.")]


@outbox_app.command("list")
def list_command(ctx: typer.Context, status: StatusOpt = None, playbook: PlaybookOpt = None,
                 limit: Annotated[int, typer.Option("--limit", min=1, metavar="N",
                                                    help="Show at most N actions.")] = 50,
                 as_json: JsonOpt = False) -> None:
    """List outbox actions, newest first, with their status, tries and reason or last error."""
    from engine.query.outbox import list_actions

    found = plain.read(ctx, lambda c: list_actions(c, status=status, playbook=playbook,
                                                    limit=limit))
    if as_json:
        render.print_json(found)
        return
    rows = found["actions"]
    if not rows:
        typer.echo("no actions" + _scope(status, playbook))
        return
    typer.echo(plain.row([h for h, _, _ in LIST_HEAD], LIST_HEAD))
    for action in rows:
        typer.echo(plain.row([action["id"], action["playbook_id"], action["customer_id"],
                              action["connector"], action["status"], action["attempts"],
                              plain.when(action["next_attempt_at"])], LIST_HEAD))
        why = "; ".join(text for text in (action["reason"], action["last_error"]) if text)
        if why:
            typer.echo(plain.clip("       " + plain.one_line(why), plain.WIDTH))
    if found["total"] > len(rows):
        typer.echo(f"showing {len(rows):,} of {found['total']:,}{_scope(status, playbook)}; "
                   "--limit N for more")


@outbox_app.command("show")
def show(ctx: typer.Context,
         action_id: Annotated[int, typer.Argument(metavar="ID", help="The action's id.")],
         as_json: JsonOpt = False) -> None:
    """Show one action: its row, its frozen payload and every attempt with its error."""
    from engine.query.outbox import show_action

    found = plain.read(ctx, lambda c: show_action(c, action_id))
    if found is None:
        raise InputError(f"no action {action_id} in the outbox (see `retain outbox list`)")
    if as_json:
        render.print_json(found)
        return
    _print_action(found["action"])
    _print_attempts(found["attempts"])


@outbox_app.command("retry")
def retry(ctx: typer.Context,
          action_id: Annotated[int | None, typer.Argument(metavar="[ID]", show_default=False,
                                                          help="The dead action to retry.")] = None,
          dead: Annotated[bool, typer.Option("--dead", help="Retry every dead action.")] = False,
          playbook: PlaybookOpt = None,
          as_of: Annotated[str | None, typer.Option(
              "--as-of", show_default=False,
              help="Due at this ISO time (business time, as `retain dispatch --as-of` sees it) "
              "instead of now.")] = None) -> None:
    """Put dead actions back to `retrying`, due now, with attempts counted from 0 again.

    Earlier attempts and their errors stay in the history (`retain outbox show ID`). Only
    dead actions are retried; an action dead-lettered when planned (a template that failed
    for the customer, no attempt made) has no message to send and stays dead.
    """
    from engine.outbox.admin import retry_action, retry_dead

    if (action_id is None) == (not dead):
        raise typer.BadParameter("give an action ID or --dead, not both", param_hint="ID")
    if playbook is not None and not dead:
        raise typer.BadParameter("--playbook goes with --dead", param_hint="--playbook")
    due = plain.as_of_time(as_of)
    if action_id is not None:
        plain.write(ctx, lambda c: retry_action(c, action_id, due))
        typer.echo(f"action {action_id}: retrying, due {iso(due)}; its earlier attempts stay "
                   f"in `retain outbox show {action_id}`")
        return
    done = plain.write(ctx, lambda c: retry_dead(c, due, playbook))
    scope = f" of playbook {playbook}" if playbook else ""
    typer.echo(f"{done.retried:,} dead action{'s' if done.retried != 1 else ''}{scope} put back "
               f"to retrying, due {iso(due)}")
    if done.unsendable:
        typer.echo(f"{done.unsendable:,} left dead: dead-lettered when planned, with no message "
                   "to send")


def _scope(status: str | None, playbook: str | None) -> str:
    bits = [f"status {status}" if status else "", f"playbook {playbook}" if playbook else ""]
    shown = ", ".join(b for b in bits if b)
    return f" ({shown})" if shown else ""


def _print_action(action: Row) -> None:
    """The row as `field: value` lines, then the payload as indented JSON."""
    import textwrap

    heading = (f"Action {action['id']}: {action['connector']} for customer "
               f"{action['customer_id']}, playbook {action['playbook_id']}")
    for line in textwrap.wrap(heading, plain.WIDTH, subsequent_indent="  ",
                              break_on_hyphens=False):
        typer.echo(line)  # long ids (a UUID) wrap rather than pass 80 columns
    tries = f" after {action['attempts']} attempt{'s' if action['attempts'] != 1 else ''}"
    fields = [
        ("status", f"{action['status']}{tries if action['attempts'] else ''}"),
        ("reason", action["reason"]), ("last error", action["last_error"]),
        ("key", action["idempotency_key"]),
        ("enrollment", action["enrollment_id"]), ("step", f"{action['step']}, stage "
                                                          f"{action['stage']}"),
        ("created", action["created_at"]), ("next attempt", action["next_attempt_at"]),
        ("sent", action["sent_at"]), ("updated", action["updated_at"]),
        ("leased", f"until {action['lease_until']} (real clock) by "
                   f"{action['leased_by'] or '?'}" if action["lease_until"] else None),
    ]
    for name, value in fields:
        for line in plain.wrapped(str(value) if value is not None else plain.NONE, 16,
                                  f"  {name}:"):
            typer.echo(line)
    payload = dict(action["payload"] or {})
    message = payload.pop("message", None)  # an email's wire text: shown as lines, not JSON
    typer.echo("Payload (as frozen at commit):")
    for line in json.dumps(payload, indent=2, ensure_ascii=False).splitlines():
        body = line.lstrip()
        pad = " " * (2 + len(line) - len(body))  # long values fold under their own indent
        for part in textwrap.wrap(body, plain.WIDTH - len(pad), break_on_hyphens=False) or [""]:
            typer.echo(pad + part)
    if isinstance(message, str):
        lines = message.splitlines()
        typer.echo(f"Message as sent ({len(lines)} lines; the whole text with --json):")
        for line in lines[:MESSAGE_LINES]:
            typer.echo(f"  {line[:76]}")
        if len(lines) > MESSAGE_LINES:
            typer.echo(f"  ... {len(lines) - MESSAGE_LINES} more lines")


MESSAGE_LINES = 40  # of an email's wire text in `outbox show`


def _print_attempts(tries: list[Row]) -> None:
    """One line per attempt (its error, if any, on the line below), oldest first."""
    if not tries:
        typer.echo("Attempts: none yet")
        return
    head = [("#", 3, ">"), ("STARTED (UTC)", 19, "<"), ("TOOK", 6, ">"), ("OUTCOME", 10, "<"),
            ("WORKER", 36, "<")]
    typer.echo("Attempts (oldest first):")
    typer.echo(plain.row([h for h, _, _ in head], head))
    for attempt in tries:
        typer.echo(plain.row([attempt["attempt"], plain.when(attempt["started_at"], seconds=True),
                              _took(attempt["started_at"], attempt["finished_at"]),
                              attempt["outcome"], attempt["worker"]], head))
        if attempt["error"]:
            typer.echo("\n".join(plain.wrapped(attempt["error"], 6)))


def _took(started: str | None, finished: str | None) -> str | None:
    """Seconds an attempt took (`1.2s`), from its ISO times; None while it runs."""
    if not started or not finished:
        return None
    seconds = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    return f"{seconds:.0f}s"
