"""`retain dry-run` and `retain explain`: the plan, and why one customer does or does not enter."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.table import Table
from rich.text import Text

from cli import render
from cli.plain import as_of_time
from cli.playbooks import JsonOpt, PathsArg, issue_json, show_warnings
from engine.clock import iso
from engine.config import Settings, load_settings
from engine.errors import InputError, did_you_mean
from engine.format.playbook import Playbook
from engine.plan.build import Plan, PlaybookPlan, make_plan
from engine.plan.delivery import cap_text
from engine.plan.planner import PlannedAction, in_holdout
from engine.query.checks import load_valid_playbooks
from engine.query.customer_view import tag_changes
from engine.query.explain import Explanation, explain, show_value
from engine.query.staleness import stale_as_of_issues
from engine.query.vocabulary import typo_warnings
from engine.store.facts import customers
from engine.store.open import open_reader
from engine.store.status import PLANNED, STATUSES

ERRORS_SHOWN = 5  # in the text plan; `--json` streams every action with its status and reason
AsOfOpt = Annotated[str | None, typer.Option(
    "--as-of", help="Evaluate as if now were this ISO date or time (naive means UTC); only events "
    "up to it are seen.", show_default=False)]


def playbooks_at(paths: list[Path] | None) -> list[Playbook]:
    """The valid playbooks under `paths` (default: the project's folder), or every problem."""
    return load_valid_playbooks(paths or [Path(load_settings().playbooks_dir)])


PlaybooksOpt = Annotated[list[Path] | None, typer.Option(
    "--playbooks", help="Playbook files or folders (default: the project's playbooks folder).",
    show_default=False)]


def find_playbook(playbook_id: str, paths: list[Path] | None) -> Playbook:
    """The valid playbook with this id under `paths`; unknown: exit 1 with a did-you-mean."""
    found = {p.id: p for p in playbooks_at(paths)}
    if playbook_id not in found:
        hint = did_you_mean(playbook_id, found) or f" (known: {', '.join(sorted(found))})"
        raise InputError(f"playbook {playbook_id!r} not found{hint}")
    return found[playbook_id]


def require_customer(connection: sa.Connection, customer_id: str) -> None:
    """A customer id named on the command line must exist."""
    found = connection.execute(sa.select(customers.c.customer_id).where(
        customers.c.customer_id == customer_id)).first()
    if found is None:
        raise InputError(f"customer {customer_id!r} not found")


def dry_run(
    ctx: typer.Context,
    paths: PathsArg = None,
    as_of: AsOfOpt = None,
    customer: Annotated[str | None, typer.Option(
        "--customer", help="Only this customer.", show_default=False)] = None,
    show: Annotated[int | None, typer.Option(
        "--show", min=0, help="Enrollments to list per playbook [default: 10; with --json all].",
        show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """The plan: who would enter which playbook and what would be done. Writes and sends nothing.

    `--json` streams every enrollment (or the first --show) with each action's key and due time.
    Every enrollment is planned whatever is listed: one that fails to render fails the dry-run.
    """
    settings = load_settings()
    playbooks = playbooks_at(paths)
    moment = as_of_time(as_of)
    engine = open_reader(ctx.obj.db_url)
    shown = (show or 0) if as_json else (10 if show is None else show)
    streamed = as_json and show is None  # the JSON document plans every enrollment itself
    with engine.connect() as connection:
        if customer is not None:
            require_customer(connection, customer)
        with render.progress("evaluating playbooks", len(playbooks)) as advance:
            plan = make_plan(connection, playbooks, moment, customer_id=customer, show=shown,
                             complete=not streamed, progress=advance, settings=settings)
        warnings = typo_warnings(connection, playbooks) + stale_as_of_issues(moment, plan.moment)
        if as_json:  # streamed while the connection is open: the plan reads as it goes
            render.write_chunks(plan.json_chunks(
                every=show is None, extra={"warnings": [issue_json(w) for w in warnings]}))
        else:
            print_plan(plan, settings)
            show_warnings(warnings)
        connection.rollback()
    if plan.errors:
        show_errors(plan.errors, None if as_json else ERRORS_SHOWN)
        raise typer.Exit(1)


def show_errors(errors: list[str], first: int | None) -> None:
    """The actions that could not be planned, on stderr: the `first` few folded to the
    terminal's width and a count of the rest (None: every one, a line each, for scripts)."""
    if first is None:
        for line in errors:
            render.error(line)
        return
    for line in errors[:first]:
        render.err_console.print(line, style="red", markup=False)
    if len(errors) > first:
        render.err_console.print(f"... and {len(errors) - first:,} more (dry-run --json lists "
                                 "them all)", style="red", markup=False)


def print_plan(plan: Plan, settings: Settings | None = None) -> None:
    """The plan for a person: a summary, then each playbook's first enrollments."""
    moment = plan.moment
    out = render.console
    out.print(f"Dry run as of {iso(moment.as_of)}: nothing is written or sent.")
    rules = _rules(settings)
    if rules:
        out.print(Text(rules))
    if moment.historical:
        out.print(f"As-of is before the latest synced event ({iso(moment.latest_event)}): facts "
                  "are derived from the events up to it (slower than a plain dry-run).")
    summary = Table(title="Plan")
    summary.add_column("playbook", no_wrap=True)
    summary.add_column("priority", justify="right")
    summary.add_column("entering", justify="right")
    summary.add_column("holdout", justify="right")
    summary.add_column("steps")
    for pp in plan.playbooks:
        steps = [getattr(step, "kind", "wait") for step in pp.playbook.steps]
        entering = Text(f"{pp.entering:,}" + (" (over limit)" if pp.over_limit else ""),
                        style="red" if pp.over_limit else "")
        summary.add_row(Text(pp.playbook.id), str(pp.playbook.document.priority), entering,
                        "-" if pp.over_limit else f"{pp.holdout:,}", ", ".join(steps))
    out.print(summary)
    for pp in plan.playbooks:
        for note in filter(None, (pp.over_limit, pp.note, _counts(pp))):
            out.print(Text(f"{pp.playbook.id}: {note}",
                           style="red" if note == pp.over_limit else ""))
        for line in _sample_lines(pp):
            out.print(Text(textwrap.fill(line, width=out.width - 1, initial_indent="  ",
                                         subsequent_indent="      ")))
    for pp in plan.playbooks:
        if pp.shown:
            out.print(_enrollment_table(pp))
    if plan.disabled:
        out.print(f"Disabled, not evaluated: {', '.join(plan.disabled)}.")


def _rules(settings: Settings | None) -> str | None:
    """`Caps: email 2/7d. Quiet hours: email 21:00-08:00 (customer's zone, else UTC).`"""
    if settings is None:
        return None
    caps, quiet = settings.caps, settings.quiet_hours
    parts = []
    if caps:
        parts.append("Caps: " + ", ".join(f"{k} {cap_text(v)}" for k, v in sorted(caps.items()))
                     + ".")
    if quiet:
        zone = settings.timezone or "UTC"
        parts.append("Quiet hours: " + ", ".join(f"{k} {v}" for k, v in sorted(quiet.items()))
                     + f" (customer's zone, else {zone}).")
    return " ".join(parts) or None


def _sample_lines(pp: PlaybookPlan) -> Iterator[str]:
    """The first reasons of each status not planned (why deferred, capped, suppressed...)."""
    for status, reasons in pp.samples.items():
        for reason in reasons:
            yield f"{status} {reason}"
        more = pp.statuses[status] - len(reasons)
        if more > 0:
            yield f"... and {more:,} more {status} (dry-run --json lists them all)"


def _counts(pp: PlaybookPlan) -> str | None:
    """`2,000 actions: 1,900 planned, 60 deferred, 30 capped, 7 suppressed, 3 dead`, over every
    enrollment, in the order of the status vocabulary."""
    if not pp.statuses:
        return None
    order = {status: n for n, status in enumerate(STATUSES)}
    parts = ", ".join(f"{n:,} {status}" for status, n in
                      sorted(pp.statuses.items(), key=lambda item: order.get(item[0], 99)))
    return f"{pp.statuses.total():,} actions: {parts}"


def _enrollment_table(pp: PlaybookPlan) -> Table:
    more = f" (first {len(pp.shown)} of {pp.entering:,}; --show N for more)" \
        if len(pp.shown) < pp.entering else ""
    table = Table(title=f"{pp.playbook.id}: {pp.entering:,} entering{more}", title_justify="left")
    table.add_column("customer")
    table.add_column("occurrence")
    table.add_column("actions")
    for enrollment in pp.shown:
        if enrollment.holdout:
            lines = ["holdout: no actions (control group)"]
        else:
            lines = [_action_line(action) for action in enrollment.actions]
        table.add_row(Text(enrollment.customer_id), Text(enrollment.occurrence),
                      Text("\n".join(lines)))
    return table


def _action_line(action: PlannedAction) -> str:
    fields = action.fields
    headline = fields.get("subject") or fields.get("title") or fields.get("url")
    if action.kind == "points":
        headline = f"{fields['amount']:+d} ({fields.get('reason') or 'no reason'})"
    elif action.kind == "tag":
        headline = tag_changes(fields.get("add") or [], fields.get("remove") or [])
    status = "" if action.status == PLANNED else f" [{action.status}: {action.reason}]"
    return f"{action.kind} at {action.run_at:%Y-%m-%d %H:%M}: {headline}{status}"


def explain_command(
    ctx: typer.Context,
    playbook: Annotated[str, typer.Argument(help="Playbook id.")],
    customer: Annotated[str, typer.Argument(help="Customer id.")],
    paths: PlaybooksOpt = None,
    as_of: AsOfOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Each clause of trigger and conditions, true or false, for one customer."""
    chosen = find_playbook(playbook, paths)
    moment = as_of_time(as_of)
    engine = open_reader(ctx.obj.db_url)
    with engine.connect() as connection:
        require_customer(connection, customer)
        result = explain(connection, chosen, customer, moment, holdout=in_holdout)
        connection.rollback()
    if as_json:
        render.print_json({**result.to_json(),
                           "warnings": [issue_json(w) for w in result.warnings]})
    else:
        print_explanation(result)
        show_warnings(list(result.warnings))


def print_explanation(result: Explanation) -> None:
    """The verdict, the trigger's window and event, the clauses as a table."""
    out = render.console
    verdict = "does not enter"
    if result.entering:
        held = " (holdout: gets nothing)" if set(result.entering) <= set(result.holdout) else ""
        verdict = f"ENTERS{held} for {', '.join(result.entering)}"
    out.print(f"{result.playbook.id} for customer {result.customer_id} as of "
              f"{iso(result.as_of)}: {verdict}", markup=False)
    partly = [key for key in result.holdout if len(result.entering) > 1]
    if partly:
        out.print(f"Holdout (gets nothing) for {', '.join(partly)}.", markup=False)
    if result.historical:
        out.print("(facts derived from the events up to as-of)")
    if not result.existed:
        out.print("The customer was created after as-of, so did not exist yet.")
    if result.window is not None:
        out.print(f"Window: {result.window.words}", markup=False)
    if result.event is not None:
        out.print(f"Event checked: {result.event['event_id']} at "
                  f"{show_value(result.event['occurred_at'])}", markup=False)
    table = Table()
    table.add_column("clause", overflow="fold")
    table.add_column("wanted", overflow="fold")
    table.add_column("actual", overflow="fold")
    table.add_column("result")
    for clause in result.clauses:
        actual = show_value(clause.actual, money=clause.money)
        table.add_row(Text("  " * clause.depth + clause.path), Text(clause.wanted),
                      Text("(none)" if actual is None else str(actual)),
                      Text("true" if clause.result else "false",
                           style="green" if clause.result else "red"))
    out.print(table)
    if result.kept_out:
        out.print(f"Kept out by reentry: already enrolled for {', '.join(result.kept_out)}.",
                  markup=False)
