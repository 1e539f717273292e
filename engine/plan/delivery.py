"""Caps and quiet hours: when a channel's action may go out, decided in the plan (DESIGN 3).

Pure (no database): engine/plan/reader.py reads what already fills each customer's caps from the
outbox (`Booking`s), the planner asks `DeliveryRules` for every action, so a dry-run shows the
deferred and capped actions a live run would commit, with their reasons.

- Channel: the connector kind (`email`, `webhook`, ...), the key of `[caps]` and `[quiet_hours]`.
- Quiet hours are wall-clock hours in the customer's zone (`customers.timezone`, else
  `[retain] timezone`, else UTC; an unknown zone name falls back to the default and says so).
  An action due inside the window is deferred to the window's end, the next allowed minute,
  DST-correct (zoneinfo; an end that does not exist on a spring-forward day is the transition).
- Caps are rolling: `2/7d` means no span of 7 days `[s, s + 7d)` holds more than 2 actions of
  the channel for the customer, across all playbooks. An action at `t` fits when every span
  that holds `t` has room, so both earlier bookings (sent) and later ones (due later: deferred,
  retrying, planned for tomorrow) are judged: a booking due later counts when it lies less
  than one window after `t`, an earlier one when it lies less than one window before. Judging
  only the past would let a run fill the days before an already-planned send.
- Order: quiet hours first, then the cap at the deferred time: a deferred action is sent at
  that time, so that is where it takes a slot (judging at the original time could let two
  actions meet in one window after deferral).
- Arbitration: playbooks are planned in priority order (make_plan sorts by -priority, id); the
  `CapLedger` holds what this run already gave each customer, so a lower-priority playbook's
  action that does not fit is `capped` and its reason names the playbooks that filled the
  window. Capped, dead, suppressed and skipped actions never take a slot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.clock import iso

if TYPE_CHECKING:
    from engine.config import Cap, QuietHours, Settings

DEFAULT_ZONE = "UTC"


@dataclass(frozen=True)
class Booking:
    """One action that takes a cap slot: sent or on its way (outbox), or planned in this run."""

    at: datetime  # when it is (was) sent: sent_at, else the time it is due
    playbook_id: str
    key: str  # its idempotency key: an outbox row and the same planned action count once
    rank: int | None = None  # the playbook's place in this run's order; None: from the outbox


@dataclass(frozen=True)
class Decision:
    """What the rules make of one action: its time, and why it moved or may not go."""

    at: datetime
    reason: str | None = None  # set when deferred (quiet hours) or capped


class CapLedger:
    """What this run has planned for each (channel, customer), in the order it was planned.

    Holds only customers that got an action of a capped channel. A playbook planned anew (a
    second pass over its enrollments) first forgets its own and every later playbook's
    bookings, so a pass sees exactly the higher-priority playbooks' plan, however often run.
    """

    def __init__(self) -> None:
        self._booked: dict[tuple[str, str], dict[str, Booking]] = {}

    def booked(self, channel: str, customer_id: str) -> list[Booking]:
        """This run's bookings of a channel for a customer."""
        return list(self._booked.get((channel, customer_id), {}).values())

    def book(self, channel: str, customer_id: str, booking: Booking) -> None:
        """Record a planned action as taking a slot (once per key)."""
        self._booked.setdefault((channel, customer_id), {})[booking.key] = booking

    def forget_from(self, rank: int) -> None:
        """Drop the bookings of the playbook at `rank` and of those planned after it."""
        for slot in self._booked.values():
            for key in [k for k, b in slot.items() if b.rank is not None and b.rank >= rank]:
                del slot[key]


@dataclass
class DeliveryRules:
    """`[caps]`, `[quiet_hours]` and the default zone, applied to one action at a time."""

    caps: Mapping[str, Cap] = field(default_factory=dict)
    quiet_hours: Mapping[str, QuietHours] = field(default_factory=dict)
    timezone: str = DEFAULT_ZONE
    priorities: Mapping[str, int] = field(default_factory=dict)  # of this run's playbooks
    _zones: dict[str | None, tuple[ZoneInfo, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False)  # zone name -> found

    @classmethod
    def from_settings(cls, settings: Settings | None,
                      priorities: Mapping[str, int] | None = None) -> DeliveryRules:
        """The rules of `settings` (None: no caps, no quiet hours, UTC)."""
        if settings is None:
            return cls(priorities=dict(priorities or {}))
        return cls(dict(settings.caps), dict(settings.quiet_hours),
                   settings.timezone or DEFAULT_ZONE, dict(priorities or {}))

    @property
    def capped_channels(self) -> frozenset[str]:
        """The channels with a cap (only their outbox rows are read)."""
        return frozenset(self.caps)

    @property
    def longest_window(self) -> timedelta:
        """How far back an outbox row may still count against some cap."""
        return max((cap.window for cap in self.caps.values()), default=timedelta(0))

    def zone(self, name: str | None) -> tuple[ZoneInfo, str]:
        """The customer's zone and how to name it; an unknown name falls back to the default."""
        if name not in self._zones:
            found = _zone(name) if name else None
            if found is not None:
                self._zones[name] = (found, str(name))
            else:
                default = _zone(self.timezone) or ZoneInfo(DEFAULT_ZONE)
                label = str(default.key) if not name else \
                    f"{default.key}; customer zone {name!r} unknown"
                self._zones[name] = (default, label)
        return self._zones[name]

    def defer(self, channel: str, at: datetime, zone_name: str | None) -> Decision | None:
        """Where quiet hours move an action due `at`; None when the channel has none or `at`
        is outside them."""
        quiet = self.quiet_hours.get(channel)
        if quiet is None:
            return None
        zone, label = self.zone(zone_name)
        until = quiet_until(at, quiet, zone)
        if until is None:
            return None
        return Decision(until, f"quiet hours {quiet} ({label}): deferred to {iso(until)}")

    def cap(self, channel: str, at: datetime, key: str,
            taken: Iterable[Booking]) -> str | None:
        """Why an action at `at` does not fit the channel's cap, or None (it fits)."""
        cap = self.caps.get(channel)
        if cap is None:
            return None
        unique = {b.key: b for b in taken if b.key != key}
        full = cap_conflict(cap, at, unique.values())
        if full is None:
            return None
        return f"cap {channel} {cap_text(cap)} reached: sent or planned by {self._names(full)}"

    def _names(self, full: list[Booking]) -> str:
        """The playbooks that filled the window: this run's by priority, then the others."""
        known = self.priorities
        pids = sorted(dict.fromkeys(b.playbook_id for b in full),  # in time order
                      key=lambda pid: (pid not in known, -known.get(pid, 0)))
        named = [f"{pid} (priority {known[pid]})" if pid in known else pid for pid in pids]
        return named[0] if len(named) == 1 else ", ".join(named[:-1]) + f" and {named[-1]}"


def cap_text(cap: Cap) -> str:
    """`2/7d` as a person writes it in `[caps]` (days stay days: never `2/1w`)."""
    seconds = int(cap.window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{cap.count}/{seconds // size}{unit}"
    return f"{cap.count}/{seconds}s"


def _zone(name: object) -> ZoneInfo | None:
    """The zone of that name, or None for anything else: unknown (`Mars/Olympus`), not a key
    (`../x`), a folder of zones (`Europe`), a name too long for a file, not text at all."""
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def quiet_until(at: datetime, quiet: QuietHours, zone: ZoneInfo) -> datetime | None:
    """The end of the quiet window `at` falls in (aware UTC), or None when `at` is outside it.

    Judged on the customer's wall clock: `start <= local < end`, or across midnight `local >=
    start or local < end` (the end is then tomorrow's when `local >= start`).
    """
    local = at.astimezone(zone)
    wall = local.replace(tzinfo=None).time()
    if quiet.start < quiet.end:
        inside, day = quiet.start <= wall < quiet.end, local.date()
    else:
        inside = wall >= quiet.start or wall < quiet.end
        day = local.date() + timedelta(days=1) if wall >= quiet.start else local.date()
    if not inside:
        return None
    return first_instant(datetime.combine(day, quiet.end), zone, after=at)


def first_instant(wall: datetime, zone: ZoneInfo, *, after: datetime) -> datetime:
    """The first instant after `after` at which the clock in `zone` shows `wall` (naive) or later.

    A repeated wall time (autumn) is its first showing after `after`; a wall time that does not
    exist (spring forward) is the transition itself, found by bisection between its two readings.
    """
    readings = sorted({wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)})
    real = [r for r in readings if _wall(r, zone) == wall and r > after]
    if real:
        return real[0]
    low, high = max(readings[0], after), readings[-1]
    if _wall(high, zone) < wall:  # cannot happen for a window's end; never defer backwards
        return max(high, after)
    while high - low > timedelta(seconds=1):  # wall(low) < wall <= wall(high)
        middle = low + timedelta(seconds=(high - low).total_seconds() // 2)
        low, high = (low, middle) if _wall(middle, zone) >= wall else (middle, high)
    return high


def _wall(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None)


def cap_conflict(cap: Cap, at: datetime, taken: Iterable[Booking]) -> list[Booking] | None:
    """The bookings of a span `[s, s + window)` holding `at` that is already full, or None.

    Only spans starting at `at` or at a booking before it need trying: a booking `b` lies in the
    span for starts in `(b - window, b]`, so the most crowded start is some `b` or `at` itself.
    """
    near = sorted((b for b in taken if at - cap.window < b.at < at + cap.window),
                  key=lambda b: (b.at, b.key))
    for start in [b.at for b in near if b.at <= at] + [at]:
        inside = [b for b in near if start <= b.at < start + cap.window]
        if len(inside) >= cap.count:
            return inside
    return None
