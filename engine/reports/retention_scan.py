"""How `retain report retention` counts: time slices per customer as bitmasks, in one SQL pass.

engine/reports/retention.py holds the definitions and the result; this module only turns
periods, a window and the events into S, E, kept, joined and cohort activity.

Why this way. The target is SQLite at 1M customers and 10M events in
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

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

from engine.reports.periods import Period, PeriodKind, next_start, period_start, periods
from engine.store.facts import customers, events

BITS = 62  # bits per word: distinct powers of two below 2**62 never overflow SQLite's SUM
TICK = timedelta(microseconds=1)  # the smallest step of a stored time
MONTH = PeriodKind.MONTH


@dataclass(frozen=True)
class Cut:
    """A calendar period and the instants where its S and E are counted."""

    period: Period
    start: datetime
    end: datetime
    partial: bool


def cut_periods(first: datetime, stop: datetime, kind: PeriodKind, clip_start: bool) -> list[Cut]:
    """The calendar periods from the one containing `first` to the one containing `stop`'s last
    instant, each measured inside `[first, stop)` when `--from` was given, else from its start."""
    cuts = []
    for calendar in periods(first, stop - TICK, kind):
        begin = max(calendar.start, first) if clip_start else calendar.start
        finish = min(calendar.end, stop)
        cuts.append(Cut(calendar, begin, finish,
                         begin != calendar.start or finish != calendar.end))
    return cuts


@dataclass(frozen=True)
class Grid:
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
    def make(cls, cuts: list[Cut], window: timedelta, bits: int) -> Grid:
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
class Scan:
    """Which events the per-customer pass reads, and which filters it can leave out."""

    types: list[str] | None  # None: every type present is activity, no type filter
    bounded: bool  # False: no event is at or after b_K, no time filter


@dataclass(frozen=True)
class Patterns:
    """Distinct (slice words, cohort) with how many customers share them."""

    words: np.ndarray  # (patterns, words) int64
    cohort: np.ndarray  # cohort month index; -1: none (signed up outside the months)
    n: np.ndarray  # customers
    first: np.ndarray  # period of the first activity event ever; -1: before b_0


def event_types(connection: sa.Connection) -> list[str]:
    """The distinct event types, sorted, by a loose index scan: one index probe per type."""
    e = events.c
    walk = sa.select(sa.func.min(e.type).label("type")).cte("walk", recursive=True)
    following = sa.select(sa.func.min(e.type)).where(e.type > walk.c.type).scalar_subquery()
    walk = walk.union_all(sa.select(following).where(walk.c.type.is_not(None)))
    return sorted(t for (t,) in connection.execute(sa.select(walk.c.type)) if t is not None)


def extreme(connection: sa.Connection, types: list[str], latest: bool,
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


def _word(grid: Grid, w: int, dialect: str) -> Any:
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


def read_patterns(connection: sa.Connection, scan: Scan, grid: Grid) -> Patterns:
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
    return Patterns(words, table[:, grid.words], table[:, grid.words + 1],
                     grid.first_period(words))


def period_counts(grid: Grid, patterns: Patterns) -> list[tuple[int, int, int, int]]:
    """(S, E, kept, joined) per period from the patterns: a few vector operations over the
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
    return [(at[k], at[k + 1], kept[k], joined[k]) for k in range(len(kept))]


def cohort_counts(connection: sa.Connection, grid: Grid, patterns: Patterns
                  ) -> list[tuple[datetime, int, list[int]]]:
    """(month, size, active per month after it) per cohort: sizes from customers (the inactive
    count too), active counts from the patterns."""
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
    return [(grid.months[c], int(sizes[c]), [int(v) for v in active[c, c:]])
            for c in range(months) if sizes.get(c)]
