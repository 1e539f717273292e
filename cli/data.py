"""`retain sync customers|events|suppressions FILE`: ingest customer, event and suppression files.

Exit codes: 0 when every row was synced, 1 when any row was rejected or conflicts with an event
already synced (the good rows are still synced) or the file cannot be read at all.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cli import render
from engine.errors import DataFileError
from engine.store.open import open_store
from engine.sync.files import detect_format, write_rejects
from engine.sync.report import RowError, SyncReport

sync_app = typer.Typer(help="Ingest customers, events or suppressions from CSV or JSONL.",
                       no_args_is_help=True)

MAX_LISTED = 50


class FileFormat(StrEnum):
    """The formats a sync file can have."""

    csv = "csv"
    jsonl = "jsonl"


class Dataset(StrEnum):
    """The public data sets Retain maps to customers and events (engine/sync/datasets.py)."""

    online_retail = "online-retail"
    online_retail_ii = "online-retail-ii"
    cdnow = "cdnow"


FileArg = Annotated[Path, typer.Argument(help="CSV or JSONL file, optionally gzip-compressed.",
                                         show_default=False)]
FormatOpt = Annotated[FileFormat | None, typer.Option(
    "--format", help="File format (default: from the file name).", show_default=False)]
RejectsOpt = Annotated[Path | None, typer.Option(
    "--rejects", help="Write the rejected rows, each with a _reason, to this file in the input's"
    " format, to fix and sync again.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]
DatasetOpt = Annotated[Dataset | None, typer.Option(
    "--dataset", help="FILE is this public data set (its original gzip CSV), mapped to Retain's"
    " rows.", show_default=False)]


@sync_app.command("customers")
def customers(ctx: typer.Context, file: FileArg, fmt: FormatOpt = None,
              rejects: RejectsOpt = None, as_json: JsonOpt = False,
              dataset: DatasetOpt = None) -> None:
    """Upsert customers by customer_id; other columns go to attributes."""
    _sync(ctx, "customers", file, fmt, rejects, as_json, dataset)


@sync_app.command("events")
def events(ctx: typer.Context, file: FileArg, fmt: FormatOpt = None,
           rejects: RejectsOpt = None, as_json: JsonOpt = False,
           dataset: DatasetOpt = None) -> None:
    """Append events, skipping event_ids already synced, and refresh customers' facts."""
    _sync(ctx, "events", file, fmt, rejects, as_json, dataset)


@sync_app.command("suppressions")
def suppressions(ctx: typer.Context, file: FileArg, fmt: FormatOpt = None,
                 rejects: RejectsOpt = None, as_json: JsonOpt = False) -> None:
    """Load unsubscribed or bounced addresses (email, optional reason and suppressed_at)."""
    _sync(ctx, "suppressions", file, fmt, rejects, as_json, None)


def _sync(ctx: typer.Context, kind: str, file: Path, fmt: FileFormat | None,
          rejects: Path | None, as_json: bool, dataset: Dataset | None) -> None:
    """Run one sync, print its report, and exit 1 if any row was not synced."""
    from engine.sync.run import sync_file

    if not file.is_file():  # before open_store, which would create an empty database
        raise DataFileError(f"{file}: no such file")
    file_format = "csv" if dataset else detect_format(file, fmt.value if fmt else None)
    engine = open_store(ctx.obj.db_url)
    try:
        with render.progress(f"sync {kind}", file.stat().st_size) as advance:
            report = sync_file(engine, kind, file, file_format, advance,
                               dataset.name if dataset else None)
    finally:
        engine.dispose()
    problems = report.problems()
    if rejects is not None and problems:
        write_rejects(problems, rejects, file_format)
    if as_json:
        render.print_json(report.as_dict())
    else:
        _print_report(report, problems, rejects)
    if problems:
        raise typer.Exit(1)


def _print_report(report: SyncReport, problems: list[RowError],
                  rejects: Path | None) -> None:
    """The summary on stdout; each row not synced as FILE:LINE: reason on stderr, capped."""
    render.console.print(f"{report.source}: {report.summary()}", markup=False, soft_wrap=True)
    for error in problems[:MAX_LISTED]:
        _problem(f"{report.source}:{error.line}: {error.reason}")
    for warning in report.warnings[:MAX_LISTED]:
        _problem(f"{report.source}:{warning.line}: warning: {warning.reason}", "yellow")
    hidden = len(problems) - MAX_LISTED
    if hidden > 0:
        _problem(f"... and {hidden} more rejected row(s)"
                 f"{'' if rejects else ' (use --rejects FILE to get them all)'}")
    if rejects is not None and problems:
        render.console.print(f"rejected rows written to {rejects}", markup=False, soft_wrap=True)


def _problem(line: str, style: str = "red") -> None:
    """One line on stderr, never wrapped: editors and grep jump to FILE:LINE."""
    render.err_console.print(line, markup=False, style=style, soft_wrap=True)
