"""`retain run`: one live cycle — evaluate, commit the plan, resume waits, dispatch what is due.

The counterpart of `dry-run` that acts: what it commits is the plan a dry-run at the same
`--as-of` prints. Running it again at once does nothing new.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli import render
from cli.evaluate import AsOfOpt, as_of_time, playbooks_at
from cli.playbooks import JsonOpt, PathsArg
from engine.config import load_settings
from engine.outbox.run import PlaybookRun, RunReport, run_cycle
from engine.store.open import open_store

COLUMNS = ("entered", "holdout", "sent", "deferred", "capped", "suppr.", "failed", "dead")


def run(
    ctx: typer.Context,
    paths: PathsArg = None,
    as_of: AsOfOpt = None,
    no_dispatch: Annotated[bool, typer.Option(
        "--no-dispatch", help="Only commit the plan; deliver later with `retain dispatch`.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """One live cycle: evaluate every enabled playbook, commit its plan, resume enrollments
    whose wait is over, then deliver what is due. `--as-of` is the business time of all of it.
    """
    playbooks = playbooks_at(paths)
    moment = as_of_time(as_of)
    settings = load_settings()
    writer = open_store(ctx.obj.db_url)
    try:
        with render.progress("evaluating playbooks", len(playbooks)) as advance:
            report = run_cycle(writer, playbooks, moment, settings, dispatch=not no_dispatch,
                               progress=advance)
    finally:
        writer.dispose()
    if as_json:
        render.print_json(report.to_json())
        return
    print_report(report)


def counts(line: PlaybookRun) -> dict[str, int]:
    """A playbook's actions as the table shows them: what was delivered, and what the plan
    decided that will not be (capped, suppressed, dead) or not yet (deferred)."""
    committed, delivered = line.committed, line.delivered
    return {"entered": line.entered, "holdout": line.holdout, "sent": delivered["sent"],
            "deferred": committed["deferred"], "capped": committed["capped"],
            "suppr.": committed["suppressed"] + delivered["suppressed"],
            "failed": delivered["retrying"], "dead": committed["dead"] + delivered["dead"]}


def print_report(report: RunReport) -> None:
    """One row per playbook (80 columns), then the notes: limits, exits, what waits."""
    from rich.table import Table

    table = Table(title=f"Live run at {report.as_of:%Y-%m-%d %H:%M} UTC", title_justify="left")
    table.add_column("playbook", overflow="fold", max_width=22)
    for name in COLUMNS:
        table.add_column(name, justify="right")
    notes: list[str] = []
    for line in report.playbooks.values():
        row = counts(line)
        table.add_row(line.id, *(f"{row[name]:,}" for name in COLUMNS))
        notes += _notes(line, report.dispatched)
    render.console.print(table)
    for note in notes:
        render.console.print(note, markup=False)


def _notes(line: PlaybookRun, dispatched: bool) -> list[str]:
    found = []
    if line.over_limit:
        found.append(f"{line.id}: {line.over_limit}")
    waiting = line.committed["planned"] - (sum(line.delivered.values()) if dispatched else 0)
    if waiting > 0:
        found.append(f"{line.id}: {waiting:,} actions committed, not yet delivered"
                     + ("" if dispatched else " (--no-dispatch)"))
    if line.exited:
        found.append(f"{line.id}: {line.exited:,} enrollments ended (exit_when / on_change)")
    if line.converted:
        found.append(f"{line.id}: {line.converted:,} reached the goal")
    return found
