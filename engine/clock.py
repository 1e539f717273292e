"""The one notion of "now": the real clock, or the `--as-of` instant a run pretends is now."""

from __future__ import annotations

from datetime import UTC, date, datetime


def utcnow() -> datetime:
    """The current instant, aware, in UTC."""
    return datetime.now(UTC)


def parse_as_of(text: str) -> datetime:
    """An ISO 8601 instant or date, as aware UTC; naive means UTC, a date means its midnight UTC.

    `2011-12-10` is the start of that day: events on the 10th are not yet seen.
    """
    value = text.strip()
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date or time, like 2011-12-10 or "
                         "2011-12-10T09:00:00Z") from None
    if len(value) == 10:
        moment = datetime.combine(date.fromisoformat(value), datetime.min.time())
    return aware_utc(moment)


def aware_utc(moment: datetime) -> datetime:
    """The one reading of a datetime as an instant: naive means UTC (DESIGN 5), aware is converted."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso(moment: datetime) -> str:
    """An instant as the occurrence keys and JSON output spell it: `2011-12-10T09:00:00Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
