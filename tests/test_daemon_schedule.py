"""What the leader runs when (engine/daemon/schedule.py): pure decisions at a given clock, and
the tick recorded once under its unique key on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from test_evaluate_triggers import playbook

from engine.config import load_settings
from engine.daemon.schedule import DEFAULT_INTERVAL, Due, due, last_ticks, take_tick

MONDAY_9 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)  # a tick of "0 9 * * 1" in UTC
CRON = 'schedule: { cron: "0 9 * * 1", timezone: UTC }'


def test_a_tick_runs_once_and_a_missed_tick_under_an_hour_late_runs_on_start(
        tmp_path: Path) -> None:
    pb = playbook(tmp_path, CRON)
    assert due([pb], MONDAY_9, {}, {}) == [Due("pb", "tick", MONDAY_9)]
    late = MONDAY_9 + timedelta(minutes=59)  # the daemon was down at 9:00
    assert due([pb], late, {}, {}) == [Due("pb", "tick", MONDAY_9)]
    assert due([pb], late, {}, {"pb": MONDAY_9}) == []  # it ran: never twice
    assert due([pb], MONDAY_9 + timedelta(hours=1), {}, {}) == []  # an hour late: skipped
    # down for three weeks: only the latest tick is considered, never one per missed tick
    assert due([pb], MONDAY_9 + timedelta(weeks=3, minutes=5), {}, {"pb": MONDAY_9}) == [
        Due("pb", "tick", MONDAY_9 + timedelta(weeks=3))]


def test_sweeps_at_start_then_every_interval_default_or_the_playbooks(tmp_path: Path) -> None:
    plain = playbook(tmp_path, "inactive: { days: 30 }", pid="plain")
    own = playbook(tmp_path, "first_purchase: { lookback: 30d }", pid="own", more="interval: 1h\n")
    now = MONDAY_9
    assert [d.playbook_id for d in due([plain, own], now, {}, {})] == ["plain", "own"]
    swept = {"plain": now, "own": now}
    assert due([plain, own], now + DEFAULT_INTERVAL - timedelta(minutes=1), swept, {}) == []
    assert due([plain, own], now + DEFAULT_INTERVAL, swept, {}) == [
        Due("plain", "sweep", now + DEFAULT_INTERVAL)]
    assert [d.playbook_id for d in due([plain, own], now + timedelta(hours=1), swept, {})] == [
        "plain", "own"]
    slow = timedelta(minutes=30)  # [daemon] interval
    assert due([plain], now + DEFAULT_INTERVAL, swept, {}, slow) == []


def test_the_daemon_interval_setting(tmp_path: Path) -> None:
    assert load_settings(tmp_path, env={}).daemon.interval == DEFAULT_INTERVAL
    (tmp_path / "retain.toml").write_text('[daemon]\ninterval = "15m"\nlease_ttl = 30\n')
    settings = load_settings(tmp_path, env={})
    assert (settings.daemon.interval, settings.daemon.lease_ttl) == (timedelta(minutes=15), 30)


def test_a_tick_is_recorded_once(db: sa.Engine) -> None:
    with db.begin() as connection:
        assert take_tick(connection, "pb", MONDAY_9, "a", 1, MONDAY_9)
    with db.begin() as connection:
        assert not take_tick(connection, "pb", MONDAY_9, "b", 2, MONDAY_9)
        assert take_tick(connection, "other", MONDAY_9, "b", 2, MONDAY_9)
    with db.connect() as connection:
        assert last_ticks(connection) == {"pb": MONDAY_9, "other": MONDAY_9}
