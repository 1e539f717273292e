"""`retain report playbooks`: per playbook, who entered, what was done, and whether it worked.

Definitions (docs/REPORTS.md, "Playbooks", says the same):

- **entered**: enrollments with `entered_at` in `[start, end)` (None: unbounded), whatever their
  status; **holdout**: those of them in the control group (`holdout` flag), **treatment** the rest.
  `--from` / `--to` choose enrollments by entry time only: a goal event after `--to` still counts
  for an enrollment that entered before it, because the goal window belongs to the enrollment.
- **actions**: outbox rows of those enrollments, counted by connector and status.
- **goal**: each enrollment is judged by the `goal: {event: T, within: D}` of the version it
  entered with, read from that version's recorded source (engine/query/versions.py, parsed once
  per version): what the playbook promised when the customer entered is what it is measured
  against, and a goal edited later does not rewrite past results. An enrollment whose version
  was never recorded (enrollments written before versions were) is judged by the loaded file's
  goal. Enrollments of a version without a goal are not measured (the statement counts them).
  The goal shown is the loaded file's when some enrollment is judged by it (or there are
  none), else the latest recorded one used; when versions in the window have different goals the
  statement says so. A playbook none of whose enrollments has a goal, and whose file is gone or
  has no goal, shows entered and actions with "no goal defined".
- An enrollment **converts** when its customer has an event of type T with
  `entered_at < occurred_at <= entered_at + D`; events outside that window do not count. This
  is computed from the events, not from `enrollments.converted_at` (which a live run sets when
  it sees the goal event): the events are the facts, and a report as of any moment reads them
  the same way whether or not a run has looked since (holdout enrollments, which complete at
  once, or a window that ended after the last run).
- Only enrollments whose goal window has **ended** are measured: `entered_at + D <= cutoff`. The
  cutoff is now (the clock, or `--as-of`), as for every report (DESIGN 1: a period that has
  ended is complete; no goal event in the window means not converted). Enrollments entered at
  or after now are not seen. The others are **open** and shown as a count, never as
  non-conversions. A sync that lags would understate conversion, so when the latest synced event
  is more than a week before the cutoff the report says so (`notes`); for a historical data set
  pass `--as-of` just after its latest event.
- **conversion rate** of a group = converted / measured (in %); **uplift** = treatment rate -
  holdout rate, in percentage points (pp).
- **95% confidence interval** of the uplift: Newcombe's hybrid score interval (Newcombe 1998,
  method 10), built from the two groups' Wilson score intervals (l1, u1), (l2, u2):
  `d - sqrt((p1 - l1)^2 + (u2 - p2)^2)` to `d + sqrt((u1 - p1)^2 + (p2 - l2)^2)`. Chosen over
  the textbook Wald interval because it stays inside [-100, 100] pp and keeps close to 95%
  coverage for rates near 0 or 100% and for unequal group sizes, which holdouts of 5-10% make the
  rule. Each group's own Wilson interval is the error bar of the HTML chart.
- **too small**: with fewer than 30 measured enrollments in either group, or fewer than 5
  conversions or 5 non-conversions in either, no uplift or interval is given, only the statement
  "too few enrollments to say anything ..." ("too few conversions ..." for the second rule). The
  interval's coverage is only trustworthy above these counts (the usual n*p >= 5 and
  n*(1-p) >= 5 rule), and a team acting on an interval from 12 customers does harm.
  **no holdout**: no holdout enrollment entered in the window, so there is nothing to compare with.

Counting is SQL (engine/reports/playbook_counts.py: enrollments, conversions and actions, per
playbook and group, in a few aggregates); Python only does the interval arithmetic per playbook.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.clock import iso
from engine.format.durations import format_duration
from engine.format.playbook import Goal, Playbook
from engine.query.versions import version_goals
from engine.reports.html import HtmlPage, figure
from engine.reports.intervals import CONFIDENCE, METHOD, newcombe, wilson
from engine.reports.periods import quiet_note, report_now
from engine.reports.playbook_counts import (
    action_counts,
    entered_counts,
    measured_counts,
    version_pairs,
)
from engine.reports.sheet import Column, Sheet
from engine.store.facts import events

MIN_ENROLLMENTS = 30
"""Measured enrollments each group needs before the report states an uplift."""
MIN_OUTCOMES = 5
"""Conversions, and non-conversions, each group needs before the report states an uplift."""
PLACES = 4
GROUPS = ("treatment", "holdout")


@dataclass(frozen=True)
class Group:
    """One side of a playbook's experiment: enrollments, how many are measured, conversions."""

    entered: int = 0
    open: int = 0
    converted: int = 0
    no_goal: int = 0  # entered with a version that has no goal: never measured

    @property
    def measured(self) -> int:
        """Enrollments whose goal window has ended: the denominator of the rate."""
        return self.entered - self.open - self.no_goal

    @property
    def rate(self) -> float | None:
        """Conversion as a fraction; None when nothing is measured yet."""
        return self.converted / self.measured if self.measured else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The rate's 95% Wilson score interval (fractions); None when nothing is measured."""
        return wilson(self.converted, self.measured) if self.measured else None

    def as_dict(self, with_goal: bool) -> dict[str, Any]:
        """The group under its JSON keys; conversion keys are null without a goal."""
        result: dict[str, Any] = {"entered": self.entered}
        if not with_goal:
            return result | {"open": None, "measured": None, "converted": None, "rate": None,
                             "ci": None}
        interval = self.interval
        return result | {"open": self.open, "measured": self.measured,
                         "converted": self.converted, "rate": _pct(self.rate),
                         "ci": None if interval is None else [_pct(v) for v in interval]}


@dataclass(frozen=True)
class PlaybookEffect:
    """One playbook's line of the report, with the plain statement of what it shows."""

    playbook_id: str
    playbook: Playbook | None
    treatment: Group
    holdout: Group
    actions: dict[str, dict[str, int]] = field(default_factory=dict)
    goal: Goal | None = None  # the goal shown (module docstring); None: nothing is measured
    goals_differ: bool = False  # versions in the window measure different goals

    @property
    def entered(self) -> int:
        """Enrollments in both groups."""
        return self.treatment.entered + self.holdout.entered

    @property
    def uplift(self) -> tuple[float, float, float] | None:
        """(uplift, low, high) as fractions, or None when the report says it cannot tell."""
        if self.conclusion not in ("higher", "lower", "unclear"):
            return None
        t, h = self.treatment, self.holdout
        low, high = newcombe(t.converted, t.measured, h.converted, h.measured)
        return t.converted / t.measured - h.converted / h.measured, low, high

    @property
    def conclusion(self) -> str:
        """A stable keyword for the statement: what the numbers allow us to say."""
        t, h = self.treatment, self.holdout
        if self.goal is None or (self.entered and self.unmeasured == self.entered):
            return "no_goal"
        if not self.entered:
            return "no_enrollments"
        if not h.entered:
            return "no_holdout"
        if min(t.measured, h.measured) < MIN_ENROLLMENTS:
            return "too_few_enrollments"
        if min(t.converted, t.measured - t.converted, h.converted,
               h.measured - h.converted) < MIN_OUTCOMES:
            return "too_few_conversions"
        low, high = newcombe(t.converted, t.measured, h.converted, h.measured)
        return "higher" if low > 0 else "lower" if high < 0 else "unclear"

    @property
    def statement(self) -> str:
        """The conclusion in words, for a person deciding whether the playbook works."""
        t, h = self.treatment, self.holdout
        conclusion = self.conclusion
        if conclusion == "no_goal":
            if self.goal is not None:
                where = "the versions these enrollments entered with have no `goal:`"
            elif self.playbook is None:
                where = "the playbook file is not among the loaded playbooks"
            else:
                where = "the playbook has no `goal:`"
            return f"no goal defined ({where}): entered and actions only"
        if conclusion == "no_enrollments":
            return "no enrollments in this window"
        if conclusion == "no_holdout":
            share = None if self.playbook is None else self.playbook.document.holdout
            if share:  # a share is set, but chance put no one of a small intake in the group
                return (f"no holdout: none of the {t.entered:,} enrollments fell in the control "
                        f"group (holdout: {100 * share:g}%), so there is nothing to compare with")
            return ("no holdout: every enrollment was acted on, so there is nothing to compare "
                    "with (set `holdout: 10%` in the playbook)")
        if conclusion == "too_few_enrollments":
            text = (f"too few enrollments to say anything (need at least {MIN_ENROLLMENTS} in "
                    f"each group with a finished goal window; have {t.measured:,} treatment and "
                    f"{h.measured:,} holdout)")
        elif conclusion == "too_few_conversions":
            text = (f"too few conversions to say anything (need at least {MIN_OUTCOMES} "
                    f"converted and {MIN_OUTCOMES} not converted in each group)")
        else:
            value, low, high = self.uplift  # type: ignore[misc]
            effect = _effect(value, low, high)
            text = {"higher": f"converts better than the holdout: {effect}",
                    "lower": f"converts worse than the holdout: {effect}",
                    "unclear": f"no clear difference from the holdout: {effect}, the interval "
                    "includes 0"}[conclusion]
        return text + self._caveats()

    @property
    def unmeasured(self) -> int:
        """Enrollments of versions without a goal."""
        return self.treatment.no_goal + self.holdout.no_goal

    def _caveats(self) -> str:
        """What the numbers leave out, appended to the statement."""
        text = ""
        still_open = self.treatment.open + self.holdout.open
        if still_open:
            text += (f"; {still_open:,} more enrollment{'s' if still_open != 1 else ''} still "
                     "inside the goal window, not counted yet")
        if self.unmeasured:
            text += (f"; {self.unmeasured:,} enrollment{'s' if self.unmeasured != 1 else ''} "
                     "of a version without a goal, not measured")
        if self.goals_differ:
            text += "; versions differ in goal: each enrollment is judged by its version's"
        return text

    def to_json(self) -> dict[str, Any]:
        """The playbook's entry in the `--json` document."""
        goal = self.goal
        uplift = self.uplift
        playbook = self.playbook
        return {
            "playbook_id": self.playbook_id,
            "name": None if playbook is None else playbook.document.name,
            "file": None if playbook is None else playbook.file,
            "goal": None if goal is None else {"event": goal.event,
                                               "within": format_duration(goal.within)},
            "holdout_share": None if playbook is None else playbook.document.holdout,
            "entered": self.entered,
            "holdout": self.holdout.entered,
            "groups": {"treatment": self.treatment.as_dict(goal is not None),
                       "holdout": self.holdout.as_dict(goal is not None)},
            "actions": self.actions,
            "actions_total": sum(sum(s.values()) for s in self.actions.values()),
            "uplift_pp": None if uplift is None else _pct(uplift[0]),
            "uplift_ci_pp": None if uplift is None else [_pct(uplift[1]), _pct(uplift[2])],
            "conclusion": self.conclusion,
            "statement": self.statement,
        }


@dataclass(frozen=True)
class PlaybooksReport:
    """Every playbook's effect over enrollments that entered in `[start, end)`."""

    start: datetime | None
    end: datetime | None
    cutoff: datetime  # now: goal windows ended by it are measured
    latest: datetime | None  # the latest event of any type before the cutoff
    playbooks: list[PlaybookEffect]

    @property
    def notes(self) -> list[str]:
        """Said when the latest event is more than a week before the cutoff (and some playbook
        measures a goal): a lagging sync would look like customers who did not convert."""
        if not any(p.goal is not None and p.entered for p in self.playbooks):
            return []
        note = quiet_note(self.latest, [("the cutoff", self.cutoff)],
                          "enrollments with no goal event by then count as not converted")
        return [] if note is None else [note]

    @property
    def message(self) -> str | None:
        """The plain note shown instead of numbers when there are no enrollments at all."""
        if any(p.entered for p in self.playbooks):
            return None
        return (f"No playbook enrollments {self._window_words()}: nothing to report yet. Live "
                "playbook runs write enrollments; dry-run writes nothing.")

    def to_json(self) -> dict[str, Any]:
        """The `--json` document."""
        return {
            "from": None if self.start is None else iso(self.start),
            "to": None if self.end is None else iso(self.end),
            "cutoff": iso(self.cutoff),
            "latest_event": None if self.latest is None else iso(self.latest),
            "notes": self.notes,
            "confidence": CONFIDENCE,
            "method": METHOD,
            "minimum": {"enrollments": MIN_ENROLLMENTS, "conversions": MIN_OUTCOMES,
                        "non_conversions": MIN_OUTCOMES},
            "message": self.message,
            "playbooks": [p.to_json() for p in self.playbooks],
        }

    def sheets(self) -> list[Sheet]:
        """Entered and actions, conversion per group, the statements (with the uplift) and the
        actions by status, text folding in an 80-column terminal; with no enrollments at all,
        only the message."""
        message = self.message
        if message is not None:
            return [Sheet(self._title(), [Column("message", left=True, wrap=True)], [[message]])]
        return [Sheet(self._title(), _columns(SUMMARY_COLUMNS), self._summary_rows()),
                Sheet("Goal conversion", _columns(CONVERSION_COLUMNS), self._conversion_rows(),
                      self._caption(), self.notes),
                Sheet("Against the holdout", _columns(["playbook", "statement"]),
                      self._statements()),
                Sheet("Actions by connector and status",
                      _columns(["playbook", "connector", "status", "actions"]),
                      self._action_lines())]

    def html(self, page: HtmlPage) -> None:
        """Sections for `--html`: the summary, conversion by group (chart with interval bars and
        table), the statements and the actions."""
        page.heading(self._title())
        message = self.message
        if message is not None:
            page.note(message)
            return
        page.table(SUMMARY_COLUMNS, self._summary_rows())
        page.heading("Goal conversion")
        charted = [p for p in self.playbooks
                   if p.goal is not None and (p.treatment.measured or p.holdout.measured)]
        if charted:
            page.chart(_conversion_chart(charted),
                       "Goal conversion by group, with 95% Wilson intervals")
        page.table([*CONVERSION_COLUMNS, "95% CI"], self._conversion_rows(with_interval=True))
        page.note(self._caption())
        for note in self.notes:
            page.note(f"Note: {note}.")
        page.heading("Against the holdout")
        page.table(["playbook", "statement"], self._statements())
        page.heading("Actions by connector and status")
        columns, rows = self._action_rows()
        page.table(columns, rows)

    def _window_words(self) -> str:
        if self.start is None and self.end is None:
            return "in the database"
        parts = ([] if self.start is None else [f"from {iso(self.start)}"]) + (
            [] if self.end is None else [f"to {iso(self.end)} (exclusive)"])
        return "entered " + " ".join(parts)

    def _title(self) -> str:
        if self.start is None and self.end is None:
            return "Playbooks: all enrollments"
        return f"Playbooks: {self._window_words()}"

    def _caption(self) -> str:
        return (f"Rate = converted / measured: enrollments whose goal window ended by "
                f"{iso(self.cutoff)} (now, or --as-of); open ones are not counted yet.")

    def _summary_rows(self) -> list[list[Any]]:
        return [[p.playbook_id, p.entered, p.holdout.entered,
                 sum(sum(s.values()) for s in p.actions.values()),
                 "no goal defined" if p.goal is None
                 else f"{p.goal.event} within {format_duration(p.goal.within)}"]
                for p in self.playbooks]

    def _conversion_rows(self, with_interval: bool = False) -> list[list[Any]]:
        rows = []
        for p in self.playbooks:
            if p.goal is None or not p.entered:
                continue
            for name in GROUPS:
                group: Group = getattr(p, name)
                interval = group.interval
                rate = group.rate
                row = [p.playbook_id, name, group.measured, group.converted,
                       "-" if rate is None else f"{100 * rate:.1f}%", group.open]
                if with_interval:
                    row.append("-" if interval is None else
                               f"{100 * interval[0]:.1f}% to {100 * interval[1]:.1f}%")
                rows.append(row)
        return rows

    def _statements(self) -> list[list[Any]]:
        return [[p.playbook_id, p.statement] for p in self.playbooks]

    def _action_lines(self) -> list[list[Any]]:
        """One row per (playbook, connector, status): as narrow as a terminal needs, however
        many statuses there are (the page pivots them into columns)."""
        return [[p.playbook_id, connector, status, count]
                for p in self.playbooks for connector, counts in sorted(p.actions.items())
                for status, count in sorted(counts.items())]

    def _action_rows(self) -> tuple[list[str], list[list[Any]]]:
        statuses = sorted({s for p in self.playbooks for c in p.actions.values() for s in c})
        rows = [[p.playbook_id, connector, *(counts.get(s, 0) for s in statuses),
                 sum(counts.values())]
                for p in self.playbooks for connector, counts in sorted(p.actions.items())]
        return ["playbook", "connector", *statuses, "total"], rows


TEXT_COLUMNS = {"goal", "statement", "connector", "group", "status"}
WRAP_COLUMNS = ("goal", "statement")
SUMMARY_COLUMNS = ["playbook", "entered", "holdout", "actions", "goal"]
CONVERSION_COLUMNS = ["playbook", "group", "measured", "converted", "rate", "open"]


def _columns(names: list[str]) -> list[Column]:
    """The playbook column and text columns left-aligned, goals and statements folding."""
    return [Column(n, left=i == 0 or n in TEXT_COLUMNS, wrap=n in WRAP_COLUMNS)
            for i, n in enumerate(names)]


def build(connection: sa.Connection, playbooks: Sequence[Playbook],
          start: datetime | None = None, end: datetime | None = None,
          now: datetime | None = None) -> PlaybooksReport:
    """The report over enrollments that entered in `[start, end)`, each judged by the goal of
    its version (`playbooks`, the loaded files, for versions never recorded). `now` (`--as-of`;
    None: the clock) closes goal windows and hides enrollments entered at or after it."""
    cutoff = report_now(now)
    given_end, end = end, cutoff if end is None else min(end, cutoff)
    latest = connection.execute(sa.select(sa.func.max(events.c.occurred_at))
                                .where(events.c.occurred_at < cutoff)).scalar()
    known = {p.id: p for p in playbooks}
    goals = _version_goals(connection, known, version_pairs(connection, start, end))
    entered = entered_counts(connection, start, end)
    measured = measured_counts(connection, start, end,
                               {pair: g for pair, g in goals.items() if g is not None}, cutoff)
    done = action_counts(connection, start, end)
    result = []
    for playbook_id in sorted(set(known) | {pid for pid, _h in entered}):
        used = list(dict.fromkeys(g for (pid, _v), g in goals.items()
                                  if pid == playbook_id and g is not None))
        goal = _shown_goal(known.get(playbook_id), used)
        groups = []
        for holdout in (False, True):
            count = entered.get((playbook_id, holdout), 0)
            judged, closed, converted = measured.get((playbook_id, holdout), (0, 0, 0))
            groups.append(Group(count) if goal is None else
                          Group(count, judged - closed, converted, count - judged))
        result.append(PlaybookEffect(playbook_id, known.get(playbook_id), groups[0], groups[1],
                                     done.get(playbook_id, {}), goal, len(used) > 1))
    return PlaybooksReport(start, given_end, cutoff, latest, result)


def _version_goals(connection: sa.Connection, known: dict[str, Playbook],
                   pairs: list[tuple[str, str]]) -> dict[tuple[str, str], Goal | None]:
    """The goal of each (playbook, version) enrollments entered with, in recorded order: the
    recorded version's, else (never recorded) the loaded file's."""
    recorded = version_goals(connection, pairs)
    fallback = {pair: known[pair[0]].document.goal if pair[0] in known else None
                for pair in pairs if pair not in recorded}
    return {**fallback, **recorded}


def _shown_goal(playbook: Playbook | None, used: list[Goal]) -> Goal | None:
    """The goal a line shows: the file's, when it judged some enrollment or none was judged;
    else the latest recorded one that judged some."""
    current = None if playbook is None else playbook.document.goal
    if current is not None and (not used or current in used):
        return current
    return used[-1] if used else None


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, PLACES)


def _effect(value: float, low: float, high: float) -> str:
    return f"{100 * value:+.1f} pp (95% CI {100 * low:+.1f} to {100 * high:+.1f})"


def _conversion_chart(playbooks: list[PlaybookEffect]) -> Any:
    """Grouped bars of conversion per playbook and group, with each group's Wilson interval."""
    chart = figure(max(6.0, 1.4 * len(playbooks) + 2), 3.8)
    axes = chart.subplots()
    width = 0.38
    for offset, (name, colour) in zip((-width / 2, width / 2),
                                      (("treatment", "#4c72b0"), ("holdout", "#bbbbbb")),
                                      strict=True):
        heights, below, above = [], [], []
        for p in playbooks:
            group: Group = getattr(p, name)
            interval = group.interval
            rate = group.rate
            if rate is None or interval is None:  # NaN draws neither bar nor whisker
                heights.append(math.nan)
                below.append(math.nan)
                above.append(math.nan)
                continue
            heights.append(100 * rate)
            below.append(100 * (rate - interval[0]))
            above.append(100 * (interval[1] - rate))
        positions = [i + offset for i in range(len(playbooks))]
        axes.bar(positions, heights, width, label=name, color=colour,
                 yerr=[below, above], capsize=4, ecolor="#333333")
    axes.set_xticks(range(len(playbooks)), [p.playbook_id for p in playbooks])
    axes.tick_params(axis="x", labelrotation=20)
    axes.set_ylabel("goal conversion (%)")
    axes.set_ylim(0, 100)
    axes.legend()
    axes.set_title("Goal conversion by group (whiskers: 95% Wilson intervals)")
    return chart

