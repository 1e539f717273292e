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

COLUMNS = ("entered", "holdout", "sent", "deferred", "capped", "suppr", "failed", "dead")
ID_WIDTH = 19  # 19 + 61 for the counts: 79 columns


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
            "deferred": committed["deferred"] + delivered["deferred"],
            "capped": committed["capped"],
            "suppr": committed["suppressed"] + delivered["suppressed"],
            "failed": delivered["retrying"], "dead": committed["dead"] + delivered["dead"]}


def print_report(report: RunReport) -> None:
    """One line per playbook in 80 columns (ids longer than the column fold onto the next line),
    then the notes: limits, what waits, exits, goals."""
    out = render.console
    out.print(f"Live run at {report.as_of:%Y-%m-%d %H:%M} UTC", markup=False)
    out.print(f"{'playbook':<{ID_WIDTH}}" + "".join(f"{name:>{len(name) + 1}}" if len(name) > 6
                                                   else f"{name:>7}" for name in COLUMNS),
              markup=False, style="bold")
    notes: list[str] = []
    for line in report.playbooks.values():
        row = counts(line)
        head, rest = line.id[:ID_WIDTH - 1], line.id[ID_WIDTH - 1:]
        out.print(f"{head:<{ID_WIDTH}}" + "".join(
            f"{row[name]:>{max(len(name) + 1, 7)},}" for name in COLUMNS), markup=False)
        while rest:
            out.print(rest[:ID_WIDTH - 1], markup=False)
            rest = rest[ID_WIDTH - 1:]
        notes += _notes(line, report.dispatched)
    for note in notes:
        out.print(note, markup=False)


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
