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

How it is computed, and why this way. The target is SQLite at 1M customers and 10M events in
under 30 s; bench/bench_reports.py timed each candidate on that database (docs/BENCHMARKS.md,
"Reports", has the table), each computing only S at the 26 monthly boundaries:

- a COUNT(DISTINCT customer_id) per boundary over its 90-day window: 177-194 s. Each event is
  read once per boundary its window covers (about 3 for months, 13 for weeks), deduplicated each
  time;
- "activity spells" (LAG over each customer's events; a spell is a run with gaps <= W; a
  customer counts at t iff a spell has first < t <= last + W): 42-45 s. SQLite's window functions
  cost over 1 us per row even when the index delivers the rows in order;
- the latest event per (customer, period), then coverage per boundary: its GROUP BY alone takes
  9-10 s, a sort of every event, before any counting.

What every count needs from a customer is only *which* time slices hold one of their activity
events, the slices cut at every instant that matters: each boundary b, each window start b - W,
each cohort month start (slice 0 is everything before the first cut). That set is a bitmask,
and OR-ing one-bit values is an aggregate that streams: `SUM(DISTINCT bit)` on SQLite (distinct
powers of two sum to their OR), `BIT_OR` on PostgreSQL, grouped by customer_id in the order of
the covering index ix_events_customer_type_time, so SQLite reads the index once and sorts
nothing. An event's bit comes from a balanced CASE tree over the cut points (log2 of their number
comparisons: a month number from the stored text is cheaper but cannot place the window starts,
SQLite's date functions per event cost 3x the tree), in words of BITS bits when there are more
slices (weekly periods over two years: 4 words). The database folds customers with the same
(mask, cohort) together, so Python receives distinct patterns, not customers (85,549 of them for
1M customers, monthly), and numpy counts over them: a pattern counts at b iff its mask meets the
slices of `[b - W, b)`, was active in a month iff it meets the month's slices, and its lowest
slice tells the period of the customer's first activity (joined or returned). Measured: 9-10 s
for the monthly report at 1M customers and 10M events (CPU, all of it), 18-20 s weekly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

from engine.clock import iso
from engine.format.durations import format_duration
from engine.reports.html import HtmlPage, figure
from engine.reports.periods import (
    Period,
    PeriodKind,
    next_start,
    period_start,
    periods,
    quiet_note,
    report_now,
)
from engine.reports.sheet import Column, Sheet, columns
from engine.store.facts import ENGINE_EVENT_TYPES, customers, events

DEFAULT_WINDOW = timedelta(days=90)
BITS = 62  # bits per word: distinct powers of two below 2**62 never overflow SQLite's SUM
PLACES = 4
TICK = timedelta(microseconds=1)  # the smallest step of a stored time
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
        absent = f" (no events of type {', '.join(self.absent)})" if self.absent else ""
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
    present = _event_types(connection)
    types = sorted(set(present) - ENGINE_EVENT_TYPES) if chosen is None \
        else sorted(set(chosen) & set(present))
    now = report_now(now)
    first_activity = _extreme(connection, types, latest=False, before=now)
    latest = _extreme(connection, sorted((set(present) - ENGINE_EVENT_TYPES) | set(types)),
                      latest=True, before=now)
    absent = tuple(t for t in chosen or () if t not in present)
    report = RetentionReport(kind, window, chosen, start, end, now, latest, absent=absent)
    first = start if start is not None else first_activity
    stop = _stop(end, latest, now, kind)
    if first_activity is None or first is None or stop is None or first >= stop:
        return report
    cuts = _cut(first, stop, kind, clip_start=start is not None)
    grid = _Grid.make(cuts, window, bits)
    scan = _Scan(types=None if types == present else types,
                 bounded=(_extreme(connection, present, latest=True) or stop) >= stop)
    patterns = _patterns(connection, scan, grid)
    return RetentionReport(kind, window, chosen, start, end, now, latest,
                           _period_counts(cuts, grid, patterns),
                           _cohorts(connection, grid, patterns), grid.boundaries[-1],
                           grid.months_end_partial, absent)


def _stop(end: datetime | None, latest: datetime | None, now: datetime,
          kind: PeriodKind) -> datetime | None:
    """Where the last period is measured: `--to`, else the end of the period holding the
    latest event; never after now. (None: no event, nothing to measure.)"""
    if end is None:
        if latest is None:
            return None
        end = next_start(period_start(latest, kind), kind)
    return min(end, now)


@dataclass(frozen=True)
class _Cut:
    """A calendar period and the instants where its S and E are counted."""

    period: Period
    start: datetime
    end: datetime
    partial: bool


def _cut(first: datetime, stop: datetime, kind: PeriodKind, clip_start: bool) -> list[_Cut]:
    """The calendar periods from the one containing `first` to the one containing `stop`'s last
    instant, each measured inside `[first, stop)` when `--from` was given, else from its start."""
    cuts = []
    for calendar in periods(first, stop - TICK, kind):
        begin = max(calendar.start, first) if clip_start else calendar.start
        finish = min(calendar.end, stop)
        cuts.append(_Cut(calendar, begin, finish,
                         begin != calendar.start or finish != calendar.end))
    return cuts


@dataclass(frozen=True)
class _Grid:
    """The time slices a customer's events are reduced to, and which slices make up what.

    The cut points are every boundary b_k, every window start b_k - W and every cohort month
    start. Slice 0 is everything before the first point, slice s >= 1 is
    `[points[s - 1], points[s])`; the last point is b_K and no event at or after it is read.
    A window `[b_k - W, b_k)`, a month and a period are each a run of whole slices.
    """

    points: list[datetime]
    boundaries: list[datetime]  # b_0 .. b_K: S of period k at b_k, E at b_k+1
    windows: list[int]  # bitmask of the slices in [b_k - W, b_k), per boundary
    months: list[datetime]  # the cohort months' starts
    month_masks: list[int]  # bitmask of each month's slices (the last one cut at b_K)
    months_end_partial: bool
    slice_period: np.ndarray  # the period index of each slice; -1 before b_0
    bits: int

    @classmethod
    def make(cls, cuts: list[_Cut], window: timedelta, bits: int) -> _Grid:
        """Slices for these periods and window; cohort months from the first boundary's month."""
        boundaries = [cuts[0].start, *(c.end for c in cuts)]
        end = boundaries[-1]
        months = [period_start(boundaries[0], MONTH)]
        while next_start(months[-1], MONTH) < end:
            months.append(next_start(months[-1], MONTH))
        points = sorted({*boundaries, *(b - window for b in boundaries), *months})
        index = {p: i + 1 for i, p in enumerate(points)}  # the slice that starts at p

        def mask(lo: datetime, hi: datetime) -> int:
            return (1 << index[hi]) - (1 << index[lo])

        owner = [-1] + [sum(1 for b in boundaries[1:] if b <= p) if p >= boundaries[0] else -1
                        for p in points]
        month_ends = [*months[1:], end]
        return cls(points, boundaries, [mask(b - window, b) for b in boundaries], months,
                   [mask(lo, hi) for lo, hi in zip(months, month_ends, strict=True)],
                   next_start(months[-1], MONTH) != end, np.array(owner[:-1], dtype=np.int64),
                   bits)

    @property
    def slices(self) -> int:
        """How many slices, so bits in all words (the one at b_K and after is never read)."""
        return len(self.points)

    @property
    def words(self) -> int:
        """How many words of `bits` bits hold the slice mask."""
        return -(-self.slices // self.bits)

    def split(self, mask: int) -> np.ndarray:
        """A slice mask as one int64 per word."""
        full = (1 << self.bits) - 1
        return np.array([(mask >> (self.bits * w)) & full for w in range(self.words)],
                        dtype=np.int64)

    def hits(self, words: np.ndarray, mask: int) -> np.ndarray:
        """Per pattern: do its slices meet `mask`? (Only the one or two words `mask` touches.)"""
        hit = np.zeros(len(words), dtype=bool)
        for w, part in enumerate(self.split(mask)):
            if part:
                hit |= (words[:, w] & part) != 0
        return hit

    def first_period(self, words: np.ndarray) -> np.ndarray:
        """Per pattern, the period of its lowest slice, so of the customer's first activity event
        ever (-1: before b_0). Every pattern has a slice: each event read sets one bit."""
        lowest = np.zeros(len(words), dtype=np.int64)
        for w in reversed(range(self.words)):  # the lowest nonzero word wins
            word = words[:, w]
            low = word & -word  # the lowest set bit alone
            found = np.rint(np.log2(np.where(low > 0, low, 1))).astype(np.int64)
            lowest = np.where(word != 0, self.bits * w + found, lowest)
        return self.slice_period[lowest]


@dataclass(frozen=True)
class _Scan:
    """Which events the per-customer pass reads, and which filters it can leave out."""

    types: list[str] | None  # None: every type present is activity, no type filter
    bounded: bool  # False: no event is at or after b_K, no time filter


@dataclass(frozen=True)
class _Patterns:
    """Distinct (slice words, cohort) with how many customers share them."""

    words: np.ndarray  # (patterns, words) int64
    cohort: np.ndarray  # cohort month index; -1: none (signed up outside the months)
    n: np.ndarray  # customers
    first: np.ndarray  # period of the first activity event ever; -1: before b_0


def _event_types(connection: sa.Connection) -> list[str]:
    """The distinct event types, sorted, by a loose index scan: one index probe per type."""
    e = events.c
    walk = sa.select(sa.func.min(e.type).label("type")).cte("walk", recursive=True)
    following = sa.select(sa.func.min(e.type)).where(e.type > walk.c.type).scalar_subquery()
    walk = walk.union_all(sa.select(following).where(walk.c.type.is_not(None)))
    return sorted(t for (t,) in connection.execute(sa.select(walk.c.type)) if t is not None)


def _extreme(connection: sa.Connection, types: list[str], latest: bool,
             before: datetime | None = None) -> datetime | None:
    """The earliest or latest event time over `types` (before `before`, if given): one index
    probe per type (MIN/MAX over a type list would scan every matching event)."""
    e = events.c
    function = sa.func.max if latest else sa.func.min
    bound = [] if before is None else [e.occurred_at < _at(before)]
    found = [connection.execute(sa.select(function(e.occurred_at))
                                .where(e.type == t, *bound)).scalar()
             for t in types]
    found = [f for f in found if f is not None]
    if not found:
        return None
    return max(found) if latest else min(found)


def _bisect(column: Any, starts: Callable[[int], datetime], lo: int, hi: int,
            leaf: Callable[[int], Any]) -> Any:
    """`leaf(s)` for the s in [lo, hi] with starts(s) <= column < starts(s + 1), the column known
    to lie in [starts(lo), starts(hi + 1)): a balanced CASE tree, log2(hi - lo + 1) comparisons."""
    if lo == hi:
        return leaf(lo)
    mid = (lo + hi + 1) // 2
    return sa.case((column < _at(starts(mid)), _bisect(column, starts, lo, mid - 1, leaf)),
                   else_=_bisect(column, starts, mid, hi, leaf))


def _at(moment: datetime) -> Any:
    return sa.literal(moment, events.c.occurred_at.type)


def _int(value: int) -> Any:
    """An integer inlined into the SQL: the same text in SELECT and GROUP BY (PostgreSQL would
    see two different bind parameters and refuse the grouping)."""
    return sa.literal_column(str(int(value)), sa.BigInteger)


def _word(grid: _Grid, w: int, dialect: str) -> Any:
    """The OR of the bits of word `w` over a customer's events (NULL: none in its slices)."""
    occurred = events.c.occurred_at
    lo = grid.bits * w
    hi = min(lo + grid.bits, grid.slices)  # slices lo .. hi - 1

    def starts(s: int) -> datetime:
        return grid.points[s - 1]

    value = _bisect(occurred, starts, lo, hi - 1, lambda s: _int(1 << (s - lo)))
    inside = []
    if lo > 0:
        inside.append(occurred >= _at(starts(lo)))
    if hi < grid.slices:  # the last word ends at b_K, where reading stops anyway
        inside.append(occurred < _at(starts(hi)))
    if inside:
        value = sa.case((sa.and_(*inside), value))
    if dialect == "postgresql":
        return sa.func.bit_or(sa.cast(value, sa.BigInteger))
    return sa.func.sum(sa.distinct(value))  # distinct powers of two: the sum is the OR


def _patterns(connection: sa.Connection, scan: _Scan, grid: _Grid) -> _Patterns:
    """One query: slice words per customer (streamed in customer order), folded into patterns."""
    e = events.c
    dialect = connection.dialect.name
    where = []
    if scan.types is not None:
        # On SQLite `type || ''` keeps the planner off ix_events_type_time: with it, SQLite reads
        # the events in type order and sorts them all for the GROUP BY (38 s instead of 7 at
        # 8.5M events); without, it streams ix_events_customer_type_time in customer order.
        kind = e.type.concat("") if dialect == "sqlite" else e.type
        where.append(kind.in_(scan.types))
    if scan.bounded:
        where.append(e.occurred_at < _at(grid.boundaries[-1]))
    per_customer = (
        sa.select(e.customer_id,
                  *(_word(grid, w, dialect).label(f"w{w}") for w in range(grid.words)))
        .where(*where)
        .group_by(e.customer_id)
        .subquery("per_customer"))
    created = customers.c.created_at
    cuts = [*grid.months, grid.boundaries[-1]]
    cohort = sa.case((created.is_(None) | (created < _at(cuts[0])) | (created >= _at(cuts[-1])),
                      _int(-1)),
                     else_=_bisect(created, cuts.__getitem__, 0, len(grid.months) - 1, _int))
    labelled = (sa.select(*(sa.func.coalesce(per_customer.c[f"w{w}"], 0).label(f"w{w}")
                            for w in range(grid.words)), cohort.label("cohort"))
                .select_from(per_customer.outerjoin(
                    customers, customers.c.customer_id == per_customer.c.customer_id))
                .subquery("labelled"))
    keys = [labelled.c[f"w{w}"] for w in range(grid.words)] + [labelled.c.cohort]
    rows = connection.execute(sa.select(*keys, sa.func.count()).group_by(*keys)).all()
    # Plain tuples: numpy probes a Row for array interfaces through slow key lookups.
    table = np.array([tuple(row) for row in rows], dtype=np.int64).reshape(-1, grid.words + 2)
    words = np.asfortranarray(table[:, :grid.words])  # hits() reads one word column at a time
    return _Patterns(words, table[:, grid.words], table[:, grid.words + 1],
                     grid.first_period(words))


def _period_counts(cuts: list[_Cut], grid: _Grid, patterns: _Patterns) -> list[PeriodCounts]:
    """S, E, kept and joined per period from the patterns: a few vector operations over the
    patterns per boundary, weighted by how many customers share each pattern."""
    n, first = patterns.n, patterns.first
    at, kept, joined = [], [], []
    before = None
    for k, mask in enumerate(grid.windows):
        now = grid.hits(patterns.words, mask)
        at.append(int(n @ now))
        if before is not None:
            kept.append(int(n @ (before & now)))
            # joined in period k - 1: first activity in it, counted at its end
            joined.append(int(n @ ((first == k - 1) & now)))
        before = now
    return [PeriodCounts(cut.period, cut.start, cut.end, cut.partial, at[k], at[k + 1], kept[k],
                         joined[k]) for k, cut in enumerate(cuts)]


def _cohorts(connection: sa.Connection, grid: _Grid, patterns: _Patterns) -> list[Cohort]:
    """Cohort sizes from customers (the inactive count too), active counts from the patterns."""
    created = customers.c.created_at
    cuts = [*grid.months, grid.boundaries[-1]]
    signed = (sa.select(_bisect(created, cuts.__getitem__, 0, len(grid.months) - 1, _int)
                        .label("cohort"))
              .where(created >= _at(cuts[0]), created < _at(cuts[-1]))
              .subquery("signed"))
    sizes = dict(connection.execute(
        sa.select(signed.c.cohort, sa.func.count()).group_by(signed.c.cohort)).all())
    months = len(grid.months)
    active = np.zeros((months, months), dtype=np.int64)  # [cohort, calendar month]
    member = patterns.cohort >= 0
    cohort, n, words = patterns.cohort[member], patterns.n[member], patterns.words[member]
    for m, mask in enumerate(grid.month_masks):
        hit = grid.hits(words, mask)
        active[:, m] = np.bincount(cohort[hit], weights=n[hit], minlength=months)[:months]
    return [Cohort(grid.months[c], int(sizes[c]), [int(v) for v in active[c, c:]])
            for c in range(months) if sizes.get(c)]


# --- formatting ----------------------------------------------------------------------------------


def _pct(value: float | None, places: int = 2) -> str:
    return "-" if value is None else f"{value:.{places}f}"
