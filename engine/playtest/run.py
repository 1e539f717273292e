"""Running one test: its customers and events synced into a fresh store, then its steps.

Everything goes through the code `retain sync` and `retain run` use (ingest, then `run_cycle`:
evaluation, plan, commit, resume, dispatch), at the test's clock; only the network connectors
record instead of sending (record.py). Before and after each `run` step the enrollments and
the outbox are read whole (a test's store is small), so an expectation compares with what that
run changed: who entered, which actions it wrote or moved on, who exited or converted.
A test whose customers and events an earlier test of the same run synced, the very same rows at
the same clock, starts from a copy of the store that sync made (engine/playtest/stores.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import SecretStr

from engine.config.model import Settings
from engine.errors import RetainError
from engine.format.playbook import Playbook
from engine.outbox.run import RunReport, run_cycle
from engine.playtest.load import Case, Step, TestFileLoaded
from engine.playtest.model import DEFAULT_START, TestSettings, resolve_time
from engine.playtest.record import Recorder, test_connectors
from engine.store.tables import Action, ActionPayload, Enrollment
from engine.sync.ingest import ingest_customers, ingest_events

TEST_WEBHOOK_SECRET = "whsec_cmV0YWluIHRlc3Qgc2lnbmluZyBrZXk="  # base64("retain test signing key")
"""Webhooks in a test are signed with this fixed key (nothing is sent): no secret is needed."""

Stores = Callable[[], AbstractContextManager[sa.Engine]]


@dataclass(frozen=True)
class Failure:
    """One expectation not met (or a step that could not run), where it is written."""

    where: str  # file:line:col
    what: str  # the expectation's path, `expect.entered`
    lines: list[str]  # wanted, got, and what explains the difference

    def to_json(self) -> dict[str, Any]:
        return {"where": self.where, "what": self.what, "message": "\n".join(self.lines)}


@dataclass
class Result:
    """One test's outcome."""

    file: str
    name: str
    where: str
    failures: list[Failure] = field(default_factory=list)
    error: str | None = None  # the test could not run to its end (not an expectation)
    seconds: float = 0.0

    @property
    def outcome(self) -> str:
        return "error" if self.error else ("failed" if self.failures else "passed")

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "name": self.name, "where": self.where,
                "outcome": self.outcome, "seconds": round(self.seconds, 4),
                "error": self.error, "failures": [f.to_json() for f in self.failures]}


@dataclass(frozen=True)
class ActionRow:
    """An outbox row as a test sees it."""

    id: int
    playbook_id: str
    customer_id: str
    connector: str
    status: str
    reason: str | None
    next_attempt_at: datetime | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class EnrollmentRow:
    id: int
    playbook_id: str
    customer_id: str
    status: str
    holdout: bool
    converted: bool


@dataclass
class LastRun:
    """What one `run` step did: the engine's report and what changed in the store."""

    clock: datetime
    report: RunReport
    entered: list[EnrollmentRow]
    exited: list[EnrollmentRow]
    converted: list[EnrollmentRow]
    actions: list[ActionRow]  # written or moved on by this run


@dataclass
class State:
    """A test while it runs: its store, its clock, the playbooks, the last run."""

    engine: sa.Engine
    loaded: TestFileLoaded
    playbooks: dict[str, Playbook]
    settings: Settings
    clock: datetime
    recorder: Recorder = field(default_factory=Recorder)
    last: LastRun | None = None
    events_added: int = 0
    outbox: tuple[list[ActionRow], list[EnrollmentRow]] | None = None
    """The actions and enrollments as the last run left them (None: read them before the next
    run); only runs and `unsubscribe` change them."""


def settings_for(given: TestSettings) -> Settings:
    """The settings a test runs with: its own, and a sender and signing key that need no
    environment (nothing is sent). Raises pydantic's ValidationError on a bad cap or zone."""
    return Settings(timezone=given.timezone, caps=dict(given.caps),
                    quiet_hours=dict(given.quiet_hours), email_from=given.email_from,
                    smtp={"host": "retain-test.invalid"},
                    webhook_secret=SecretStr(TEST_WEBHOOK_SECRET))


def run_case(loaded: TestFileLoaded, case: Case, playbooks: dict[str, Playbook],
             stores: Stores) -> Result:
    """Run one test in a fresh store; expectation failures stop it at that step."""
    from engine.playtest.expect import check

    result = Result(str(loaded.path), case.name, loaded.where(case.path))
    started = time.perf_counter()
    try:
        settings = settings_for(case.settings)
        with stores() as engine:
            state = State(engine, loaded, {pid: playbooks[pid] for pid in loaded.playbooks},
                          settings, resolve_time(loaded.start or DEFAULT_START, DEFAULT_START))
            result.failures += _given_once(state, case)
            for step in case.steps if not result.failures else ():
                failures = check(state, step) if step.kind == "expect" else _act(state, step)
                if failures:
                    result.failures += failures
                    break
    except RetainError as exc:
        result.error = str(exc)
    except Exception as exc:  # noqa: BLE001  (the test could not run: say so, go on)
        result.error = f"{type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - started
    return result


def _given(state: State, case: Case) -> list[Failure]:
    return _sync_customers(state, case.customers) + _sync_events(state, case.events)


def _given_once(state: State, case: Case) -> list[Failure]:
    """`_given`, or, when an earlier test of this run synced the very same rows at the same
    clock, a copy of the store that sync made (engine/playtest/stores.py: kept stores)."""
    from engine.playtest.stores import stores_of

    keeper = stores_of(state.engine)
    if keeper is None:
        return _given(state, case)
    key = _given_key(state, case)
    kept = keeper.start_from(key)
    if kept is not None:
        state.events_added = kept
        return []
    failures = _given(state, case)
    if not failures:
        keeper.keep(key, state.events_added)
    return failures


def _given_key(state: State, case: Case) -> str:
    """What a test's first sync depends on: its rows (values with their types), its clock and
    the source it names (the test file)."""
    import hashlib
    import json

    given = [str(state.loaded.path), state.clock.isoformat(),
             [row for _, row in case.customers], [row for _, row in case.events]]
    text = json.dumps(given, sort_keys=True, default=lambda v: f"{type(v).__name__}:{v!r}")
    return hashlib.sha256(text.encode()).hexdigest()


def _act(state: State, step: Step) -> list[Failure]:
    if step.kind == "run":
        _run(state)
        return []
    if step.kind == "advance":
        state.clock += step.value
        return []
    if step.kind == "customers":
        return _sync_customers(state, step.value)
    if step.kind == "unsubscribe":  # as `retain unsubscribe EMAIL` does, at the test's clock
        from engine.outbox.admin import unsubscribe
        from engine.store.txn import writing

        with writing(state.engine) as connection:
            unsubscribe(connection, step.value, state.clock)
        state.outbox = None  # it stops waiting emails: not the next run's doing
        return []
    return _sync_events(state, step.value)


def _run(state: State) -> None:
    if state.outbox is None:
        state.outbox = read_actions(state.engine), read_enrollments(state.engine)
    before_actions = {row.id: (row.status, row.next_attempt_at) for row in state.outbox[0]}
    before = {row.id: row for row in state.outbox[1]}
    report = run_cycle(state.engine, list(state.playbooks.values()), state.clock,
                       state.settings, connectors=test_connectors(state.settings,
                                                                  state.recorder))
    state.outbox = actions, after = read_actions(state.engine), read_enrollments(state.engine)
    new = [row for row in after if row.id not in before]
    state.last = LastRun(
        state.clock, report, entered=new,
        exited=[row for row in after if row.status == "exited"
                and (row.id not in before or before[row.id].status != "exited")],
        converted=[row for row in after if row.converted
                   and (row.id not in before or not before[row.id].converted)],
        actions=[row for row in actions
                 if before_actions.get(row.id) != (row.status, row.next_attempt_at)])


def _sync_customers(state: State, rows: list[tuple[Any, dict[str, Any]]]) -> list[Failure]:
    if not rows:
        return []
    resolved = []
    for index, (_, row) in enumerate(rows):
        values = dict(row)
        if values.get("created_at") is not None:
            values["created_at"] = resolve_time(values["created_at"], state.clock)
        resolved.append((index, values))
    report = ingest_customers(state.engine, resolved, str(state.loaded.path), now=state.clock)
    return _rejected(state, rows, report.rejected)


def _sync_events(state: State, rows: list[tuple[Any, dict[str, Any]]]) -> list[Failure]:
    if not rows:
        return []
    resolved = []
    for index, (_, row) in enumerate(rows):
        values = {key: value for key, value in row.items() if key != "at"}
        state.events_added += 1
        values.setdefault("event_id", f"test-event-{state.events_added}")
        values["occurred_at"] = resolve_time(row.get("at", "now"), state.clock)
        resolved.append((index, values))
    report = ingest_events(state.engine, resolved, str(state.loaded.path))
    return _rejected(state, rows, report.rejected)


def _rejected(state: State, rows: list[tuple[Any, dict[str, Any]]],
              rejected: list[Any]) -> list[Failure]:
    """A row sync refused is the test's mistake: a failure at that row."""
    return [Failure(state.loaded.where(rows[error.line][0]), "row",
                    [f"not synced: {error.reason}"]) for error in rejected]


def read_actions(engine: sa.Engine) -> list[ActionRow]:
    """Every outbox row with its payload, oldest first."""
    a, p = Action.__table__.c, ActionPayload.__table__.c  # type: ignore[attr-defined]
    query = (sa.select(a.id, a.playbook_id, a.customer_id, a.connector, a.status, a.reason,
                       a.next_attempt_at, p.payload)
             .select_from(Action.__table__.outerjoin(ActionPayload.__table__,  # type: ignore[attr-defined]
                                                     p.action_id == a.id))
             .order_by(a.id))
    with engine.connect() as connection:
        return [ActionRow(*row[:7], payload=row[7] or {}) for row in connection.execute(query)]


def read_enrollments(engine: sa.Engine) -> list[EnrollmentRow]:
    """Every enrollment, oldest first."""
    e = Enrollment.__table__.c  # type: ignore[attr-defined]
    query = sa.select(e.id, e.playbook_id, e.customer_id, e.status, e.holdout,
                      e.converted_at.is_not(None)).order_by(e.id)
    with engine.connect() as connection:
        return [EnrollmentRow(*row) for row in connection.execute(query)]


def cases_selected(cases: list[Case], pattern: str | None) -> Iterator[Case]:
    """The tests whose name contains `pattern` (any letter case), like pytest's `-k` word."""
    for case in cases:
        if pattern is None or pattern.lower() in case.name.lower():
            yield case
