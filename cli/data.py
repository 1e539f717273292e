"""`retain sync customers|events FILE`: ingest customer and event files.

Exit codes: 0 when every row was synced, 1 when any row was rejected (the good rows are still
synced) or the file cannot be read at all.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cli import render
from engine.errors import DataFileError
from engine.store.open import open_store
from engine.sync.files import detect_format
from engine.sync.ingest import SyncReport, sync_customers, sync_events, write_rejects

sync_app = typer.Typer(help="Ingest customers or events from CSV or JSONL.", no_args_is_help=True)

MAX_LISTED = 50


class FileFormat(StrEnum):
    """The formats a sync file can have."""

    csv = "csv"
    jsonl = "jsonl"


FileArg = Annotated[Path, typer.Argument(help="CSV or JSONL file, optionally gzip-compressed.",
                                         show_default=False)]
FormatOpt = Annotated[FileFormat | None, typer.Option(
    "--format", help="File format (default: from the file name).", show_default=False)]
RejectsOpt = Annotated[Path | None, typer.Option(
    "--rejects", help="Write the rejected rows, each with a _reason, to this file in the input's"
    " format, to fix and sync again.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]


@sync_app.command("customers")
def customers(ctx: typer.Context, file: FileArg, fmt: FormatOpt = None,
              rejects: RejectsOpt = None, as_json: JsonOpt = False) -> None:
    """Upsert customers by customer_id; other columns go to attributes."""
    _sync(ctx, "customers", file, fmt, rejects, as_json)


@sync_app.command("events")
def events(ctx: typer.Context, file: FileArg, fmt: FormatOpt = None,
           rejects: RejectsOpt = None, as_json: JsonOpt = False) -> None:
    """Append events, skipping event_ids already synced, and refresh customers' facts."""
    _sync(ctx, "events", file, fmt, rejects, as_json)


def _sync(ctx: typer.Context, kind: str, file: Path, fmt: FileFormat | None,
          rejects: Path | None, as_json: bool) -> None:
    """Run one sync, print its report, and exit 1 if any row was rejected."""
    if not file.is_file():  # before open_store, which would create an empty database
        raise DataFileError(f"{file}: no such file")
    file_format = detect_format(file, fmt.value if fmt else None)
    function = sync_customers if kind == "customers" else sync_events
    engine = open_store(ctx.obj.db_url)
    try:
        with render.progress(f"sync {kind}", file.stat().st_size) as advance:
            report = function(engine, file, file_format, progress=advance)
    finally:
        engine.dispose()
    if rejects is not None and report.rejected:
        write_rejects(report.rejected, rejects, file_format)
    if as_json:
        render.print_json(report.as_dict())
    else:
        _print_report(report, rejects)
    if report.rejected:
        raise typer.Exit(1)


def _print_report(report: SyncReport, rejects: Path | None) -> None:
    """The summary on stdout; each rejected row as FILE:LINE: reason on stderr, capped."""
    render.console.print(f"{report.source}: {report.summary()}", markup=False, soft_wrap=True)
    for error in report.rejected[:MAX_LISTED]:
        _problem(f"{report.source}:{error.line}: {error.reason}")
    hidden = len(report.rejected) - MAX_LISTED
    if hidden > 0:
        _problem(f"... and {hidden} more rejected row(s)"
                 f"{'' if rejects else ' (use --rejects FILE to get them all)'}")
    if rejects is not None and report.rejected:
        render.console.print(f"rejected rows written to {rejects}", markup=False, soft_wrap=True)


def _problem(line: str) -> None:
    """One line on stderr, never wrapped: editors and grep jump to FILE:LINE."""
    render.err_console.print(line, markup=False, style="red", soft_wrap=True)
