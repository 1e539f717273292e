"""The daemon's loop: Retain running until stopped (docs/DAEMON.md).

Four tasks share one event loop, with the HTTP API served beside them:

- **sweep** (the replica holding the scheduler lease, engine/daemon/leader.py): each playbook
  evaluated on its interval, schedule playbooks at their ticks (engine/daemon/schedule.py), by
  the same cycle as `retain run --no-dispatch` at the real clock (versions, goals, exits,
  memberships, the plan committed, waits resumed), fenced by the lease's epoch; between sweeps,
  waits that ended are resumed every beat; the RFM scores refreshed every hour in small
  transactions.
- **react**: customers touched by events that came through the API are evaluated at once
  against the event-triggered playbooks, for those customers only (never a rescan of everyone);
  any replica may, since every write is keyed.
- **dispatch**: the outbox delivered continuously, woken at once by a commit of this process and
  every second otherwise (another replica's commits, retries and waits coming due).
- **reload**: the playbook files watched; a valid new version is used from the next evaluation,
  an invalid file is logged with file:line:col and its old version keeps running.

Blocking database work runs in threads (`asyncio.to_thread`), so the API keeps answering while a
cycle runs. Business time is the real clock: the daemon has no `--as-of`.

Stopping (SIGTERM or SIGINT): nothing new is claimed or evaluated; sends in flight get the grace
period to finish and be recorded; what was claimed and not sent is put back; exit 0. A second
signal exits at once (what it held comes back when its lease runs out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.clock import utcnow
from engine.daemon.leader import SCHEDULER, acquire_or_renew, fence_for, release
from engine.daemon.schedule import DEFAULT_INTERVAL, due, last_ticks, take_tick
from engine.errors import NotLeader
from engine.format.playbook import Playbook
from engine.format.triggers import EventTriggerBase
from engine.format.validation import load_playbooks, templates_dir
from engine.outbox.dispatch import default_worker
from engine.outbox.record import RELEASED, Outcome
from engine.outbox.run import RunReport
from engine.store.status import SENT
from engine.store.txn import writing

log = logging.getLogger("retain.daemon")
WAKE_EVERY = 1.0
"""Seconds between dispatch passes when nothing in this process committed (other replicas'
commits, retries and waits coming due are found this way)."""
WATCH_EVERY = 1.0
"""Seconds between looks at the playbook files."""
REACT_WINDOW = 0.005
"""Seconds the reaction waits after the first event for others to join it (one plan for all)."""


@dataclass
class Timing:
    """What the command line sets (the rest is `[daemon]` in docs/CONFIG.md)."""

    rfm_every: timedelta = timedelta(hours=1)
    grace: float = 20.0


@dataclass
class Library:
    """The playbooks in use, and the file each came from (a reload keeps an invalid file's)."""

    paths: list[Path]
    playbooks: list[Playbook] = field(default_factory=list)
    signature: tuple[tuple[str, int, int], ...] = ()
    loaded: bool = False

    def enabled(self) -> list[Playbook]:
        return [p for p in self.playbooks if p.document.enabled]

    def event_triggered(self) -> list[Playbook]:
        return [p for p in self.enabled() if isinstance(p.trigger, EventTriggerBase)]

    def changed(self) -> bool:
        """Whether a playbook or template file was added, removed or written since the last
        load (by name, size and modification time)."""
        return self.look() != self.signature

    def look(self) -> tuple[tuple[str, int, int], ...]:
        """The playbook files and the files of their `templates/` folders, which sit beside
        the playbooks' folder in the `retain init` layout (outside `paths`: looking under the
        paths alone never saw a template edit)."""
        seen = []
        for root in self.paths:
            files = _files(root)
            folders = {found for f in files if (found := templates_dir(f)) is not None}
            files += [f for folder in sorted(folders) for f in _files(folder) if f not in files]
            for path in files:
                try:
                    stat = path.stat()
                except OSError:
                    continue
                seen.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(seen)

    def load(self) -> list[str]:
        """Load the files again; returns the problems (each `file:line:col: ...`). The playbooks
        of a file with problems stay as they were; a new valid version replaces its old one."""
        signature = self.look()
        result = load_playbooks(self.paths)
        # a file still there that gave no playbook is broken, whether the problem is located
        # in it or in a template it uses (then the issue names the template file, not it)
        present = {str(path) for path in result.files}
        loaded = {p.file for p in result.playbooks} | {p.id for p in result.playbooks}
        kept = [p for p in self.playbooks if p.file in present
                and p.file not in loaded and p.id not in loaded]
        self.playbooks = sorted([*result.playbooks, *kept], key=lambda p: p.id)
        self.signature, self.loaded = signature, True
        return [str(issue) for issue in result.issues]


def _files(root: Path) -> list[Path]:
    """A file, or the files under a folder (hidden ones left out), sorted."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


class Daemon:
    """One daemon process: its tasks, its stop signal and what it tells the API."""

    def __init__(self, writer: sa.Engine, settings: Any, paths: list[Path], *,
                 timing: Timing | None = None, holder: str | None = None) -> None:
        self.writer, self.settings = writer, settings
        self.library = Library(paths)
        self.timing = timing or Timing()
        self.holder = holder or default_worker()  # holds the leases and the claims
        self.stopping = threading.Event()  # read by dispatch passes in their threads too
        self.stopped = asyncio.Event()
        self.touched: set[str] = set()
        self.react_wanted = asyncio.Event()
        self.dispatch_wanted = asyncio.Event()
        self.last_rfm: datetime | None = None
        self.epoch: int | None = None  # the leader's term this replica holds, if it leads
        daemon = getattr(settings, "daemon", None)
        self.interval: timedelta = getattr(daemon, "interval", None) or DEFAULT_INTERVAL
        self.ttl = timedelta(seconds=float(getattr(daemon, "lease_ttl", None) or 15.0))
        self.beat = min(5.0, self.ttl.total_seconds() / 3)  # renewals well inside the lease
        self.claim_lease = timedelta(seconds=float(getattr(daemon, "claim_lease", None) or 60.0))
        self.signals = 0
        from engine.daemon.metrics import Metrics

        self.metrics = Metrics(writer)

    # -- what the API calls -------------------------------------------------------------

    def ready(self) -> bool:
        """The playbooks are loaded and the daemon is not stopping (`/readyz` also asks the
        database)."""
        return self.library.loaded and not self.stopping.is_set()

    def on_ingested(self, customer_ids: set[str] | list[str]) -> None:
        """Events arrived for these customers: evaluate them at once."""
        if customer_ids:
            self.touched.update(customer_ids)
            self.react_wanted.set()

    # -- running ------------------------------------------------------------------------

    def request_stop(self, why: str = "stop requested") -> None:
        """The first signal stops gracefully; a second one exits at once."""
        self.signals += 1
        if self.signals > 1:
            log.warning("second signal: exiting now; claimed actions come back after their lease")
            os._exit(1)
        log.info("stopping: %s (in-flight sends get %.0f s)", why, self.timing.grace)
        self.stopping.set()
        self.stopped.set()
        self.react_wanted.set()
        self.dispatch_wanted.set()

    async def run(self, server: Any | None = None) -> int:
        """Run until stopped, serving `server` (a uvicorn.Server) beside the work; the server
        answers through the grace period (`/readyz` then says 503) and exits last. Returns the
        exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, signal.Signals(sig).name)
        problems = await asyncio.to_thread(self.library.load)
        for problem in problems:
            log.error("playbook not loaded: %s", problem)
        log.info("daemon %s started: %d playbook(s)", self.holder, len(self.library.enabled()))
        workers = {
            "sweep": asyncio.create_task(self.sweep()),
            "react": asyncio.create_task(self.react()),
            "reload": asyncio.create_task(self.reload()),
        }
        dispatcher = asyncio.create_task(self.dispatch())
        serving = asyncio.create_task(server.serve()) if server is not None else None
        await self.stopped.wait()
        for task in workers.values():
            task.cancel()
        await asyncio.gather(*workers.values(), return_exceptions=True)
        await self.step_down()  # another replica may lead at once, not after the TTL
        try:
            await asyncio.wait_for(asyncio.shield(dispatcher), self.timing.grace)
        except TimeoutError:
            log.warning("in-flight sends did not finish within %.0f s; their actions come back "
                        "after their lease", self.timing.grace)
            dispatcher.cancel()
            await asyncio.gather(dispatcher, return_exceptions=True)
        if server is not None and serving is not None:
            server.should_exit = True
            await serving
        log.info("daemon %s stopped", self.holder)
        return 0

    async def sweep(self) -> None:
        """While this replica leads: the playbooks whose interval or cron tick is due, one
        cycle (commit only: dispatch runs apart), fenced by the leader's epoch; waits that
        ended resumed; the RFM scores on their own interval. Not leading: try again each beat."""
        swept: dict[str, datetime] = {}
        while not self.stopping.is_set():
            try:
                await self.lead(swept)
            except NotLeader as exc:  # deposed mid-cycle: what it committed rolled back
                log.warning("%s", exc)
                self.epoch = None
            except Exception:  # noqa: BLE001  (logged; the next beat tries again)
                log.exception("evaluation cycle failed")
            await self._sleep(self.beat)

    async def step_down(self) -> None:
        """A clean stop ends the leader lease now, so another replica leads at its next beat
        instead of after the TTL. Run by `run` once the sweep task is cancelled; a cycle still
        committing in its thread then fails its fence and rolls back, which is safe. A release
        that fails (the database away at that moment) is logged, not raised: raising here left
        `run` before the grace period, so the sends in flight were not waited for."""
        if self.epoch is None:
            return
        try:
            await asyncio.to_thread(release, self.writer, SCHEDULER, self.holder)
        except Exception:  # noqa: BLE001  (the lease then runs out after its TTL)
            log.exception("releasing the leader lease failed; it runs out in %.0f s",
                          self.ttl.total_seconds())
        else:
            log.info("leader lease released at epoch %d", self.epoch)
        self.epoch = None

    async def lead(self, swept: dict[str, datetime]) -> None:
        """One beat of the scheduler: renew (or take) the lead, then run what is due."""
        epoch = await asyncio.to_thread(acquire_or_renew, self.writer, SCHEDULER, self.holder,
                                        self.ttl)
        if epoch != self.epoch:
            swept.clear()  # a new term sweeps everything at once: the last leader's state is gone
            log.info("%s", f"leading the schedule at epoch {epoch}" if epoch is not None
                     else "another replica leads the schedule; this one reacts and dispatches")
            self.epoch = epoch
        if epoch is None:
            return
        keeper = asyncio.create_task(self.keep_lease(epoch))
        try:
            await self.run_due(swept, epoch)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def keep_lease(self, epoch: int) -> None:
        """Renew the lead every beat while a cycle runs: a sweep over many customers can take
        longer than the TTL, and a lease that ran out meanwhile made its fence refuse the commit
        at every term, so nothing was ever committed. Ends when the lead is lost (the cycle's
        fence then rolls it back)."""
        while True:
            await asyncio.sleep(self.beat)
            try:
                held = await asyncio.to_thread(acquire_or_renew, self.writer, SCHEDULER,
                                               self.holder, self.ttl)
            except Exception:  # noqa: BLE001  (the next beat tries again; the fence decides)
                log.exception("renewing the leader lease failed")
                continue
            if held != epoch:
                return

    async def run_due(self, swept: dict[str, datetime], epoch: int) -> None:
        """What is due in this term: the cycle of due playbooks and ticks, or the waits that
        ended; then the RFM scores when their interval came."""
        fence = fence_for(SCHEDULER, self.holder, epoch)
        now, playbooks = utcnow(), self.library.enabled()
        ticked = await asyncio.to_thread(self._last_ticks)
        todo = due(playbooks, now, swept, ticked, self.interval)
        chosen = {d.playbook_id for d in todo if d.kind == "sweep"}
        for tick in (d for d in todo if d.kind == "tick"):
            if await asyncio.to_thread(self._take_tick, tick.playbook_id, tick.at, epoch, now):
                chosen.add(tick.playbook_id)
        if chosen:
            from engine.outbox.run import run_cycle

            report = await asyncio.to_thread(run_cycle, self.writer,
                                             [p for p in playbooks if p.id in chosen], now,
                                             self.settings, dispatch=False, fence=fence)
            self.count(report)
            swept.update(dict.fromkeys(chosen, now))
            self.metrics.last_cycle.set(now.timestamp())
            self.dispatch_wanted.set()
        else:
            from engine.outbox.run import resume_waits

            if sum((await asyncio.to_thread(resume_waits, self.writer, playbooks, now,
                                            self.settings, fence=fence)).values()):
                self.dispatch_wanted.set()
        await self.refresh_rfm()

    def _last_ticks(self) -> dict[str, datetime]:
        with self.writer.connect() as connection:
            return last_ticks(connection)

    def _take_tick(self, playbook_id: str, tick: datetime, epoch: int, now: datetime) -> bool:
        with writing(self.writer) as connection:
            fence_for(SCHEDULER, self.holder, epoch)(connection)
            return take_tick(connection, playbook_id, tick, self.holder, epoch, now)

    async def refresh_rfm(self) -> None:
        """The RFM scores, every `rfm_every`: from the last ranking in one short transaction
        (the customers who moved and those they pushed across a bound), or, when everyone must
        be ranked, in small transactions so ingest and dispatch never wait for the whole
        ranking (engine/sync/rfm.py)."""
        from engine.sync.rfm import refresh_rfm_live

        now = utcnow()
        if self.last_rfm is not None and now - self.last_rfm < self.timing.rfm_every:
            return
        try:
            changed = await asyncio.to_thread(refresh_rfm_live, self.writer)
        except Exception:  # noqa: BLE001  (logged; the next interval tries again)
            log.exception("refreshing the RFM scores failed")
            return
        self.last_rfm = now
        log.info("RFM scores refreshed: %d customer(s) changed", changed)

    async def react(self) -> None:
        """Evaluate the event-triggered playbooks for the customers events just touched."""
        while not self.stopping.is_set():
            await self.react_wanted.wait()
            await asyncio.sleep(REACT_WINDOW)
            self.react_wanted.clear()
            customers, self.touched = sorted(self.touched), set()
            playbooks = self.library.event_triggered()
            if not customers or not playbooks or self.stopping.is_set():
                continue
            try:
                self.count(await asyncio.to_thread(react, self.writer, playbooks, customers,
                                                   utcnow(), self.settings))
            except Exception:  # noqa: BLE001  (logged; the sweep finds these customers too)
                log.exception("evaluating %d customer(s) after their events failed",
                              len(customers))
            else:
                self.dispatch_wanted.set()

    async def dispatch(self) -> None:
        """Deliver what is due, pass after pass, until stopped, on connections kept open from
        one pass to the next (closed when the daemon stops, or when one goes down)."""
        from engine.outbox.dispatch import dispatch_async, keep_open

        kept = keep_open()
        try:
            while not self.stopping.is_set():
                self.dispatch_wanted.clear()
                try:
                    await dispatch_async(self.writer, self.settings, utcnow(),
                                         worker=self.holder, stop=self.stopping,
                                         observe=self.observe, lease=self.claim_lease,
                                         kept=kept)
                except Exception:  # noqa: BLE001  (a database hiccup: logged, tried again)
                    log.exception("dispatch pass failed")
                await _wait(self.dispatch_wanted, WAKE_EVERY)
        finally:
            await kept.close()

    def count(self, report: RunReport) -> None:
        """A cycle's evaluations and enrollments, for `/metrics`."""
        for line in report.playbooks.values():
            self.metrics.evaluations.labels(line.id).inc()
            if line.entered:
                self.metrics.enrollments.labels(line.id).inc(line.entered)

    def observe(self, outcomes: list[Outcome]) -> None:
        """A dispatch batch's outcomes, for `/metrics`: by connector and status, and how long
        after it was due each sent action went out."""
        for outcome in outcomes:
            row = outcome.row
            if outcome.status == RELEASED:
                continue
            self.metrics.actions.labels(row.connector, outcome.status).inc()
            if outcome.status == SENT and outcome.finished_at and row.next_attempt_at:
                late = (outcome.finished_at - row.next_attempt_at).total_seconds()
                self.metrics.dispatch_latency.labels(row.connector).observe(max(0.0, late))

    async def reload(self) -> None:
        """Watch the playbook files; load them again when one changed."""
        while not self.stopping.is_set():
            await asyncio.sleep(WATCH_EVERY)
            if not await asyncio.to_thread(self.library.changed):
                continue
            problems = await asyncio.to_thread(self.library.load)
            for problem in problems:
                log.error("playbook change not used (the running version stays): %s", problem)
            log.info("playbooks reloaded: %s", ", ".join(
                f"{p.id}@{p.version}" for p in self.library.enabled()) or "none enabled")

    async def _sleep(self, seconds: float) -> None:
        await _wait(self.stopped, seconds)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` have passed."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def react(writer: sa.Engine, playbooks: list[Playbook], customer_ids: list[str],
          as_of: datetime, settings: Any) -> RunReport:
    """Plan and commit the event-triggered playbooks for these customers only."""
    from engine.outbox.run import run_cycle

    return run_cycle(writer, playbooks, as_of, settings, dispatch=False, customers=customer_ids)
