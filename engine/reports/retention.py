"""`retain report retention`: customer retention rate (CRR) and churn per period; signup cohorts.

Definitions (DESIGN section 1; docs/REPORTS.md, "Retention", says the same):

- A customer **counts** at instant t when they have at least one **activity** event in
  `[t - W, t)`: W is `--active-window` (default 90 days), activity is the `--activity` types
  (default every type but ENGINE_EVENT_TYPES, the engine's records of its own actions).
- Per period `[start, end)`: S counts at `start`, E at `end`, N = counted at `end` but not at
  `start`. **joined** = the part of N whose first activity event ever is in `[start, end)`;
  **returned** = the rest of N (active before, lapsed, back). **kept** = E - N = counted at both
  instants, so CRR = kept / S x 100 never exceeds 100 (None when S = 0); churn = 100 - CRR.
- Periods are calendar weeks (ISO, Monday), months or quarters in UTC, from the one containing
  `--from` (default: the first activity event) to the one containing the report's end. The end
  is `--to` (default: the end of the period holding the latest event of a non-engine type), but
  never after now (the clock, or `--as-of`). A period that has ended is complete even if no
  event was synced after some earlier day: no activity in the window means lapsed (DESIGN 1).
  Only a period cut short (by now, `--to` or a `--from` inside it) is measured at the cut and
  marked `partial`. When the latest event is more than a week older than a period's end, the
  report says so (`notes`): those customers count as lapsed, which a lagging sync would fake.
- **Cohorts**: a customer's cohort is the calendar month of `customers.created_at` (sync sets it
  to the first event when the customer file has none). Cell (cohort, k) = % of the cohort with
  an activity event in month cohort + k. Cohorts are the months from the one containing the
  first period's start to the report's end; the last month is cut at the end (partial).

How it is computed: engine/reports/retention_scan.py (a bitmask of time slices per customer,
folded into patterns in the database, counted with numpy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

from engine.clock import iso
from engine.errors import did_you_mean
from engine.format.durations import format_duration
from engine.reports.html import HtmlPage, figure
from engine.reports.periods import (
    Period,
    PeriodKind,
    next_start,
    period_start,
    quiet_note,
    report_now,
)
from engine.reports.retention_scan import (
    BITS,
    Grid,
    Scan,
    cohort_counts,
    cut_periods,
    event_types,
    extreme,
    period_counts,
    read_patterns,
)
from engine.reports.sheet import Column, Sheet, columns
from engine.store.facts import ENGINE_EVENT_TYPES

DEFAULT_WINDOW = timedelta(days=90)
PLACES = 4
MONTH = PeriodKind.MONTH


@dataclass(frozen=True)
class PeriodCounts:
    """One period's S, E and the split of E into kept, joined and returned customers."""

    period: Period  # the calendar period, for its label
    start: datetime  # where S is counted: the period's start, or --from inside it
    end: datetime  # where E is counted: the period's end, or the report's end inside it
    partial: bool
    start_customers: int
    end_customers: int
    kept_customers: int
    joined_customers: int

    @property
    def label(self) -> str:
        """`2011-03`, `2011-Q1` or `2011-W09`."""
        return self.period.label

    @property
    def new_customers(self) -> int:
        """N: counted at the end, not at the start (joined + returned)."""
        return self.end_customers - self.kept_customers

    @property
    def returned_customers(self) -> int:
        """The part of N that had been active before the period, lapsed and came back."""
        return self.new_customers - self.joined_customers

    @property
    def lost_customers(self) -> int:
        """Counted at the start, not at the end."""
        return self.start_customers - self.kept_customers

    @property
    def crr(self) -> float | None:
        """(E - N) / S x 100; None when nobody counted at the start."""
        if not self.start_customers:
            return None
        return round(100.0 * self.kept_customers / self.start_customers, PLACES)

    @property
    def churn_rate(self) -> float | None:
        """100 - CRR, for the same period."""
        crr = self.crr
        return None if crr is None else round(100.0 - crr, PLACES)

    def as_dict(self) -> dict[str, Any]:
        """The period under the `--json` keys."""
        return {"label": self.label, "start": iso(self.start), "end": iso(self.end),
                "start_customers": self.start_customers, "end_customers": self.end_customers,
                "joined_customers": self.joined_customers,
                "returned_customers": self.returned_customers,
                "kept_customers": self.kept_customers, "lost_customers": self.lost_customers,
                "crr": self.crr, "churn_rate": self.churn_rate, "partial": self.partial}


@dataclass(frozen=True)
class Cohort:
    """Customers who signed up in one calendar month, and how many were active each month after."""

    start: datetime
    customers: int
    active: list[int]  # active[k]: customers with an activity event in month start + k

    @property
    def label(self) -> str:
        """`2011-03`."""
        return f"{self.start:%Y-%m}"

    @property
    def percent(self) -> list[float | None]:
        """active[k] as % of the cohort."""
        return [round(100.0 * a / self.customers, PLACES) if self.customers else None
                for a in self.active]

    def as_dict(self) -> dict[str, Any]:
        """The cohort under the `--json` keys."""
        return {"cohort": self.label, "start": iso(self.start), "customers": self.customers,
                "active": self.active, "percent": self.percent}


@dataclass(frozen=True)
class RetentionReport:
    """CRR and churn per period, and the signup-cohort retention matrix."""

    kind: PeriodKind
    window: timedelta
    activity: tuple[str, ...] | None  # None: every type but the engine's
    start: datetime | None  # --from / --to as given
    end: datetime | None
    now: datetime  # the clock or --as-of: no period is measured past it
    latest: datetime | None  # the latest event of a non-engine type before now
    periods: list[PeriodCounts] = field(default_factory=list)
    cohorts: list[Cohort] = field(default_factory=list)
    cohort_end: datetime | None = None  # activity in the cohort matrix is counted before this
    cohort_last_partial: bool = False
    absent: tuple[str, ...] = ()  # --activity types with no event at all (a typo, often)
    known: tuple[str, ...] = ()  # the event types synced, for a did-you-mean on `absent`

    def to_json(self) -> dict[str, Any]:
        """The `--json` document."""
        return {
            "period": self.kind.value,
            "active_window": format_duration(self.window),
            "activity": None if self.activity is None else list(self.activity),
            "from": None if self.start is None else iso(self.start),
            "to": None if self.end is None else iso(self.end),
            "as_of": iso(self.now),
            "latest_event": None if self.latest is None else iso(self.latest),
            "notes": self.notes,
            "periods": [p.as_dict() for p in self.periods],
            "cohorts": [c.as_dict() for c in self.cohorts],
            "cohorts_end": None if self.cohort_end is None else iso(self.cohort_end),
            "cohorts_last_month_partial": self.cohort_last_partial,
            "activity_types_without_events": list(self.absent),
        }

    @property
    def notes(self) -> list[str]:
        """What a reader must know about the data: the periods that end long after the latest
        event (their quiet customers count as lapsed)."""
        note = quiet_note(self.latest, [(f"{p.label} ends", p.end) for p in self.periods],
                          "customers with no later activity count as lapsed")
        return [] if note is None else [note]

    def sheets(self) -> list[Sheet]:
        """The periods, then the cohort matrix (months after M{TERMINAL_MONTHS - 1} and churn
        with --wide); without data, one table that says so."""
        if not self.periods:
            return [Sheet("Customer retention", [Column("note", left=True, wrap=True)],
                          [[self._empty_note()]])]
        sheets = [Sheet(f"Customer retention per {self.kind.value}", _PERIOD_COLUMNS,
                        self._period_rows(), f"{_PERIOD_CAPTION} {self._scope()}.",
                        self.notes)]
        if self.cohorts:
            names, rows = self._cohort_rows(places=0)
            months = [Column(n, narrow=k < TERMINAL_MONTHS + 2) for k, n in enumerate(names)]
            months[0] = Column(names[0], left=True)
            cut = len(names) - 2 > TERMINAL_MONTHS
            tail = f" Months after M{TERMINAL_MONTHS - 1}: --wide, --json or --html." \
                if cut else ""
            sheets.append(Sheet("Signup cohorts: % active per month after signup", months,
                                rows, self._cohort_caption() + tail))
        return sheets

    def html(self, page: HtmlPage) -> None:
        """Sections for `--html`: the CRR trend, counts per period, the cohort heat map, tables."""
        page.heading(f"Customer retention per {self.kind.value}")
        if not self.periods:
            page.note(self._empty_note())
            return
        page.note(f"{_PERIOD_CAPTION} {self._scope()}.")
        for note in self.notes:
            page.note(f"Note: {note}.")
        page.chart(self._trend_chart(), f"CRR and churn per {self.kind.value}")
        page.chart(self._counts_chart(), f"Customers counted at each {self.kind.value}'s end")
        page.table([c.name for c in _PERIOD_COLUMNS], self._period_rows())
        if self.cohorts:
            page.heading("Signup cohorts")
            page.note(self._cohort_caption())
            page.chart(self._heatmap(), "Cohort retention heat map")
            columns, rows = self._cohort_rows()
            page.table(columns, rows)

    def _scope(self) -> str:
        which = ("every event type but the engine's" if self.activity is None
                 else ", ".join(self.activity))
        named = ", ".join(f"{kind}{did_you_mean(kind, self.known)}" for kind in self.absent)
        absent = f" (no events of type {named})" if self.absent else ""
        return f"Counted: an activity event in the {format_duration(self.window)} before; " \
            f"activity: {which}{absent}"

    def _empty_note(self) -> str:
        return (f"No activity events in range ({self._scope()}): no periods to report.")

    def _cohort_caption(self) -> str:
        tail = " The last month is partial (cut at the report's end)." \
            if self.cohort_last_partial else ""
        return ("Cohort = month of created_at; month k = % of the cohort with an activity event in "
                "the k-th month after it." + tail)

    def _period_rows(self) -> list[list[Any]]:
        return [[p.label + (" *" if p.partial else ""), p.start_customers, p.joined_customers,
                 p.returned_customers, p.kept_customers, p.end_customers, _pct(p.crr),
                 _pct(p.churn_rate)] for p in self.periods]

    def _cohort_rows(self, months: int | None = None, places: int = 1
                     ) -> tuple[list[str], list[list[Any]]]:
        width = max(len(c.active) for c in self.cohorts)
        width = width if months is None else min(width, months)
        names = ["cohort", "size", *(f"M{k}" for k in range(width))]
        rows = [[c.label, c.customers, *(_pct(v, places) for v in c.percent[:width]),
                 *([""] * (width - len(c.active)))] for c in self.cohorts]
        return names, rows

    def _trend_chart(self) -> Any:
        chart = figure(max(6.0, 0.35 * len(self.periods) + 2), 3.5)
        axes = chart.subplots()
        x = np.arange(len(self.periods))
        crr = np.array([np.nan if p.crr is None else p.crr for p in self.periods])
        churn = np.array([np.nan if p.churn_rate is None else p.churn_rate for p in self.periods])
        axes.plot(x, crr, marker="o", color="#4c72b0", label="CRR %")
        axes.plot(x, churn, marker="s", color="#c44e52", linewidth=1, label="churn %")
        partial = [i for i, p in enumerate(self.periods) if p.partial and p.crr is not None]
        if partial:
            axes.scatter(x[partial], crr[partial], s=90, facecolors="none", edgecolors="#333333",
                         label="partial period", zorder=3)
        axes.set_xticks(x, [p.label for p in self.periods])
        axes.set_ylim(0, 100)
        axes.set_ylabel("%")
        axes.tick_params(axis="x", labelrotation=60)
        axes.legend(loc="best", fontsize="small")
        axes.set_title(f"CRR and churn per {self.kind.value} (gaps: nobody counted at the start)")
        return chart

    def _counts_chart(self) -> Any:
        chart = figure(max(6.0, 0.35 * len(self.periods) + 2), 3.5)
        axes = chart.subplots()
        x = np.arange(len(self.periods))
        kept = np.array([p.kept_customers for p in self.periods])
        joined = np.array([p.joined_customers for p in self.periods])
        returned = np.array([p.returned_customers for p in self.periods])
        axes.bar(x, kept, color="#4c72b0", label="kept")
        axes.bar(x, joined, bottom=kept, color="#55a868", label="joined")
        axes.bar(x, returned, bottom=kept + joined, color="#dd8452", label="returned")
        axes.plot(x, [p.start_customers for p in self.periods], color="#333333", marker=".",
                  linewidth=1, label="S (at the start)")
        axes.set_xticks(x, [p.label for p in self.periods])
        axes.tick_params(axis="x", labelrotation=60)
        axes.set_ylabel("customers")
        axes.legend(loc="best", fontsize="small")
        axes.set_title("E = kept + joined + returned")
        return chart

    def _heatmap(self) -> Any:
        from matplotlib.patches import Rectangle  # only when a page is drawn

        width = max(len(c.active) for c in self.cohorts)
        matrix = np.full((len(self.cohorts), width), np.nan)
        for row, cohort in enumerate(self.cohorts):
            matrix[row, :len(cohort.active)] = [np.nan if v is None else v
                                                for v in cohort.percent]
        chart = figure(max(6.0, 0.45 * width + 2.5), max(3.0, 0.3 * len(self.cohorts) + 1.5))
        axes = chart.subplots()
        image = axes.imshow(matrix, cmap="Blues", vmin=0, vmax=100, aspect="auto")
        chart.colorbar(image, ax=axes, label="% of cohort active")
        axes.set_yticks(range(len(self.cohorts)),
                        [f"{c.label} ({c.customers:,})" for c in self.cohorts])
        axes.set_xticks(range(width), [str(k) for k in range(width)])
        axes.set_xlabel("months after the signup month")
        if matrix.size <= 600:  # numbers stay legible up to about 24 x 24
            for (row, col), value in np.ndenumerate(matrix):
                if not np.isnan(value):
                    axes.text(col, row, f"{value:.0f}", ha="center", va="center", fontsize=7,
                              color="white" if value > 60 else "#222222")
        title = "Signup cohorts: % active per month"
        if self.cohort_last_partial:  # the last calendar month: a diagonal of cells, hatched
            for row, cohort in enumerate(self.cohorts):
                axes.add_patch(Rectangle((len(cohort.active) - 1.5, row - 0.5), 1, 1, fill=False,
                                         hatch="///", edgecolor="#999999", linewidth=0))
            title += f" (hatched: the last month, cut at {self.cohort_end:%Y-%m-%d %H:%M})"
        axes.set_title(title)
        return chart


_PERIOD_COLUMNS = columns(["period", "S", "joined", "returned", "kept", "E", "CRR %",
                           "churn %"], wide=("churn %",))  # churn = 100 - CRR
_PERIOD_CAPTION = ("S, E: customers counted at the start, at the end; N = joined + returned; "
                   "kept = E - N; CRR = kept / S x 100. * partial: measured up to the cut.")
TERMINAL_MONTHS = 9  # cohort months in an 80-column terminal; --wide, --json, --html: all


# --- building ------------------------------------------------------------------------------------


def build(connection: sa.Connection, start: datetime | None = None, end: datetime | None = None,
          *, kind: PeriodKind = MONTH, window: timedelta = DEFAULT_WINDOW,
          activity: Sequence[str] | None = None, bits: int = BITS,
          now: datetime | None = None) -> RetentionReport:
    """The retention report for the periods of `kind` covering `[start, end)` (None: the data's).

    `activity` lists the event types that count (None: all but the engine's); `bits` is the word
    size of the slice masks (tests make it small to exercise many words); `now` is `--as-of`
    (None: the clock): nothing at or after it is seen.
    """
    if window <= timedelta(0):
        raise ValueError("the active window must be positive")
    if not 1 <= bits <= BITS:
        raise ValueError(f"bits must be 1 to {BITS}")
    chosen = None if activity is None else tuple(dict.fromkeys(activity))
    present = event_types(connection)
    types = sorted(set(present) - ENGINE_EVENT_TYPES) if chosen is None \
        else sorted(set(chosen) & set(present))
    now = report_now(now)
    first_activity = extreme(connection, types, latest=False, before=now)
    latest = extreme(connection, sorted((set(present) - ENGINE_EVENT_TYPES) | set(types)),
                     latest=True, before=now)
    absent = tuple(t for t in chosen or () if t not in present)
    report = RetentionReport(kind, window, chosen, start, end, now, latest, absent=absent,
                             known=tuple(sorted(present)))
    first = start if start is not None else first_activity
    stop = _stop(end, latest, now, kind)
    if first_activity is None or first is None or stop is None or first >= stop:
        return report
    cuts = cut_periods(first, stop, kind, clip_start=start is not None)
    grid = Grid.make(cuts, window, bits)
    scan = Scan(types=None if types == present else types,
                bounded=(extreme(connection, present, latest=True) or stop) >= stop)
    patterns = read_patterns(connection, scan, grid)
    counted = [PeriodCounts(cut.period, cut.start, cut.end, cut.partial, *numbers)
               for cut, numbers in zip(cuts, period_counts(grid, patterns), strict=True)]
    cohorts = [Cohort(*numbers) for numbers in cohort_counts(connection, grid, patterns)]
    return RetentionReport(kind, window, chosen, start, end, now, latest, counted, cohorts,
                           grid.boundaries[-1], grid.months_end_partial, absent, report.known)


def _stop(end: datetime | None, latest: datetime | None, now: datetime,
          kind: PeriodKind) -> datetime | None:
    """Where the last period is measured: `--to`, else the end of the period holding the
    latest event; never after now. (None: no event, nothing to measure.)"""
    if end is None:
        if latest is None:
            return None
        end = next_start(period_start(latest, kind), kind)
    return min(end, now)


# --- formatting ----------------------------------------------------------------------------------


def _pct(value: float | None, places: int = 2) -> str:
    return "-" if value is None else f"{value:.{places}f}"
