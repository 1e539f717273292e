"""`retain report ...`: the KPIs of DESIGN section 1 as tables, `--json` or `--html FILE`.

Each command parses its options and calls one `build()` in engine/reports; the tables are drawn
by cli/report_tables.py (80 columns unless `--wide`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli import render
from cli.evaluate import playbooks_at
from cli.playbooks import JsonOpt
from cli.report_tables import print_sheets
from engine.clock import parse_as_of
from engine.config import load_settings
from engine.format.durations import parse_duration
from engine.reports import nps, retention, rfm, value
from engine.reports import playbooks as playbook_effect
from engine.reports.html import HtmlPage
from engine.reports.periods import PeriodKind
from engine.store.open import open_reader

report_app = typer.Typer(no_args_is_help=True, help="KPI reports: retention, value, RFM, NPS, "
                         "playbook effect against holdout.")

HtmlOpt = Annotated[Path | None, typer.Option(
    "--html", help="Also write a self-contained HTML page with charts to this file.",
    show_default=False, dir_okay=False)]
FromOpt = Annotated[str | None, typer.Option(
    "--from", help="First day (ISO date, UTC; default: the start of the data).",
    show_default=False)]
ToOpt = Annotated[str | None, typer.Option(
    "--to", help="Day after the last (ISO date, UTC, exclusive; default: the end of the data).",
    show_default=False)]
PeriodOpt = Annotated[PeriodKind, typer.Option("--period", help="Calendar periods (UTC).")]
AsOfOpt = Annotated[str | None, typer.Option(
    "--as-of", metavar="TS", help="Report as if now were TS (ISO date or time, UTC): nothing "
    "later is seen, and a period running past TS is partial (default: now).",
    show_default=False)]
WideOpt = Annotated[bool, typer.Option(
    "--wide", help="Show every column, however wide (default: fit 80 columns).")]


def emit(result: Any, as_json: bool, html: Path | None, title: str, wide: bool = False) -> None:
    """Print the report (tables or JSON) and write its HTML page when asked."""
    if as_json:
        render.print_json(result.to_json())
    else:
        print_sheets(render.console, result.sheets(), wide)
    if html is not None:
        page = HtmlPage(title)
        result.html(page)
        page.write(html)
        render.err_console.print(f"Wrote {html}", markup=False)


def window_option(start: str | None, end: str | None) -> tuple[Any, Any]:
    """`--from` / `--to` as aware UTC times (None: unbounded); malformed or empty is exit 2."""
    bounds = []
    for text, hint in ((start, "--from"), (end, "--to")):
        try:
            bounds.append(None if text is None else parse_as_of(text))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=hint) from None
    if bounds[0] is not None and bounds[1] is not None and bounds[0] >= bounds[1]:
        raise typer.BadParameter(f"--from {start} is not before --to {end}: the window is empty",
                                 param_hint="--from")
    return bounds[0], bounds[1]


def as_of_option(text: str | None) -> Any:
    """`--as-of` as an aware UTC time (None: now); malformed is a usage error (exit 2)."""
    try:
        return None if text is None else parse_as_of(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--as-of") from None


def connect(ctx: typer.Context) -> Any:
    """A read-only connection to the project's database."""
    return open_reader(ctx.obj.db_url).connect()


# --- value and NPS -------------------------------------------------------------------------------

TopOpt = Annotated[int, typer.Option("--top", min=1, metavar="N",
                                     help="How many of the highest-revenue customers to list.")]


@report_app.command("value")
def value_command(ctx: typer.Context, start: FromOpt = None, end: ToOpt = None,
                  top: TopOpt = 10, as_of: AsOfOpt = None, as_json: JsonOpt = False,
                  html: HtmlOpt = None, wide: WideOpt = False) -> None:
    """Revenue, AOV, repeat-purchase rate, CLV per customer and cohort, value tiers.

    Definitions: docs/REPORTS.md, "Value"."""
    window, now = window_option(start, end), as_of_option(as_of)
    with connect(ctx) as connection:
        result = value.build(connection, *window, top=top, now=now)
    emit(result, as_json, html, "Retain: customer value", wide)


@report_app.command("nps")
def nps_command(ctx: typer.Context, start: FromOpt = None, end: ToOpt = None,
                period: PeriodOpt = PeriodKind.MONTH, as_of: AsOfOpt = None,
                as_json: JsonOpt = False, html: HtmlOpt = None, wide: WideOpt = False) -> None:
    """Net Promoter Score from feedback scores 0-10, overall and per calendar period.

    Definitions: docs/REPORTS.md, "NPS"."""
    window, now = window_option(start, end), as_of_option(as_of)
    with connect(ctx) as connection:
        result = nps.build(connection, *window, kind=period, now=now)
    emit(result, as_json, html, "Retain: Net Promoter Score", wide)


# --- playbooks -----------------------------------------------------------------------------------

PlaybookPathsOpt = Annotated[list[Path] | None, typer.Option(
    "--playbooks", help="Playbook files or folders whose goals to measure (default: the project's "
    "playbooks folder).", show_default=False)]


def _report_playbooks(paths: list[Path] | None) -> list[Any]:
    """The playbooks whose goals the report measures. Without `--playbooks`, a project with no
    playbooks folder still gets entered and actions (its enrollments show "no goal defined")
    instead of an error: the report reads the database, the files only add the goals."""
    if paths is None and not Path(load_settings().playbooks_dir).is_dir():
        return []
    return playbooks_at(paths)


@report_app.command("playbooks")
def playbooks_command(ctx: typer.Context, start: FromOpt = None, end: ToOpt = None,
                      paths: PlaybookPathsOpt = None, as_of: AsOfOpt = None,
                      as_json: JsonOpt = False, html: HtmlOpt = None,
                      wide: WideOpt = False) -> None:
    """Per playbook: entered, holdout, actions by connector and status, goal conversion in
    treatment and holdout, and the uplift with a 95% interval (definitions: docs/REPORTS.md)."""
    window, now = window_option(start, end), as_of_option(as_of)
    loaded = _report_playbooks(paths)
    with connect(ctx) as connection:
        result = playbook_effect.build(connection, loaded, *window, now=now)
    emit(result, as_json, html, "Retain: playbook effect", wide)


# --- RFM -----------------------------------------------------------------------------------------


@report_app.command("rfm")
def rfm_command(ctx: typer.Context, as_json: JsonOpt = False, html: HtmlOpt = None,
                wide: WideOpt = False) -> None:
    """RFM scores (recency, frequency, monetary; 1-5 each) and named segments, with customers
    and revenue per segment; `--json` adds every scored customer. Definitions: docs/REPORTS.md,
    "RFM"."""
    with connect(ctx) as connection:
        result = rfm.build(connection, with_customers=as_json)  # 1 row per customer: JSON only
    emit(result, as_json, html, "Retain: RFM segments", wide)


# --- retention -----------------------------------------------------------------------------------

ActiveWindowOpt = Annotated[str, typer.Option(
    "--active-window", metavar="DURATION",
    help="A customer counts at an instant when they have an activity event this long before it "
         "(15m, 12h, 30d, 2w).")]
ActivityOpt = Annotated[str | None, typer.Option(
    "--activity", metavar="TYPES",
    help="Comma-separated event types that count as activity. Default: every type but the "
         "engine's own (email_sent, task_created, points_awarded, webhook_sent).",
    show_default=False)]


def _retention_options(start: str | None, end: str | None, window: str, activity: str | None
                       ) -> dict[str, Any]:
    """The retention options as build() arguments; anything malformed is a usage error (exit 2)."""
    bounds = window_option(start, end)
    try:
        width = parse_duration(window)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--active-window") from None
    if width.total_seconds() <= 0:
        raise typer.BadParameter("the active window must be longer than 0",
                                 param_hint="--active-window")
    types = None
    if activity is not None:
        types = [t.strip() for t in activity.split(",") if t.strip()]
        if not types:
            raise typer.BadParameter("expected event types, like purchase,login",
                                     param_hint="--activity")
    return {"start": bounds[0], "end": bounds[1], "window": width, "activity": types}


@report_app.command("retention")
def retention_command(ctx: typer.Context, period: PeriodOpt = PeriodKind.MONTH,
                      start: FromOpt = None, end: ToOpt = None,
                      active_window: ActiveWindowOpt = "90d", activity: ActivityOpt = None,
                      as_of: AsOfOpt = None, as_json: JsonOpt = False, html: HtmlOpt = None,
                      wide: WideOpt = False) -> None:
    """Customer retention rate (CRR) and churn per period, with new and returned customers, and
    a signup-cohort retention matrix (definitions: docs/REPORTS.md, "Retention")."""
    options = _retention_options(start, end, active_window, activity)
    now = as_of_option(as_of)
    with connect(ctx) as connection:
        result = retention.build(connection, kind=period, now=now, **options)
    emit(result, as_json, html, "Retain: customer retention", wide)
