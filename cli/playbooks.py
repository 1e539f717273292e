"""`retain validate`, `retain schema` and `retain init`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli import render
from engine.config import CONFIG_FILE, load_settings
from engine.errors import Issue
from engine.format.playbook import Playbook
from engine.format.validation import LoadResult
from engine.query.checks import load_playbooks

PathsArg = Annotated[list[Path] | None, typer.Argument(
    help="Playbook files or folders (default: the project's playbooks folder).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


DbOpt = Annotated[str | None, typer.Option(
    "--db", metavar="URL", show_default=False,
    help="Also warn of event types and properties this database never had (as does --db "
    "before the command).")]


def issue_json(issue: Issue) -> dict[str, Any]:
    """An issue (or warning) as JSON: where, which value, what."""
    where = issue.location
    return {"file": where.file, "line": where.line, "column": where.column, "path": issue.path,
            "message": issue.message}


def show_warnings(warnings: list[Issue]) -> None:
    """Warnings on stderr, folded to the terminal's width; they do not change the exit code."""
    for warning in warnings:
        render.err_console.print(f"warning: {warning}", style="yellow", markup=False)


def data_warnings(url: str, playbooks: list[Playbook]) -> list[Issue]:
    """The typo warnings of `playbooks` against the synced data at `url`."""
    from engine.query.vocabulary import typo_warnings  # only with a database
    from engine.store.open import open_reader

    engine = open_reader(url)
    try:
        with engine.connect() as connection:
            return typo_warnings(connection, playbooks)
    finally:
        engine.dispose()


def validate(ctx: typer.Context, paths: PathsArg = None, db: DbOpt = None,
             as_json: JsonOpt = False) -> None:
    """Check playbooks and their templates; every problem with file:line:column."""
    result = load_playbooks(paths or [Path(load_settings().playbooks_dir)])
    url = db or (ctx.obj.db_url if ctx.obj is not None and ctx.obj.db_given else None)
    warnings = data_warnings(url, result.playbooks) if url and result.playbooks else []
    if as_json:
        render.print_json({
            "valid": not result.issues, "files": [str(f) for f in result.files],
            "playbooks": [p.id for p in result.playbooks],
            "issues": [issue_json(i) for i in result.issues],
            "warnings": [issue_json(w) for w in warnings]})
    else:
        print_validation(result, warnings)
    if result.issues:
        raise typer.Exit(1)


def print_validation(result: LoadResult, warnings: list[Issue]) -> None:
    """Warnings, then every problem and a count, or OK."""
    show_warnings(warnings)
    if result.issues:
        for issue in result.issues:
            render.error(str(issue))
        files = len({i.location.file for i in result.issues})
        render.error(f"{len(result.issues)} problem(s) in {files} file(s)")
        return
    count = len(result.playbooks)
    typer.echo(f"OK: {count} playbook{'s' if count != 1 else ''} valid "  # plain: no rich to load
               f"({len(result.files)} file{'s' if len(result.files) != 1 else ''})")


def schema(tests: Annotated[bool, typer.Option(
        "--tests", help="Print the schema of playbook test files (*.test.yaml) instead.")] = False
           ) -> None:
    """Print the playbook JSON Schema (generated from the models); `--tests`: the schema of
    playbook test files."""
    if tests:
        from engine.playtest.schema import playtest_schema_text

        typer.echo(playtest_schema_text(), nl=False)
        return
    from engine.format.schema import schema_text  # the models' schema: only for this command

    typer.echo(schema_text(), nl=False)


EXAMPLE = """\
# yaml-language-server: $schema=playbook.schema.json
# An example playbook: edit it, then `retain validate`, `retain test` and `retain dry-run`.
id: winback-30d
name: Win back customers inactive for 30 days
description: Wake-up offer, then a call if they stay silent.
trigger:
  inactive: { days: 30 }          # last activity 30 or more days ago
when:
  - email: { is_null: false }
  - total_spent: { gt: 100 }
reentry: once                     # once per inactivity episode
holdout: 10%                      # a control group, never acted on
goal: { event: purchase, within: 14d }
exit_when: { event: purchase }
actions:
  - email:
      subject: "We miss you, {{ customer.name }}"
      template: winback           # templates/winback.txt.j2
  - wait: 3d
  - task:
      title: "Call {{ customer.name }}: inactive since {{ customer.last_active_at | date }}"
      assignee: retention-team
      due_in: 2d
"""
EXAMPLE_TEMPLATE = """\
Hello {{ customer.name }},

it has been a while since your last visit. Here is 10% off your next order.

Unsubscribe: {{ unsubscribe_url }}
"""

EXAMPLE_TEST = """\
# yaml-language-server: $schema=test.schema.json
# Tests of playbooks/winback-30d.yaml. Run them with `retain test` (docs/PLAYBOOKS.md, "Testing
# a playbook"): each test gets a fresh store of its own and a simulated clock that starts at
# 2026-01-05T10:00:00Z; times like -45d are relative to it. Nothing is sent: emails and
# webhooks are recorded, tasks and points are written to the test's store.
playbooks: [winback-30d]
settings:                         # a test reads no retain.toml: state what the playbook needs
  caps: { email: "2/7d" }
customers:                        # as `retain sync customers` reads them
  - { customer_id: ana, email: ana@example.com, name: Ana, created_at: -300d }
  - { customer_id: ben, email: ben@example.com, name: Ben, created_at: -300d }
  - { customer_id: cat, name: Cat, created_at: -300d }
events:                           # as `retain sync events` reads them; `at` is when
  - { customer_id: ana, type: purchase, at: -45d, amount: 150 }
  - { customer_id: ben, type: purchase, at: -45d, amount: 40 }
  - { customer_id: cat, type: purchase, at: -45d, amount: 150 }
tests:
  - name: an inactive good customer gets the email, then a call task three days later
    steps:
      - run                       # one `retain run` at the clock
      - expect:
          entered: [ana]          # exactly who entered in that run
          not_entered:            # who did not, and the clause that kept them out
            ben: total_spent      # spent 40, not over 100
            cat: email            # no address
          sent:                   # the actions that run sent, matched on the fields named
            - email: { customer: ana, subject: "We miss you, Ana", text: "10% off" }
          enrollments: { ana: waiting }
      - advance: 3d               # the clock moves on; nothing runs by itself
      - run
      - expect:
          sent:
            - task: { customer: ana, title: "Call Ana: inactive since 2025-11-21" }
          enrollments: { ana: completed }

  - name: a purchase after the email ends the enrollment and counts as the goal
    steps:
      - run
      - advance: 1d
      - events:
          - { customer_id: ana, type: purchase, at: now, amount: 60 }
      - run
      - expect:
          exited: [ana]           # exit_when: no call task
          converted: [ana]        # the goal, a purchase within 14 days
          sent: []
          enrollments: { ana: exited }
"""


CONFIG_EXAMPLE = """\
# Retain settings (docs/CONFIG.md). Each key can also be set as RETAIN_<KEY>, which wins over
# this file. Secrets (RETAIN_SMTP_PASSWORD, RETAIN_SECRET_KEY, RETAIN_WEBHOOK_SECRET) are read
# only from the environment, never from here.

[retain]
database_url = "sqlite:///retain.db"
playbooks_dir = "playbooks"
# timezone = "UTC"                          # for customers without a time zone
# email_from = "Shop <news@shop.example>"
# public_url = "https://retain.shop.example"  # base of unsubscribe links

# [smtp]
# host = "smtp.mailprovider.example"
# port = 587
# username = "retain@shop.example"
# tls = "starttls"                          # none, starttls or tls

# [caps]
# email = "2/7d"                            # at most 2 emails per customer per 7 days

# [quiet_hours]
# email = "21:00-08:00"                     # in the customer's time zone
"""


def init(directory: Annotated[Path, typer.Argument(help="Project folder to create.")] = Path(".")
         ) -> None:
    """Scaffold a project: retain.toml, playbooks/ with a commented example, its test in
    playbooks/tests/, templates/."""
    from engine.format.schema import SCHEMA_FILE, schema_text
    from engine.playtest.schema import TEST_SCHEMA_FILE, playtest_schema_text

    files = {
        CONFIG_FILE: CONFIG_EXAMPLE,
        f"playbooks/{SCHEMA_FILE}": schema_text(),
        "playbooks/winback-30d.yaml": EXAMPLE,
        f"playbooks/tests/{TEST_SCHEMA_FILE}": playtest_schema_text(),
        "playbooks/tests/example.test.yaml": EXAMPLE_TEST,
        "templates/winback.txt.j2": EXAMPLE_TEMPLATE,
    }
    for name, text in files.items():
        path = directory / name
        if path.exists():
            render.console.print(f"kept   {path} (exists)")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        render.console.print(f"wrote  {path}")
    render.console.print(f"Next: cd {directory} && retain validate && retain test")
