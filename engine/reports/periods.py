"""Calendar periods `[start, end)` in UTC for the reports, and where the reports' time stops.

DESIGN section 1: a period that has ended (before now, or before `--as-of`) is complete even if
no event was synced after some earlier day; only a period that runs past now is partial, cut at
now. So every report cuts at `now` (the real clock, or `--as-of`), never at the data's latest
event, and says so when that latest event is far older than where a period ends (`quiet_note`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

from engine.clock import aware_utc, utcnow


class PeriodKind(StrEnum):
    """How a report cuts time."""

    WEEK = "week"  # ISO weeks, Monday to Monday
    MONTH = "month"
    QUARTER = "quarter"


@dataclass(frozen=True)
class Period:
    """One calendar period `[start, end)`; `partial` when now (or the window) cuts it."""

    start: datetime
    end: datetime
    partial: bool = False

    @property
    def label(self) -> str:
        """`2011-03`, `2011-Q1` or `2011-W09`, as tables and charts show it."""
        if self.end - self.start <= timedelta(days=7):
            year, week, _ = self.start.date().isocalendar()
            return f"{year}-W{week:02d}"
        if (self.end.month - self.start.month) % 12 == 3:
            return f"{self.start.year}-Q{(self.start.month - 1) // 3 + 1}"
        return f"{self.start:%Y-%m}"


def period_start(moment: datetime, kind: PeriodKind) -> datetime:
    """The start of the calendar period containing `moment` (UTC)."""
    day = moment.astimezone(UTC).date()
    if kind == PeriodKind.WEEK:
        day = day - timedelta(days=day.weekday())
    elif kind == PeriodKind.MONTH:
        day = day.replace(day=1)
    else:
        day = date(day.year, (day.month - 1) // 3 * 3 + 1, 1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def next_start(start: datetime, kind: PeriodKind) -> datetime:
    """The start of the period after the one starting at `start`."""
    if kind == PeriodKind.WEEK:
        return start + timedelta(days=7)
    months = 1 if kind == PeriodKind.MONTH else 3
    month = start.month - 1 + months
    return start.replace(year=start.year + month // 12, month=month % 12 + 1)


def periods(first: datetime, last: datetime, kind: PeriodKind,
            cut: datetime | None = None) -> list[Period]:
    """The periods from the one containing `first` to the one containing `last`; a period whose
    end is after `cut` (now, or the report's `--to`) is marked partial."""
    result = []
    start = period_start(first, kind)
    while start <= last:
        end = next_start(start, kind)
        result.append(Period(start, end, cut is not None and end > cut))
        start = end
    return result


QUIET_AFTER = timedelta(days=7)
"""A period ending more than this after the latest synced event gets a note: a sync may lag a
few days, a gap longer than a week is worth saying out loud."""


def report_now(now: datetime | None) -> datetime:
    """Where a report's time stops: `--as-of`, or the real clock to the second (JSON times have
    no microseconds)."""
    return utcnow().replace(microsecond=0) if now is None else aware_utc(now)


def quiet_note(latest: datetime | None, ends: Sequence[tuple[str, datetime]],
               consequence: str) -> str | None:
    """The note for the ends `(what, instant)` (`("2026-02 ends", ...)`) more than QUIET_AFTER
    after the latest event: `latest event 2026-02-10, 19 days before 2026-02 ends:
    <consequence>`. None when there is none (or no event at all: the report says that)."""
    if latest is None:
        return None
    quiet = [(what, end) for what, end in ends if end - latest > QUIET_AFTER]
    if not quiet:
        return None
    what, end = quiet[0]
    days = (end.astimezone(UTC).date() - latest.astimezone(UTC).date()).days
    more = f" (and {len(quiet) - 1} later)" if len(quiet) > 1 else ""
    return (f"latest event {latest.astimezone(UTC):%Y-%m-%d}, {days} days before {what}{more}: "
            f"{consequence}")
