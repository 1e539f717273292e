"""Scale-out guarantees in the database: one open segment membership per playbook and
customer, and schema migrations run once when two processes open a fresh database at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from test_evaluate_triggers import AS_OF, add_customers, customer, playbook

from engine.config import Settings
from engine.outbox.commit import StagePlan, _Rows
from engine.outbox.run import run_cycle
from engine.plan.planner import PlannedEnrollment
from engine.store.open import schema_revisions
from engine.store.tables import enrollments

REPO = Path(__file__).resolve().parent.parent


def _membership(customer_id: str, occurrence: str, *, membership: bool = True,
                left: bool = False) -> dict[str, object]:
    return {"playbook_id": "pb", "version": "v", "customer_id": customer_id,
            "occurrence_key": occurrence, "status": "completed", "entered_at": AS_OF,
            "membership": membership, "left_at": AS_OF if left else None}


def test_the_database_refuses_a_second_open_membership(db: sa.Engine) -> None:
    add_customers(db, customer("a"))
    with db.begin() as connection:
        connection.execute(enrollments.insert(), [_membership("a", "t1", left=True),
                                                  _membership("a", "t2")])
        # enrollments of other triggers are not memberships: any number per customer
        connection.execute(enrollments.insert(), [_membership("a", f"e{n}", membership=False)
                                                  for n in range(2)])
    with pytest.raises(IntegrityError), db.begin() as connection:
        connection.execute(enrollments.insert(), [_membership("a", "t3")])


def test_a_racing_evaluators_membership_insert_is_skipped(db: sa.Engine,
                                                          tmp_path: Path) -> None:
    """Replica 1 committed the segment edge at AS_OF; replica 2 evaluated a moment later (its
    occurrence key differs) and commits the same customers: no crash, no second enrollment."""
    add_customers(db, customer("a"), customer("b"))
    pb = playbook(tmp_path, "segment: {}")
    assert run_cycle(db, [pb], AS_OF, Settings(), dispatch=False).playbooks["pb"].entered == 2
    late = AS_OF.replace(minute=AS_OF.minute + 1)
    with db.begin() as connection:
        rows = _Rows(connection.dialect, pb, StagePlan(pb), late)
        inserted = rows.enrollments(connection, [
            PlannedEnrollment(c, late.isoformat(), False, None, ()) for c in ("a", "b")])
    assert inserted == {}
    with db.connect() as connection:
        open_ = connection.execute(sa.select(enrollments.c.customer_id, enrollments.c.membership)
                                   .where(enrollments.c.left_at.is_(None))).all()
    assert sorted(open_) == [("a", True), ("b", True)]


WAIT_AND_OPEN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.01)
    from engine.store.open import open_store
    open_store(sys.argv[1]).dispose()
""")


def test_two_processes_migrate_one_fresh_database_once(pg_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WAIT_AND_OPEN, pg_url, str(go)],
                              cwd=REPO, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    go.touch()  # both are polling for it: they migrate at the same moment
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT version_num FROM alembic_version"
                                              ).scalars().all() == [schema_revisions()[-1]]
            assert sa.inspect(connection).has_table("daemon_leader")
    finally:
        engine.dispose()
