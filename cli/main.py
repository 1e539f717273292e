"""The Typer app, its global options, and the one place that maps RetainError to an exit code.

Exit codes (DESIGN section 5): 0 ok, 1 the input is wrong, 2 usage (Click's own).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated

import typer

from cli import customer, data, demo, evaluate, playbooks, render, report
from engine.config import load_settings
from engine.errors import RetainError

app = typer.Typer(
    name="retain",
    help="Retain: rules-driven workflow automation for customer retention.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@dataclass(frozen=True)
class State:
    """Global options shared by every command."""

    db_url: str


@app.callback()
def root(
    ctx: typer.Context,
    db: Annotated[str | None, typer.Option("--db", help="Database URL (env RETAIN_DATABASE_URL).",
                                           show_default=False)] = None,
) -> None:
    """Retain: rules-driven workflow automation for customer retention."""
    settings = load_settings()
    ctx.obj = State(db_url=db or settings.database_url)


app.add_typer(data.sync_app, name="sync")
app.add_typer(customer.customer_app, name="customer")
app.command("validate")(playbooks.validate)
app.command("schema")(playbooks.schema)
app.command("init")(playbooks.init)
app.command("dry-run")(evaluate.dry_run)
app.command("explain")(evaluate.explain_command)
app.command("demo")(demo.demo)
app.add_typer(report.report_app, name="report")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app and turn Retain's errors into messages and exit codes."""
    try:
        app(args=argv, prog_name="retain")
    except RetainError as exc:
        render.error(str(exc))
        sys.exit(exc.exit_code)
