"""RELIABILITY 3, kill -9 during planning, on both databases: `retain run --no-dispatch` runs as
a process over a base large enough that its commit takes a few seconds, and is SIGKILLed in the
middle of it. Every enrollment then has all its stage-0 actions (no orphan enrollment, no action
without one), and a second run completes the rest: the totals equal what a dry-run plans.

Both commit paths: a playbook planned per customer commits batch by batch (killed once another
connection sees some of its enrollments: some are in, all complete); one the database plans by
itself commits by `INSERT ... SELECT`s, in one statement on PostgreSQL and one transaction per
slice of customers on SQLite (killed while its inserts run: none are in, or whole slices).

The base is written by SQL the way bench/bench_commit.py builds it, every customer inactive.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from live_support import Project, project

from engine.store import status as st
from engine.store.tables import actions, enrollments

__all__ = ["project"]  # fixture
AS_OF = datetime(2025, 1, 1, tzinfo=UTC)
CUSTOMERS = 30_000
PLAYBOOK = """trigger:
  inactive: { days: 30 }
actions:
  - task: { title: "Call {{ customer.name TITLE }}", assignee: retention, due_in: 2d }
  - points: { amount: 200, reason: winback bonus }
"""
PER_CUSTOMER = "| upper"  # a filter: the title is rendered by Jinja, customer by customer
IN_SQL = ""  # a plain title: the commit is set-based (engine/outbox/set_commit.py)


def inactive_base(engine: sa.Engine, n: int) -> None:
    """N customers, all last active 40-99 days before AS_OF, by one INSERT ... SELECT."""
    as_of = AS_OF.replace(tzinfo=None)
    if engine.dialect.name == "sqlite":
        series = f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) "
        last = "datetime(:as_of, '-' || (40 + i % 60) || ' days')"
        source = "FROM s"
    else:
        series = ""
        last = "CAST(:as_of AS timestamptz) - (40 + i % 60) * interval '1 day'"
        source = f"FROM generate_series(1, {n}) AS s(i)"
    with engine.begin() as connection:
        connection.execute(sa.text(
            f"{series}INSERT INTO customers (customer_id, email, name, created_at, tags, "
            "file_tags, tags_added, tags_removed, attributes, purchase_count, total_spent, "
            "points_balance, last_active_at) "
            "SELECT 'c' || i, 'c' || i || '@example.com', 'Customer ' || i, :start, '[]', "
            f"'[]', '[]', '[]', '{{}}', 0, 0, 0, {last} {source}"),
            {"as_of": as_of, "start": datetime(2020, 1, 1, tzinfo=UTC).replace(tzinfo=None)})
        connection.execute(sa.text("ANALYZE"))


def retain_process(url: str, *args: str, cwd: Path) -> subprocess.Popen[bytes]:
    """`retain --db URL ARGS` as its own process (the console script of this environment)."""
    script = Path(sys.executable).with_name("retain")
    command = [str(script)] if script.exists() else [
        sys.executable, "-c", "from cli.main import main; main()"]
    return subprocess.Popen([*command, "--db", url, *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "COLUMNS": "80"})


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def inserting(engine: sa.Engine) -> bool:
    """Whether a writer is in the middle of a transaction: on PostgreSQL one of the run's
    inserts is running; on SQLite the write lock is taken (probed without waiting)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            return bool(connection.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE "
                "'%INSERT INTO enrollments%' AND pid <> pg_backend_pid()")).scalar_one())
            # enrollments: the chained statement names them first; `INSERT INTO actions` comes
            # after the candidates' query, past the 1 kB of text pg_stat_activity keeps
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        raw.execute("PRAGMA busy_timeout=0")
        try:
            raw.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return True
        raw.execute("ROLLBACK")
        return False


@pytest.mark.parametrize("title", [PER_CUSTOMER, IN_SQL], ids=["per-customer", "in-sql"])
def test_kill_9_during_planning_leaves_no_orphans_and_the_next_run_completes(
        project: Project, title: str) -> None:
    project.playbook("winback", PLAYBOOK.replace(" TITLE", f" {title}" if title else ""))
    project.retain("migrate")
    engine = project.db()
    inactive_base(engine, CUSTOMERS if title else 5 * CUSTOMERS)
    as_of = AS_OF.strftime("%Y-%m-%dT%H:%M:%SZ")
    planned = project.json("dry-run", "--as-of", as_of, "--show", "0")["playbooks"][0]
    assert planned["entering"] == (CUSTOMERS if title else 5 * CUSTOMERS)

    process = retain_process(project.url, "run", "--no-dispatch", "--as-of", as_of,
                             cwd=project.root)
    deadline, held = time.monotonic() + 120, 0
    while process.poll() is None and time.monotonic() < deadline:
        if title:  # batches: some are committed
            if count(engine, enrollments):
                break
        else:  # one transaction: its inserts are running (the lock held for a while)
            held = held + 1 if inserting(engine) else 0
            if held >= 3:
                break
        time.sleep(0.02)
    still_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert still_running, "the run finished before it could be killed: make the base larger"
    assert process.returncode == -signal.SIGKILL

    entered = count(engine, enrollments)
    total = CUSTOMERS if title else 5 * CUSTOMERS
    if title:
        assert 0 < entered < total, entered  # killed in the middle of committing
    else:
        assert entered < total, entered  # killed inside a transaction: whole slices only
    with engine.connect() as connection:
        per_enrollment = connection.execute(
            sa.select(enrollments.c.id, sa.func.count(actions.c.id))
            .select_from(enrollments.outerjoin(actions, actions.c.enrollment_id
                                               == enrollments.c.id))
            .group_by(enrollments.c.id)).all()
        orphans = connection.execute(
            sa.select(sa.func.count()).select_from(actions).where(
                ~sa.exists().where(enrollments.c.id == actions.c.enrollment_id))).scalar_one()
    assert {n for _, n in per_enrollment} <= {2}  # every enrollment with both of its actions
    assert orphans == 0

    project.retain("run", "--no-dispatch", "--as-of", as_of)
    assert count(engine, enrollments) == planned["entering"] == total
    assert count(engine, actions) == 2 * total
    with engine.connect() as connection:
        statuses = dict(connection.execute(
            sa.select(actions.c.status, sa.func.count()).group_by(actions.c.status)).all())
    assert statuses == {st.PLANNED: 2 * total}
    again = project.json("run", "--no-dispatch", "--as-of", as_of)["playbooks"][0]
    assert (again["entered"], again["committed"]) == (0, {})
