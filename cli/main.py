"""The Typer app, its global options, and the one place that maps RetainError to an exit code.

Exit codes (DESIGN section 5): 0 ok, 1 the input is wrong, 2 usage (Click's own).

Commands load lazily: `COMMANDS` names each command's module and its one-line help, and a
command's module (with the engine parts, SQLAlchemy, Jinja2, ... it needs) is imported only when
that command runs. `retain --help` and `retain validate` therefore pay for what they use, not for
every report's charting library (bench/bench_startup.py measures it).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import import_module
from typing import Annotated

import typer
from typer.core import TyperGroup

from engine.errors import RetainError

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module:attribute, the one-line help `retain --help` lists)
    "init": ("cli.playbooks:init", "Scaffold a project: retain.toml, playbooks/ with a commented "
             "example, its test in playbooks/tests/, templates/."),
    "validate": ("cli.playbooks:validate", "Check playbooks and their templates; every problem "
                 "with file:line:column."),
    "schema": ("cli.playbooks:schema", "Print the playbook JSON Schema (generated from the "
               "models); `--tests`: the schema of playbook test files."),
    "test": ("cli.test:test", "Run playbook tests (*.test.yaml): made-up customers and a "
             "simulated clock, through the same code as `retain run`; nothing is sent."),
    "migrate": ("cli.migrate:migrate", "Upgrade the database schema (reading commands never "
                "do)."),
    "sync": ("cli.data:sync_app", "Ingest customers, events or suppressions from CSV or JSONL."),
    "dry-run": ("cli.evaluate:dry_run", "The plan: who would enter which playbook and what would "
                "be done. Writes and sends nothing."),
    "explain": ("cli.evaluate:explain_command", "Each clause of trigger and conditions, true or "
                "false, for one customer."),
    "preview": ("cli.preview:preview_command", "Render the whole message (headers, text, HTML) "
                "one customer would get. Sends nothing."),
    "run": ("cli.run:run", "One live cycle: evaluate every enabled playbook, commit its plan, "
            "resume enrollments whose wait is over, then deliver what is due. `--as-of` is the "
            "business time of all of it."),
    "customer": ("cli.customer:customer_app", "Look at one customer: profile, facts, timeline, "
                 "what was done."),
    "report": ("cli.report:report_app", "KPI reports: retention, value, RFM, NPS, playbook effect "
               "against holdout."),
    "dispatch": ("cli.dispatch:dispatch_command", "Deliver what is due in the outbox: claim, "
                 "send, record; retry or dead-letter."),
    "outbox": ("cli.outbox:outbox_app", "See and re-drive the outbox: list, show, retry dead "
               "actions."),
    "tasks": ("cli.tasks:tasks_app", "Follow-up tasks for people: list them, mark one done."),
    "unsubscribe": ("cli.unsubscribe:unsubscribe", "Suppress an address (or a link's token) and "
                    "stop its waiting emails."),
    "daemon": ("cli.daemon:daemon", "Run continuously: the HTTP API, evaluation on a schedule "
               "and on events, the outbox delivered as it comes due."),
    "demo": ("cli.demo:demo", "Create a demo database and run the sample playbooks live; email "
             "goes to a folder."),
}


def load_command(name: str) -> typer.core.TyperCommand | TyperGroup:
    """Import one command's module and build its Click command."""
    module_name, attribute = COMMANDS[name][0].split(":")
    target = getattr(import_module(module_name), attribute)
    holder = typer.Typer()  # built as a part of an app, as the root would: a group stays a group
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    command = typer.main.get_group(holder).commands[name]
    return command  # type: ignore[return-value]


class LazyGroup(TyperGroup):
    """The root group: lists commands from COMMANDS, imports one only when it is run."""

    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        return list(COMMANDS)

    def get_command(self, ctx: typer.Context, cmd_name: str):  # type: ignore[no-untyped-def,override]
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def format_commands(self, ctx, formatter) -> None:  # type: ignore[no-untyped-def]
        rows = [(name, help_text) for name, (_, help_text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    name="retain",
    help="Retain: rules-driven workflow automation for customer retention.",
    cls=LazyGroup,
    rich_markup_mode=None,  # plain help: rich would import every command to list them
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@dataclass(frozen=True)
class State:
    """Global options shared by every command."""

    db_url: str
    db_given: bool = False  # --db was on the command line (validate then reads it too)


@app.callback()
def root(
    ctx: typer.Context,
    db: Annotated[str | None, typer.Option("--db", help="Database URL (env RETAIN_DATABASE_URL).",
                                           metavar="URL", show_default=False)] = None,
) -> None:
    """Retain: rules-driven workflow automation for customer retention."""
    from engine.config import load_settings  # pydantic: not for `retain --help`

    settings = load_settings()
    ctx.obj = State(db_url=db or settings.database_url, db_given=db is not None)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app and turn Retain's errors into messages and exit codes."""
    try:
        app(args=argv, prog_name="retain")
    except RetainError as exc:
        from cli import render

        render.error(str(exc))
        sys.exit(exc.exit_code)
