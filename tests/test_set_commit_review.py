"""Review of the set-based commit (957918d): cases where what `INSERT ... SELECT` writes
differs from what the per-customer planner writes (tests/test_set_commit.py `_planned`), or
where `retain run` reports other numbers than the rows it wrote."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from outbox_support import select_actions
from test_evaluate_triggers import AS_OF, add_events, ago, customer, playbook
from test_live_crash import AS_OF as LATER
from test_live_crash import inactive_base
from test_set_commit import _committed, _planned_at

from connectors.tasks import TaskConnector
from engine.config import Settings
from engine.format.registry import register_connector, unregister_connector
from engine.format.template_sql import SAFE_CHARS
from engine.outbox import set_commit
from engine.outbox.claim import claim_due
from engine.outbox.commit import StagePlan, _Rows
from engine.outbox.run import run_cycle
from engine.plan.build import make_plan
from engine.store import status as st
from engine.store.dialect import PerDialect
from engine.store.open import open_store
from engine.store.tables import customers, enrollments
from engine.sync.ingest import ingest_customers

LIVE = {"unsubscribe": lambda address: "https://x.example/u"}


def _planned(db: sa.Engine, pb: Any) -> tuple[list[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """The dry-run's plan in `_committed`'s shape, the wake time of this playbook's stages."""
    return _planned_at(db, pb, AS_OF)


def _sync(db: sa.Engine, *rows: dict[str, object]) -> None:
    """Customers through the real ingest (what `retain sync customers` of a JSONL file does)."""
    report = ingest_customers(db, list(enumerate(rows, 2)), "customers")
    assert not report.rejected, report.rejected


@pytest.mark.parametrize("name", ["Ann\x00\nBcc: x@evil.example",  # a line break after a NUL
                                  "Ann\x00" + "y" * (4 * SAFE_CHARS + 10)])  # > 256 KiB after a NUL
def test_sqlite_text_after_a_nul_is_judged_like_jinja(tmp_path: Path, name: str) -> None:
    """SQLite's length() and GLOB stop at the first NUL character: a title Jinja refuses (a
    line break, or over 256 KiB) looked certainly safe, and was written `planned` by SQL where
    the planner writes it `dead`. JSON lines may carry `\\u0000` (only raw NUL bytes are
    refused by the file reader), so the name is synced, not forced into the table."""
    db = open_store(f"sqlite:///{tmp_path / 'retain.db'}")
    _sync(db, customer("nul", name=name, last_active_at=ago(days=45)),
          customer("ok", name="Bo", last_active_at=ago(days=45)))
    pb = playbook(tmp_path, "inactive: { days: 30 }",
                  actions='  - task: { title: "Call {{ customer.name }}" }\n')
    with db.connect() as connection:
        assert make_plan(connection, [pb], AS_OF, show=0, complete=False,
                         **LIVE).playbooks[0].set_plan is not None
    expected = _planned(db, pb)
    assert {row[0]: row[4] for row in expected[1]} == {"nul": st.DEAD, "ok": st.PLANNED}
    run_cycle(db, [pb], AS_OF, Settings(), dispatch=False)
    assert _committed(db) == expected
    db.dispose()


def test_sqlite_keys_of_a_customer_id_with_a_nul_are_action_keys(tmp_path: Path) -> None:
    """SQLite's substr() stops at a NUL character: the key's readable prefix of customer
    `a\\0b` was `pb/a/0.0/...` in SQL where `action_key` (the dry-run, a resumed stage) makes
    `pb/a\\0b/0.0/...`."""
    db = open_store(f"sqlite:///{tmp_path / 'retain.db'}")
    _sync(db, customer("a\x00b", name="Ann", last_active_at=ago(days=45)))
    pb = playbook(tmp_path, "inactive: { days: 30 }",
                  actions="  - points: { amount: 5, reason: hi }\n")
    expected = _planned(db, pb)
    run_cycle(db, [pb], AS_OF, Settings(), dispatch=False)
    assert _committed(db) == expected
    db.dispose()


def _wait_for_lock(db: sa.Engine, timeout: float = 30.0) -> None:
    """Until another connection's statement waits on a lock (PostgreSQL)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.connect() as connection:  # pg_stat_activity is a snapshot per transaction
            if connection.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND pid <> pg_backend_pid()")).scalar_one():
                return
        time.sleep(0.05)
    raise AssertionError("no statement waited on the other replica's rows")


def test_postgresql_a_run_reports_only_what_it_wrote_when_a_replica_races(
        pg_url: str, tmp_path: Path) -> None:
    """Two replicas commit the same playbook at once. The set-based commit counted "id above
    the largest before it", which on PostgreSQL also takes the rows another replica committed
    meanwhile: both replicas reported those enrollments (entered 5 + 2 for 5 customers), where
    the per-customer commit reports what its own inserts returned."""
    db = open_store(pg_url)
    _sync(db, *(customer(f"c{i}", name=f"N{i}", last_active_at=ago(days=45)) for i in range(5)))
    pb = playbook(tmp_path, "inactive: { days: 30 }",
                  actions='  - task: { title: "Call {{ customer.name }}" }\n')
    with db.connect() as connection:
        replica = [e for e in make_plan(connection, [pb], AS_OF).playbooks[0].enrollments()
                   if e.customer_id in ("c0", "c1")]
    elsewhere = open_store(pg_url)  # the other replica: its own engine
    other = elsewhere.connect()
    transaction = other.begin()  # in the middle of its commit
    rows = _Rows(other.dialect, pb, StagePlan(pb), AS_OF)
    rows.actions(other, replica, rows.enrollments(other, replica))
    reports: list[Any] = []
    thread = threading.Thread(target=lambda: reports.append(
        run_cycle(db, [pb], AS_OF, Settings(), dispatch=False)))
    thread.start()
    try:
        _wait_for_lock(db)  # this run's insert waits for the other replica's keys
    finally:
        transaction.commit()
        other.close()
        elsewhere.dispose()
        thread.join(60)
    line = reports[0].playbooks[pb.id]
    with db.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(enrollments)
                                  ).scalar_one() == 5
    assert (line.entered, sum(line.committed.values())) == (3, 3)
    db.dispose()


THREE = ('  - task: {{ title: "{title}", note: "For {{{{ customer.name }}}}" }}\n'
         '  - points: {{ amount: 5, reason: hi }}\n  - tag: {{ add: [winback] }}\n')


@pytest.mark.slow
def test_sqlite_a_large_set_commit_lets_a_dispatcher_in(tmp_path: Path) -> None:
    """The set commit holds SQLite's write lock for one slice of customers at a time. With
    slices of 250,000 customers whatever the first stage writes, a playbook of three actions
    (task, points, tag) held it 11.3 s per slice on the review machine, past the busy_timeout
    (10 s) of a `retain dispatch` in another process, whose claim (or the record of what it
    has just sent) then fails with "database is locked" (the per-customer commit releases it
    every 500 customers: longest hold 0.2 s). 500,000 customers; a dispatcher claims all along
    the run with the default busy_timeout."""
    url = f"sqlite:///{tmp_path / 'retain.db'}"
    db = open_store(url)
    inactive_base(db, 500_000)
    pb = playbook(tmp_path, "inactive: { days: 30 }",
                  actions=THREE.format(title="Call {{ customer.name }}"))
    reports: list[Any] = []
    thread = threading.Thread(target=lambda: reports.append(
        run_cycle(db, [pb], LATER, Settings(), dispatch=False)))
    dispatcher = open_store(url)  # another process's engine in production
    failures: list[str] = []
    thread.start()
    try:
        while thread.is_alive():
            try:
                claim_due(dispatcher, "worker-1", LATER, 1)
            except sa.exc.OperationalError as exc:  # "database is locked" after 10 s
                failures.append(str(exc.orig))
            time.sleep(0.05)
    finally:
        thread.join(600)
    assert reports[0].playbooks[pb.id].entered == 500_000
    dispatcher.dispose()
    db.dispose()
    assert failures == []


def test_postgresql_a_name_changed_by_a_sync_during_the_commit_is_not_written_unchecked(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL (READ COMMITTED) each statement of the set commit sees what other
    transactions committed before it: a sync that changes a name between the enrollments'
    statement (which judged the title safe) and the payloads' statement (which prints it) had
    its new name written unchecked, a line break in a task title included (what Jinja refuses
    as header injection). The per-customer commit renders one read of the customer."""
    db = open_store(pg_url)
    _sync(db, customer("c0", name="Ann"))
    pb = playbook(tmp_path, "inactive: { days: 30 }",
                  actions='  - task: { title: "Call {{ customer.name }}" }\n')
    payloads = set_commit._payloads
    syncs: list[threading.Thread] = []

    def sync_meanwhile(*args: Any) -> Any:  # another process syncs customers meanwhile
        syncs.append(threading.Thread(target=_sync, args=(db, customer(
            "c0", name="Ann\nBcc: x@evil.example"))))
        syncs[0].start()
        syncs[0].join(1.0)  # done, or waiting for this commit's locks
        return payloads(*args)

    monkeypatch.setattr(set_commit, "_payloads", sync_meanwhile)
    run_cycle(db, [pb], AS_OF, Settings(), dispatch=False)
    syncs[0].join(30)
    with db.connect() as connection:
        titles = {row.status: row.payload.get("title") for row in connection.execute(
            select_actions())}
    assert titles in ({st.PLANNED: "Call Ann"}, {st.DEAD: None}), titles
    db.dispose()


def test_a_set_commit_in_slices_commits_the_dry_run_plan(db: sa.Engine, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The set commit by slices of customers (at most MAX_ROWS a transaction on SQLite): several rows per
    customer (an event trigger) stay in one slice, holdout included, and it writes what the
    planner plans."""
    monkeypatch.setattr(set_commit, "MAX_ROWS", 10)  # 2 customers: 1 + 2 actions x 2 rows
    _sync(db, *(customer(f"c{i}", name=f"N{i}") for i in range(7)))
    add_events(db, *((f"e{i}-{j}", f"c{i}", "purchase", ago(days=1 + j), {"amount": 10})
                     for i in range(7) for j in range(i % 3 + 1)))
    pb = playbook(tmp_path, "event: { type: purchase, lookback: 30d }", more="holdout: 0.3\n",
                  actions='  - task: { title: "Call {{ customer.name }}" }\n'
                          '  - points: { amount: 5, reason: hi }\n')
    expected = _planned(db, pb)
    assert len(expected[0]) == 13 and any(row[3] for row in expected[0])
    report = run_cycle(db, [pb], AS_OF, Settings(), dispatch=False)
    assert _committed(db) == expected
    line = report.playbooks[pb.id]
    assert (line.entered, line.holdout, sum(line.committed.values())) == (
        13, sum(1 for row in expected[0] if row[3]), len(expected[1]))


def test_postgresql_a_sync_in_progress_neither_waits_nor_deadlocks_the_set_commit(
        pg_url: str, tmp_path: Path) -> None:
    """A sync holds customer c1 (updated, not yet committed) and then updates c0. The set
    commit locks the customers it prints FOR SHARE: waiting for c1 while holding c0 would
    deadlock with the sync. Skipped instead, c1 is planned per customer in the same run."""
    db = open_store(pg_url)
    _sync(db, customer("c0", name="Ann"), customer("c1", name="Bo"))
    pb = playbook(tmp_path, "inactive: { days: 30 }",
                  actions='  - task: { title: "Call {{ customer.name }}" }\n')
    expected = _planned(db, pb)
    elsewhere = open_store(pg_url)  # the sync, in another process
    syncing = elsewhere.connect()
    transaction = syncing.begin()
    syncing.execute(customers.update().where(customers.c.customer_id == "c1")
                    .values(segment="gold"))
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(run_cycle(db, [pb], AS_OF, Settings(), dispatch=False))
        except sa.exc.DBAPIError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(5)
    try:
        syncing.execute(customers.update().where(customers.c.customer_id == "c0")
                        .values(segment="gold"))
        transaction.commit()
    finally:
        syncing.close()
        elsewhere.dispose()
        thread.join(60)
    assert not isinstance(outcome[0], Exception), outcome[0]
    assert _committed(db) == expected
    assert outcome[0].playbooks[pb.id].entered == 2
    db.dispose()


class StampedTask(TaskConnector):
    """A third party's task that also stamps the customer's address (a subclass that changes
    what `plan`, hence `payload`, gives, and inherits `payload_template`).

    ```yaml
    - stamped_task: { title: "Call {{ customer.name }}" }
    ```
    """

    kind = "stamped_task"

    def plan(self, params: Any, render: Any, render_file: Any, due_at: Any) -> dict[str, Any]:
        """The task, and whom it is about."""
        return {**super().plan(params, render, render_file, due_at),
                "about": render("{{ customer.email }}")}


@pytest.fixture
def stamped() -> Any:
    register_connector(StampedTask)
    yield StampedTask
    unregister_connector(StampedTask.kind)


def test_a_connector_that_changes_payload_without_its_own_template_is_planned_per_customer(
        db: sa.Engine, tmp_path: Path, stamped: Any) -> None:
    """`payload_template` must give exactly `payload`; a subclass that changes `plan` or
    `payload` (a connector installed by a third party) inherited its parent's, and the set
    commit wrote the parent's payload: no `about` field."""
    _sync(db, customer("c0", name="Ann", email="ann@example.com"))
    pb = playbook(tmp_path, "inactive: { days: 30 }",
                  actions='  - stamped_task: { title: "Call {{ customer.name }}" }\n')
    expected = _planned(db, pb)
    run_cycle(db, [pb], AS_OF, Settings(), dispatch=False)
    assert _committed(db) == expected


TRIGGERS = [
    ("inactive: { days: 30 }", []),
    ("negative_feedback: { max_score: 6 }", []),
    ("event: { type: purchase, where: [{ amount: { gt: 5 } }], lookback: 30d }", []),
    ("date: { field: birthday, lookback: 3d }", []),
    ('schedule: { cron: "0 8 * * *" }', ["country: { eq: SE }"]),
    ("segment: {}", ["segment: { eq: gold }"]),
    ("inactive: { days: 30 }", ["events: { type: purchase, within: 90d, count: { eq: 0 } }"]),
]


@pytest.mark.parametrize(("trigger", "when"), TRIGGERS, ids=lambda v: str(v)[:20])
@pytest.mark.parametrize("as_of", [AS_OF, AS_OF - timedelta(days=2)], ids=["now", "historical"])
def test_every_trigger_in_sql_commits_the_dry_run_plan(
        db: sa.Engine, tmp_path: Path, trigger: str, when: list[str], as_of: datetime,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each trigger kind, now and as of an earlier time (facts derived from events), through
    the set commit (slices of 2 customers on SQLite, one chained statement on PostgreSQL): what
    the planner plans."""
    monkeypatch.setattr(set_commit, "MAX_ROWS", 6)  # 2 customers: 1 + 1 action x 2 rows
    _sync(db, *(customer(f"c{i}", name=f"N{i}", country="SE", segment="gold",
                         birthday=(as_of - timedelta(days=1)).date().isoformat())
                for i in range(7)))  # c5, c6: no events, inactive
    add_events(db, *((f"e{i}-{j}", f"c{i}", kind, as_of - timedelta(hours=12 + 24 * j), props)
                     for i in range(4) for j, (kind, props) in enumerate(
                         [("feedback", {"score": 3}), ("purchase", {"amount": 10})][i % 2:])))
    add_events(db, ("late", "c4", "visit", AS_OF - timedelta(hours=1), {}))
    pb = playbook(tmp_path, trigger, when=when, more="holdout: 0.25\n",
                  actions='  - task: { title: "Call {{ customer.name }}" }\n'
                          '  - wait: 1d\n  - points: { amount: 5, reason: hi }\n')
    with db.connect() as connection:
        live = make_plan(connection, [pb], as_of, show=0, complete=False, **LIVE)
    assert live.playbooks[0].entering > 0 and live.playbooks[0].set_plan is not None
    expected = _planned_at(db, pb, as_of)
    run_cycle(db, [pb], as_of, Settings(), dispatch=False)
    assert _committed(db) == expected


@pytest.mark.parametrize("name", ["Ann\nBcc: x@evil.example", "=?utf-8?q?a=0Ab?=",
                                  "y" * (SAFE_CHARS + 10)])
def test_a_title_sql_cannot_render_is_committed_per_customer(db: sa.Engine, tmp_path: Path,
                                                             name: str) -> None:
    """A first stage with one template (a task title, no note): `SetPlan.rest`, NOT of the one
    `safe` test, compiled as `NOT a AND b` (a PerDialect is not grouped), so a customer whose
    title has a line break or an encoded word was in neither the SQL commit nor the
    per-customer one: never enrolled by a live run, while the dry-run shows the dead action."""
    _sync(db, customer("odd", name=name), customer("ok", name="Bo"))
    pb = playbook(tmp_path, "inactive: { days: 30 }",
                  actions='  - task: { title: "Call {{ customer.name }}" }\n')
    expected = _planned(db, pb)
    assert {row[0]: row[4] for row in expected[1]} == {
        "odd": st.PLANNED if len(name) > SAFE_CHARS else st.DEAD, "ok": st.PLANNED}
    report = run_cycle(db, [pb], AS_OF, Settings(), dispatch=False)
    assert _committed(db) == expected
    assert report.playbooks[pb.id].entered == 2


def test_a_per_dialect_condition_keeps_its_parentheses_under_not(db: sa.Engine) -> None:
    """PerDialect spellings that are `a AND b`: SQLAlchemy negates a boolean element as one
    column (`NOT x`, `x = 0` on SQLite) and printed `NOT a AND b`."""
    both = sa.and_(sa.literal(1) == 2, sa.literal(3) == 4)  # false AND false
    with db.connect() as connection:
        assert connection.execute(sa.select(sa.not_(PerDialect(both, both)))).scalar_one()
