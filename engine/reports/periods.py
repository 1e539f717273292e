"""Calendar periods `[start, end)` in UTC for the reports, and the report date options."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum


class PeriodKind(StrEnum):
    """How a report cuts time."""

    WEEK = "week"  # ISO weeks, Monday to Monday
    MONTH = "month"
    QUARTER = "quarter"


@dataclass(frozen=True)
class Period:
    """One calendar period `[start, end)`; `partial` when the data end before `end`."""

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
            data_end: datetime | None = None) -> list[Period]:
    """The periods from the one containing `first` to the one containing `last`; a period whose
    end is after `data_end` (the moment just after the latest data) is marked partial."""
    result = []
    start = period_start(first, kind)
    while start <= last:
        end = next_start(start, kind)
        result.append(Period(start, end, data_end is not None and end > data_end))
        start = end
    return result
