"""`retain report nps`: Net Promoter Score from `feedback` events, overall and per period.

Definitions (docs/REPORTS.md, "NPS", says the same):

- A **response** is a `feedback` event in the window `[start, end)` whose typed `score` column is
  set and within 0-10. Feedback without a score, or with one outside 0-10, is ignored (it is
  free-text feedback or another scale, not an NPS answer).
- **Every response counts**, the standard survey convention: a customer who answers twice in a
  period counts twice. Deduplicating per customer would hide a changed opinion inside a period and
  make a period's NPS depend on which answers happen to fall in it.
- **promoters**: score >= 9 (9-10); **passives**: 7 <= score < 9 (7-8); **detractors**: score < 7
  (0-6). A fractional score falls by these thresholds (6.5 is a detractor).
- **NPS** = % promoters - % detractors = 100 x (promoters - detractors) / responses, from -100 to
  100; none (JSON null) when there is no response.
- **Trend**: calendar periods (engine/reports/periods.py: ISO weeks, months, quarters, UTC) from the
  one containing `--from` (default: the first response) to the one containing the window's last
  instant (default: the last response). Periods without responses are listed with NPS null. A
  period is `partial` when the window or now cut it: it starts before `--from`, or it ends after
  `--to` or after now (the clock, or `--as-of`; nothing at or after it is seen). A period that
  has ended is complete however long ago the latest event is (DESIGN 1); when that is more than
  a week before a period's end the report says so (`notes`).

Counts come from SQL aggregates: the period of each response is a CASE over the few period
boundaries, grouped in the database; Python only divides the counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.clock import iso
from engine.reports.html import HtmlPage, figure
from engine.reports.periods import Period, PeriodKind, periods, quiet_note, report_now
from engine.reports.sheet import Sheet, columns
from engine.store.facts import FEEDBACK, events

PROMOTER_MIN = 9
PASSIVE_MIN = 7
PLACES = 4
TICK = timedelta(microseconds=1)  # the smallest step of a stored time


@dataclass(frozen=True)
class Counts:
    """Responses and their three groups, for the whole window or one period."""

    responses: int = 0
    promoters: int = 0
    passives: int = 0
    detractors: int = 0

    @property
    def nps(self) -> float | None:
        """% promoters - % detractors; None without responses."""
        if not self.responses:
            return None
        return round(100.0 * (self.promoters - self.detractors) / self.responses, PLACES)

    def as_dict(self) -> dict[str, Any]:
        """The counts and NPS under the JSON keys."""
        return {"responses": self.responses, "promoters": self.promoters,
                "passives": self.passives, "detractors": self.detractors, "nps": self.nps}


@dataclass(frozen=True)
class NpsReport:
    """The NPS over the window and per calendar period."""

    start: datetime | None
    end: datetime | None
    kind: PeriodKind
    total: Counts
    periods: list[tuple[Period, Counts]]
    now: datetime
    latest: datetime | None  # the latest event of any type before now

    @property
    def notes(self) -> list[str]:
        """Said when a period ends more than a week after the latest event."""
        note = quiet_note(self.latest, [(f"{p.label} ends", min(p.end, self.now))
                                        for p, _c in self.periods],
                          "feedback after it is not in the data")
        return [] if note is None else [note]

    def to_json(self) -> dict[str, Any]:
        """The `--json` document."""
        total = self.total.as_dict()
        return {
            "nps": total.pop("nps"), **total,
            "from": None if self.start is None else iso(self.start),
            "to": None if self.end is None else iso(self.end),
            "as_of": iso(self.now),
            "latest_event": None if self.latest is None else iso(self.latest),
            "notes": self.notes,
            "period": self.kind.value,
            "periods": [{"start": iso(p.start), "end": iso(p.end), **c.as_dict(),
                         "partial": p.partial} for p, c in self.periods],
        }

    def sheets(self) -> list[Sheet]:
        """The overall NPS with its groups, then the trend; without responses, a clear note."""
        overall = Sheet(self._title(), columns(["metric", "value"]), self._total_rows(),
                        self._caption())
        if not self.total.responses:
            return [overall]
        return [overall, Sheet(f"NPS per {self.kind.value}", columns(_PERIOD_COLUMNS),
                               self._period_rows(), "* partial period", self.notes)]

    def html(self, page: HtmlPage) -> None:
        """Sections for `--html`: the groups as bars, the trend as a line, and the tables."""
        page.heading(self._title())
        page.table(["metric", "value"], self._total_rows())
        page.note(self._caption() + " Feedback without a score or outside 0-10 is ignored.")
        if not self.total.responses:
            return
        page.chart(self._groups_chart(), "Promoters, passives and detractors")
        page.heading(f"NPS per {self.kind.value}")
        page.chart(self._trend_chart(), f"NPS per {self.kind.value}")
        page.table(_PERIOD_COLUMNS, self._period_rows())
        page.note("* partial period: cut by --from/--to or by now (--as-of).")
        for note in self.notes:
            page.note(f"Note: {note}.")

    def _caption(self) -> str:
        if not self.total.responses:
            return "No feedback with a 0-10 score in this window: no NPS to show."
        return "NPS = % promoters (9-10) - % detractors (0-6), over every response."

    def _title(self) -> str:
        if self.start is None and self.end is None:
            return "NPS: all data"
        parts = ([] if self.start is None else [f"from {iso(self.start)}"]) + (
            [] if self.end is None else [f"to {iso(self.end)} (exclusive)"])
        return f"NPS: {' '.join(parts)}"

    def _total_rows(self) -> list[list[Any]]:
        t = self.total
        return [["NPS", _score(t.nps)], ["responses", t.responses],
                ["promoters (9-10)", _share(t.promoters, t.responses)],
                ["passives (7-8)", _share(t.passives, t.responses)],
                ["detractors (0-6)", _share(t.detractors, t.responses)]]

    def _period_rows(self) -> list[list[Any]]:
        return [[p.label + (" *" if p.partial else ""), c.responses, c.promoters, c.passives,
                 c.detractors, _score(c.nps)] for p, c in self.periods]

    def _groups_chart(self) -> Any:
        chart = figure(6, 3)
        axes = chart.subplots()
        t = self.total
        axes.bar(["promoters", "passives", "detractors"], [t.promoters, t.passives, t.detractors],
                 color=["#55a868", "#bbbbbb", "#c44e52"])
        axes.set_ylabel("responses")
        axes.set_title(f"NPS {_score(t.nps)} over {t.responses:,} responses")
        return chart

    def _trend_chart(self) -> Any:
        chart = figure(max(6.0, 0.35 * len(self.periods) + 2), 3.5)
        axes = chart.subplots()
        labels = [p.label for p, _c in self.periods]
        values = [float("nan") if c.nps is None else c.nps for _p, c in self.periods]
        axes.plot(labels, values, marker="o", color="#4c72b0")
        axes.axhline(0, color="#999999", linewidth=0.8)
        axes.set_ylim(-100, 100)
        axes.set_ylabel("NPS")
        axes.tick_params(axis="x", labelrotation=60)
        axes.set_title("NPS per period (gaps: no responses)")
        return chart


_PERIOD_COLUMNS = ["period", "responses", "promoters", "passives", "detractors", "NPS"]


def build(connection: sa.Connection, start: datetime | None = None, end: datetime | None = None,
          kind: PeriodKind = PeriodKind.MONTH, now: datetime | None = None) -> NpsReport:
    """The NPS over responses in `[start, end)` (None: unbounded), with a trend per `kind`;
    `now` is `--as-of` (None: the clock): nothing at or after it is seen."""
    e = events.c
    now = report_now(now)
    upto = now if end is None else min(end, now)
    response = (e.type == FEEDBACK) & e.score.is_not(None) & (e.score >= 0) & (e.score <= 10)
    response &= e.occurred_at < upto
    if start is not None:
        response &= e.occurred_at >= start
    first, last, total = _totals(connection, response)
    cut = _periods(start, end, upto, first, last, kind)
    latest = connection.execute(sa.select(sa.func.max(e.occurred_at))
                                .where(e.occurred_at < now)).scalar()
    return NpsReport(start, end, kind, total, _per_period(connection, response, cut), now, latest)


def _counts(score: sa.ColumnElement[Any]) -> list[sa.ColumnElement[Any]]:
    """count(*), promoters, passives, detractors over rows whose score is already 0-10."""
    return [sa.func.count(),
            sa.func.count(sa.case((score >= PROMOTER_MIN, 1))),
            sa.func.count(sa.case(((score >= PASSIVE_MIN) & (score < PROMOTER_MIN), 1))),
            sa.func.count(sa.case((score < PASSIVE_MIN, 1)))]


def _totals(connection: sa.Connection, response: sa.ColumnElement[bool]
            ) -> tuple[datetime | None, datetime | None, Counts]:
    e = events.c
    row = connection.execute(
        sa.select(sa.func.min(e.occurred_at), sa.func.max(e.occurred_at), *_counts(e.score))
        .where(response)).one()
    first, last, *counts = row
    return first, last, Counts(*counts)


def _periods(start: datetime | None, end: datetime | None, upto: datetime,
             first: datetime | None, last: datetime | None, kind: PeriodKind) -> list[Period]:
    """The trend's periods, `partial` when `--from` or `upto` (`--to` or now) cuts them."""
    first = start if start is not None else first
    last = upto - TICK if end is not None else last
    if first is None or last is None or last < first:
        return []
    cut = periods(first, last, kind, upto)
    return [Period(p.start, p.end, p.partial or (start is not None and p.start < start))
            for p in cut]


def _per_period(connection: sa.Connection, response: sa.ColumnElement[bool],
                cut: list[Period]) -> list[tuple[Period, Counts]]:
    if not cut:
        return []
    e = events.c
    # Periods are contiguous, so "before the end of period i" in order picks the period; responses
    # before the first period's start cannot be (the first period contains the window's start).
    index = sa.case(*((e.occurred_at < p.end, i) for i, p in enumerate(cut)), else_=None)
    bucketed = sa.select(index.label("period"), e.score).where(response).subquery("bucketed")
    found = {row[0]: Counts(*row[1:]) for row in connection.execute(
        sa.select(bucketed.c.period, *_counts(bucketed.c.score))
        .where(bucketed.c.period.is_not(None))
        .group_by(bucketed.c.period))}
    return [(p, found.get(i, Counts())) for i, p in enumerate(cut)]


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def _share(part: int, whole: int) -> str:
    return f"{part:,}" if not whole else f"{part:,} ({100.0 * part / whole:.1f}%)"

