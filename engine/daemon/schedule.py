"""What the leader runs when: interval sweeps and cron ticks (RELIABILITY principle 6).

- **Sweeps**: every playbook that is not on a cron schedule is evaluated at start and then
  every `interval`: state triggers (`inactive`, `segment`, `date`) find who newly matches, and
  event triggers (`first_purchase`, `negative_feedback`, `event`) catch events synced or
  received while nobody listened, over their lookback window (once per event id: the
  occurrence key). The interval is `[daemon] interval` (5 minutes) unless the playbook sets
  its own `interval`.
- **Ticks**: a `schedule: {cron: ...}` playbook runs at each tick of its cron, in its zone
  (`ScheduleTrigger.last_tick`). Catch-up is bounded and explicit: only the LATEST tick is
  considered, and only while it is less than an hour late (`CATCH_UP`, the same bound its SQL
  applies), so a daemon that was down runs a missed tick once on start, never once per missed
  tick, and not at all after an hour.

Deciding is pure (`due`: the playbooks, `now`, what ran last) so it is tested with a given
clock; the writes are apart: `take_tick` records a tick under the unique (playbook, tick) key
with `INSERT ... ON CONFLICT DO NOTHING`, and only the replica whose insert took it runs it.
A tick is taken before its run: a crash in between loses that tick (at most one run per tick
is the stronger promise here; the next tick runs as usual).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import sqlalchemy as sa

from engine.format.playbook import Playbook
from engine.format.triggers import CATCH_UP, ScheduleTrigger
from engine.store.dialect import insert_ignoring
from engine.store.tables import ticks

DEFAULT_INTERVAL = timedelta(minutes=5)


@dataclass(frozen=True)
class Due:
    """One evaluation the leader should run now: a sweep of a playbook, or one cron tick of it
    (`at`: the tick; for a sweep, `now`)."""

    playbook_id: str
    kind: Literal["sweep", "tick"]
    at: datetime


def interval_of(playbook: Playbook, default: timedelta = DEFAULT_INTERVAL) -> timedelta:
    """How often the playbook is swept: its own `interval`, else the daemon's setting."""
    return playbook.document.interval or default


def sweep_due(playbook: Playbook, last: datetime | None, now: datetime,
              default: timedelta = DEFAULT_INTERVAL) -> bool:
    """A sweep is due at start (never swept by this leader) and once `interval` has passed."""
    return last is None or now - last >= interval_of(playbook, default)


def tick_due(trigger: ScheduleTrigger, last_run: datetime | None, now: datetime
             ) -> datetime | None:
    """The tick to run now, or None: the latest tick at or before `now`, unless it already ran
    (`last_run`: the latest tick recorded for the playbook) or is an hour late or more."""
    tick = trigger.last_tick(now)
    if now - tick >= CATCH_UP:
        return None
    if last_run is not None and last_run >= tick:
        return None
    return tick


def due(playbooks: Iterable[Playbook], now: datetime, swept: Mapping[str, datetime],
        ticked: Mapping[str, datetime], default: timedelta = DEFAULT_INTERVAL) -> list[Due]:
    """Everything to run at `now`, in playbook order: `swept` is when this leader last swept
    each playbook (empty at start), `ticked` the latest tick recorded per playbook
    (`last_ticks`). Disabled playbooks run never."""
    found = []
    for playbook in playbooks:
        if not playbook.document.enabled:
            continue
        trigger = playbook.trigger
        if isinstance(trigger, ScheduleTrigger):
            tick = tick_due(trigger, ticked.get(playbook.id), now)
            if tick is not None:
                found.append(Due(playbook.id, "tick", tick))
        elif sweep_due(playbook, swept.get(playbook.id), now, default):
            found.append(Due(playbook.id, "sweep", now))
    return found


# --- the writes ------------------------------------------------------------------------------


def last_ticks(connection: sa.Connection) -> dict[str, datetime]:
    """The latest tick recorded per playbook, by any replica."""
    rows = connection.execute(sa.select(ticks.c.playbook_id, sa.func.max(ticks.c.tick))
                              .group_by(ticks.c.playbook_id))
    return {playbook_id: tick for playbook_id, tick in rows}  # max() keeps the column's type


def take_tick(connection: sa.Connection, playbook_id: str, tick: datetime, holder: str,
              epoch: int, now: datetime) -> bool:
    """Record that `holder` runs `tick` of the playbook; True when this insert took it, False
    when the tick was already recorded (another replica, or a restart, ran it). Run it in the
    fenced transaction of the leader (engine/daemon/leader.py `fence`) so a deposed leader
    takes no tick."""
    taken = connection.execute(
        insert_ignoring(ticks, connection.dialect, ["playbook_id", "tick"])
        .values(playbook_id=playbook_id, tick=tick, holder=holder, epoch=epoch, ran_at=now)
        .returning(ticks.c.id)).scalar()
    return taken is not None
