"""The Plan (DESIGN 4): who enters which playbook at `as_of`, and what each would get.

A dry-run prints the plan; a live run commits the same object (enrollments and outbox rows), so
what a dry-run shows is what would happen (DESIGN 3). `make_plan` wires the reader (batched
reads) to the pure planner (decisions): per playbook it counts who enters in SQL, decides the
limits, counts the holdout, and plans every enrollment in batches, keeping only the first `show`
(the rest are drained: their errors and action counts are kept, the enrollments are not), so
the errors and the exit code of a dry-run are the same whatever it lists: a live run would fail
for every customer it did not show too. `complete=False` defers that pass for a caller that
streams every enrollment itself (`PlaybookPlan.batches`: what a live run commits and what
`dry-run --json` prints, in flat memory). Deterministic: the same database and as_of give the
same plan in the same order (customer, occurrence). The plan reads through the caller's
connection, so stream it while that is open.

Caps and quiet hours come from the settings (engine/plan/delivery.py): playbooks are planned in
priority order and share one `CapLedger`, so a lower-priority playbook's action is capped by what
a higher one got in this run, as well as by the outbox rows read for each batch. Stream the
playbooks in the plan's order (every flow here does); streaming one again re-plans it and every
later one against the same higher-priority plan. A live run commits as it streams: an outbox
row it wrote and the same planned action count once (by idempotency key).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from engine.clock import iso
from engine.format.compile import CompileContext
from engine.format.playbook import Playbook
from engine.format.registry import make_connectors
from engine.format.templates import make_environment
from engine.format.validation import templates_dir
from engine.plan import reader
from engine.plan.delivery import CapLedger, DeliveryRules
from engine.plan.planner import PlannedEnrollment, Planner, Unsubscribe, over_limit, schedule
from engine.plan.set_plan import SetPlan, holdout_sql, set_plan
from engine.query.evaluate import Customers, Moment, compose, count, prepare

if TYPE_CHECKING:
    from engine.config import Settings

Batches = Callable[[int | None, "sa.Select[Any] | None"], Iterator[list[PlannedEnrollment]]]
SAMPLES = 3  # reasons kept per status and playbook, for the text plan


@dataclass
class PlaybookPlan:
    """One playbook's part of the plan: counts, the first enrollments, and all of them.

    `problems` and `statuses` cover every enrollment once `complete` (all were planned).
    """

    playbook: Playbook
    entering: int = 0  # counted in SQL
    holdout: int = 0  # of those entering, how many are in the control group
    shown: list[PlannedEnrollment] = field(default_factory=list)
    over_limit: str | None = None
    note: str | None = None
    source: Batches | None = field(default=None, repr=False)
    set_plan: SetPlan | None = field(default=None, repr=False)  # a live plan committed in SQL
    problems: dict[str, None] = field(default_factory=dict, repr=False)  # ordered, no repeats
    statuses: Counter[str] = field(default_factory=Counter)  # actions by status
    samples: dict[str, list[str]] = field(default_factory=dict)  # status -> first reasons
    complete: bool = False  # every enrollment planned: problems and statuses cover them all

    def batches(self, only: sa.Select[Any] | None = None) -> Iterator[list[PlannedEnrollment]]:
        """Every enrollment a live run commits, a batch at a time; none when over the limit.
        `only`: those of this statement (the plan's own, narrowed: `SetPlan.rest`).

        Collects each enrollment's errors, action statuses and the first reasons of each
        status on the way, anew on each pass; `complete` once the last batch is handed out.
        """
        self.problems.clear()
        self.statuses.clear()
        self.samples.clear()
        self.complete = False
        if self.over_limit is None and self.source is not None:
            for batch in self.source(None, only):
                for enrollment in batch:
                    self.problems.update(dict.fromkeys(enrollment.errors(self.playbook.id)))
                    self.statuses.update(action.status for action in enrollment.actions)
                    self._sample(enrollment)
                yield batch
        self.complete = True

    def _sample(self, enrollment: PlannedEnrollment) -> None:
        """Keep the first reasons of each status (but errors, which `problems` keeps)."""
        for action in enrollment.actions:
            if action.reason and not action.error:
                kept = self.samples.setdefault(action.status, [])
                if len(kept) < SAMPLES:
                    kept.append(f"customer {enrollment.customer_id}: {action.reason}")

    def enrollments(self) -> Iterator[PlannedEnrollment]:
        """Every enrollment, one at a time (streamed in batches underneath)."""
        for batch in self.batches():
            yield from batch

    def header(self) -> dict[str, Any]:
        """The playbook's part of the `--json` document, without its enrollments."""
        p = self.playbook
        return {"id": p.id, "name": p.document.name, "version": p.version, "file": p.file,
                "priority": p.document.priority, "entering": self.entering,
                "holdout": self.holdout, "over_limit": self.over_limit, "note": self.note}


@dataclass
class Plan:
    """Every enabled playbook's plan at one instant."""

    moment: Moment
    playbooks: list[PlaybookPlan]
    disabled: list[str]

    @property
    def errors(self) -> list[str]:
        """Every action of every enrollment that could not be planned, in plan order.

        Only a complete plan answers (make_plan's default, or every enrollment streamed): the
        errors of the first few enrollments would let a dry-run pass that a live run fails.
        """
        unfinished = [pp.playbook.id for pp in self.playbooks if not pp.complete]
        if unfinished:
            raise RuntimeError(f"errors asked of a partial plan ({', '.join(unfinished)})")
        return [line for pp in self.playbooks for line in pp.problems]

    def header(self) -> dict[str, Any]:
        """The `--json` document's fields besides the playbooks."""
        latest = self.moment.latest_event
        return {"as_of": iso(self.moment.as_of), "historical": self.moment.historical,
                "latest_event": iso(latest) if latest else None, "disabled": self.disabled}

    def to_json(self, every: bool = True) -> dict[str, Any]:
        """The whole document in memory (every enrollment, or those shown): for small plans."""
        return {**self.header(), "playbooks": [
            {**pp.header(), "enrollments": [e.to_json() for e in _listed(pp, every)]}
            for pp in self.playbooks]}

    def json_chunks(self, every: bool = True,
                    extra: Mapping[str, Any] | None = None) -> Iterator[str]:
        """The same document as text pieces, one enrollment per line, streamed: memory stays
        flat however many enter. `every=False` lists only the enrollments shown; `extra` adds
        top-level fields (the CLI's warnings)."""
        head = json.dumps({**self.header(), **(extra or {})}, ensure_ascii=False, default=str)
        yield head[:-1] + ', "playbooks": ['
        for n, pp in enumerate(self.playbooks):
            part = json.dumps(pp.header(), ensure_ascii=False)
            yield ("," if n else "") + "\n" + part[:-1] + ', "enrollments": ['
            for i, enrollment in enumerate(_listed(pp, every)):
                yield ("," if i else "") + "\n" + json.dumps(enrollment.to_json(),
                                                             ensure_ascii=False)
            yield "]}"
        yield "\n]}\n"


def _listed(pp: PlaybookPlan, every: bool) -> Iterator[PlannedEnrollment]:
    return pp.enrollments() if every else iter(pp.shown)


@dataclass(frozen=True)
class _Run:
    """What every playbook of one plan shares."""

    moment: Moment
    connectors: dict[str, Any]
    total: int | None
    rules: DeliveryRules
    ledger: CapLedger
    unsubscribe: Unsubscribe | None


def make_plan(connection: sa.Connection, playbooks: list[Playbook], as_of: datetime, *,
              customer_id: Customers = None, show: int | None = None, complete: bool = True,
              progress: Callable[[int], object] | None = None,
              settings: Settings | None = None,
              unsubscribe: Unsubscribe | None = None) -> Plan:
    """Evaluate every enabled playbook at `as_of`: counts, holdout, limits, every enrollment
    planned and the first `show` kept (None: all, in memory; stream large plans with `batches`).

    `complete=False` plans only the first `show` (a LIMIT), for a caller that streams every
    enrollment afterwards; `errors` answers once it has. `customer_id` plans that customer's
    (or those customers') part: the limits are still decided from everyone entering, as the full plan decides them.
    `settings` brings `caps`, `quiet_hours` and `timezone` (None: none of them). `unsubscribe`
    (address -> link) makes a live plan: real links, and the connectors' frozen payloads as the
    sendable actions' fields. Reads only; the caller's transaction sees no writes from here.
    """
    active = sorted((p for p in playbooks if p.document.enabled),
                    key=lambda p: (-p.document.priority, p.id))
    moment = prepare(connection, as_of, active)
    needs_total = any(p.document.limits and p.document.limits.max_percent is not None
                      for p in active)
    rules = DeliveryRules.from_settings(settings, {p.id: p.document.priority for p in active})
    run = _Run(moment, make_connectors(settings),
               reader.total_customers(connection, as_of) if needs_total else None, rules,
               CapLedger(), unsubscribe)
    plans = []
    for rank, playbook in enumerate(active):
        plans.append(_playbook_plan(connection, playbook, rank, run, customer_id, show,
                                    complete))
        if progress is not None:
            progress(1)
    disabled = sorted(p.id for p in playbooks if not p.document.enabled)
    return Plan(moment, plans, disabled)


def _playbook_plan(connection: sa.Connection, playbook: Playbook, rank: int, run: _Run,
                   customer_id: Customers, show: int | None, complete: bool) -> PlaybookPlan:
    moment = run.moment
    tc = moment.trigger_context(playbook.id)
    part = playbook.trigger.sql(tc, playbook.document.backfill)
    query = compose(playbook, tc, part, customer_id)
    result = PlaybookPlan(playbook, note=part.note)
    result.entering = count(connection, query)
    everyone = result.entering
    if customer_id is not None and playbook.document.limits is not None:
        everyone = count(connection, compose(playbook, tc, part))  # the limits see everyone
    result.over_limit = over_limit(playbook, everyone, run.total)
    if result.over_limit is not None or result.entering == 0:
        result.complete = True
        return result
    environment = playbook_environment(playbook)
    if run.unsubscribe is not None and customer_id is None:  # live: in SQL where it can be
        result.set_plan = set_plan(playbook, query, run.connectors, run.rules, environment,
                                   moment.as_of)
    if playbook.document.holdout:
        entering = query.subquery()
        result.holdout = connection.execute(
            sa.select(sa.func.count()).select_from(entering)
            .where(holdout_sql(playbook, entering.c.customer_id, entering.c.occurrence))
        ).scalar_one()
    planner = Planner(playbook, moment.as_of, run.connectors, environment, rules=run.rules,
                      ledger=run.ledger, rank=rank, unsubscribe=run.unsubscribe)
    ctx = CompileContext(moment.as_of, moment.historical)
    channels = run.rules.capped_channels & {s.action.kind for s in schedule(playbook)
                                            if s.stage == 0}
    since = moment.as_of - run.rules.longest_window

    def source(limit: int | None, only: sa.Select[Any] | None = None
               ) -> Iterator[list[PlannedEnrollment]]:
        run.ledger.forget_from(rank)  # a new pass: only the higher-priority plan stays
        chosen = query if only is None else only
        for batch, people in reader.candidate_records(connection, ctx, chosen, limit):
            found = reader.records(connection, ctx, batch, people)
            booked = reader.bookings(connection, [c.customer_id for c in batch], channels,
                                     since, as_of=moment.as_of)
            yield [planner.enrollment(c.customer_id, c.occurrence, found.customers[c.customer_id],
                                      found.events.get(c.event_ref)
                                      if c.event_ref is not None else None,
                                      found.suppressions, booked.get(c.customer_id))
                   for c in batch]

    result.source = source
    if complete or show is None:
        for batch in result.batches():  # one pass: keep the first `show`, drain the rest
            room = len(batch) if show is None else show - len(result.shown)
            result.shown.extend(batch[:max(room, 0)])
    elif show != 0:
        result.shown = [e for batch in source(show) for e in batch]
    return result


def playbook_environment(playbook: Playbook) -> Any:
    """The Jinja environment a loaded playbook's actions render with: from the template texts
    it was loaded with (the ones its version hashes), not the folder as it is now: the daemon
    keeps a version running after an invalid edit of one of its templates, and must not plan
    with the broken file; anywhere, an action must carry the content its version names. The
    folder only when no texts were kept.

    Made once per loaded playbook and kept on it (a frozen dataclass: in its `__dict__`), so
    the templates compiled and the constant texts rendered by one cycle serve the next (the
    daemon's cycles, each `run` of `retain test`); a reload is a new Playbook, a new one."""
    kept = playbook.__dict__.get("_environment")
    if kept is None:
        folder = templates_dir(Path(playbook.file))
        kept = make_environment(folder) if playbook.templates is None else make_environment(
            templates=playbook.templates, label=str(folder) if folder is not None else "templates")
        playbook.__dict__["_environment"] = kept
    return kept
