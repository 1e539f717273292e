"""The leader lease and its fence (engine/daemon/leader.py), on SQLite and PostgreSQL.

A given clock (`now=`) stands in for time passing: nothing here sleeps or times anything.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_evaluate_triggers import AS_OF, add_customers, customer, playbook

from engine.config import Settings
from engine.daemon.leader import SCHEDULER, acquire_or_renew, fence, fence_for, release
from engine.errors import NotLeader, StoreError
from engine.outbox.commit import commit_playbook
from engine.outbox.run import run_cycle
from engine.plan.build import make_plan
from engine.store.tables import actions, enrollments

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)  # real-clock instants, unrelated to AS_OF
TTL = timedelta(seconds=15)


def test_acquire_renew_expire_takeover(db: sa.Engine) -> None:
    assert acquire_or_renew(db, SCHEDULER, "a", TTL, now=T0) == 1
    assert acquire_or_renew(db, SCHEDULER, "b", TTL, now=T0 + timedelta(seconds=5)) is None
    # the holder renews and keeps its epoch; the renewal moves the end of the lease
    assert acquire_or_renew(db, SCHEDULER, "a", TTL, now=T0 + timedelta(seconds=10)) == 1
    assert acquire_or_renew(db, SCHEDULER, "b", TTL, now=T0 + timedelta(seconds=20)) is None
    # a runs out (last renewed at +10 s, lease to +25 s): b takes over at epoch 2
    assert acquire_or_renew(db, SCHEDULER, "b", TTL, now=T0 + timedelta(seconds=25)) == 2
    assert acquire_or_renew(db, SCHEDULER, "a", TTL, now=T0 + timedelta(seconds=26)) is None
    # released on a clean stop: the next replica takes it at once, at epoch 3
    assert release(db, SCHEDULER, "b", now=T0 + timedelta(seconds=27))
    assert acquire_or_renew(db, SCHEDULER, "a", TTL, now=T0 + timedelta(seconds=27)) == 3


def test_an_expired_lease_retaken_by_its_own_holder_is_a_new_term(db: sa.Engine) -> None:
    assert acquire_or_renew(db, SCHEDULER, "a", TTL, now=T0) == 1
    assert acquire_or_renew(db, SCHEDULER, "a", TTL, now=T0 + timedelta(minutes=1)) == 2


def test_fence_passes_for_the_leader_and_names_the_new_one_otherwise(db: sa.Engine) -> None:
    acquire_or_renew(db, SCHEDULER, "a", TTL, now=T0)
    with db.begin() as connection:
        fence(connection, SCHEDULER, "a", 1, now=T0 + timedelta(seconds=1))
    acquire_or_renew(db, SCHEDULER, "b", TTL, now=T0 + timedelta(seconds=16))
    with db.begin() as connection, pytest.raises(NotLeader, match="b leads at epoch 2"):
        fence(connection, SCHEDULER, "a", 1, now=T0 + timedelta(seconds=17))
    with db.begin() as connection, pytest.raises(NotLeader, match="ran out"):
        fence(connection, SCHEDULER, "b", 2, now=T0 + timedelta(minutes=5))
    assert issubclass(NotLeader, StoreError)


def test_a_deposed_leaders_commit_is_rolled_back_whole(db: sa.Engine, tmp_path: Path) -> None:
    """Leader a (epoch 1) is replaced by b (epoch 2) before it commits its plan: the fence in
    the committing transaction refuses, and not a row of the cycle is written."""
    add_customers(db, customer("a1"), customer("a2"))
    pb = playbook(tmp_path, "segment: {}")
    assert acquire_or_renew(db, SCHEDULER, "a", timedelta(hours=1)) == 1
    with db.begin() as connection:  # a stalled past its lease; b took over
        connection.execute(sa.update(sa.table("daemon_leader", sa.column("holder"),
                                              sa.column("epoch")))
                           .values(holder="b", epoch=2))
    with pytest.raises(NotLeader):
        run_cycle(db, [pb], AS_OF, Settings(), dispatch=False,
                  fence=fence_for(SCHEDULER, "a", 1))
    with db.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(enrollments)
                                  ).scalar_one() == 0
        assert connection.execute(sa.select(sa.func.count()).select_from(actions)
                                  ).scalar_one() == 0
    report = run_cycle(db, [pb], AS_OF, Settings(), dispatch=False,
                       fence=fence_for(SCHEDULER, "b", 2))  # b's lease is still running
    assert report.playbooks["pb"].entered == 2


@pytest.mark.parametrize("trigger", ["segment: {}", "inactive: { days: 30 }"])
def test_the_plan_commit_itself_is_fenced(db: sa.Engine, tmp_path: Path, trigger: str) -> None:
    """The fence runs inside the transactions of commit_playbook (set-based and per-batch)."""
    add_customers(db, customer("a1"), customer("a2"))
    pb = playbook(tmp_path, trigger)
    assert acquire_or_renew(db, SCHEDULER, "b", timedelta(hours=1)) == 1
    with db.connect() as reading:
        plan = make_plan(reading, [pb], AS_OF, show=0, complete=False)
        with pytest.raises(NotLeader):
            commit_playbook(db, plan.playbooks[0], AS_OF, fence_for(SCHEDULER, "a", 1))
        reading.rollback()
    with db.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(enrollments)
                                  ).scalar_one() == 0


def test_a_renewal_that_waited_behind_a_fenced_commit_counts_from_when_it_got_the_row(
        db: sa.Engine) -> None:
    """The leader's renewal (keep_lease) waits while its own long commit holds the lease row
    (the fence locks it). When it gets the row, the lease it renews must run from then: the end
    counted from before the wait was already past (epoch kept, lease run out), so the loop
    believed it led while every next fence refused ("ran out") and the cycle rolled back."""
    import threading
    import time

    from engine.clock import aware_utc, utcnow
    from engine.store.tables import leaders
    from engine.store.txn import writing

    ttl = timedelta(seconds=1)
    epoch = acquire_or_renew(db, SCHEDULER, "a", ttl)
    assert epoch == 1
    locked = threading.Event()

    def long_commit() -> None:
        with writing(db) as connection:
            fence(connection, SCHEDULER, "a", epoch)
            locked.set()
            time.sleep(1.5)  # longer than the TTL, the row locked all along

    thread = threading.Thread(target=long_commit)
    thread.start()
    assert locked.wait(10)
    held = acquire_or_renew(db, SCHEDULER, "a", ttl)  # waits for the commit
    got_at = utcnow()
    thread.join()
    with db.connect() as connection:
        until = connection.execute(sa.select(leaders.c.lease_until)).scalar_one()
    assert held == epoch  # asked while running; the row was its own commit's meanwhile
    assert aware_utc(until) > got_at, "the renewal left a lease that had already run out"
