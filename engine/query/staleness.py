"""A warning when `--as-of` lies far past the latest synced event.

Every time-based condition measures from as-of, so evaluating a data set that ended in 1998 "as of
now" makes everyone look lapsed for decades: a plan that looks plausible and is meaningless. The
usual cause is a forgotten `--as-of`; the warning names the instant that was probably meant (the
day after the latest event). Pure: the caller has read the latest event (evaluate.Moment has it).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from engine.errors import Issue, Location
from engine.query.evaluate import Moment

STALE_AFTER = timedelta(days=90)
"""A gap between the latest event and as-of longer than this is worth a warning."""


def stale_as_of_warning(as_of: datetime, latest_event: datetime | None) -> str | None:
    """The warning text, or None when as-of is within STALE_AFTER of the latest event."""
    if latest_event is None or as_of - latest_event <= STALE_AFTER:
        return None
    day = latest_event.date()
    gap = (as_of - latest_event).days
    return (f"latest event {day.isoformat()}: did you mean --as-of "
            f"{(day + timedelta(days=1)).isoformat()}? (as-of {as_of.date().isoformat()} is "
            f"{gap:,} days later, so every customer looks inactive)")


def stale_as_of_issues(as_of: datetime, moment: Moment) -> list[Issue]:
    """The warning as an Issue (path `--as-of`), listed with the other warnings of a command."""
    text = stale_as_of_warning(as_of, moment.latest_event)
    return [Issue(Location(), "--as-of", text)] if text else []
