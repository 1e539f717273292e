"""The dispatcher: claim what is due, send it through its connector, record every outcome.

One pass (`dispatch`) runs until nothing is due at `as_of` (or `limit` rows were taken, or
`stop` is set): claim rows with a lease (engine/outbox/claim.py) and judge what must not be sent
(engine/outbox/judge.py), in a thread, whenever fewer than a batch wait for a sender; send the
rest concurrently, up to each connector's `concurrency` (asyncio), each sender taking the next
row as soon as it is free (no batch barrier: a slow send holds back only its own sender);
heartbeat the leases of everything claimed and not yet recorded; and record every `batch`
outcomes in one transaction (engine/outbox/record.py), in a thread, while sends go on. The
payload was frozen at commit: nothing is rendered here, so a re-send after a crash is
byte-identical.

Outcomes: `Sent` -> `sent` (with its writes, and for email the `email_sent` facts);
`TransientError` -> `retrying` after a jittered exponential backoff (engine/outbox/backoff.py)
or the peer's `retry_after`, `dead` once the connector's attempts are used up;
`TransientError(connection=True)` -> that row retrying and the connector down for the pass
(engine/outbox/channel.py); `PermanentError` -> `dead`, the address suppressed when it says so;
any other exception -> transient, with its repr: a connector's bug never stops the loop.

Stopping (`stop` set, e.g. by SIGTERM), or a record that failed: sends in flight finish and are
recorded, rows claimed but not started are put back unchanged, nothing new is claimed
(RELIABILITY 4); a failed record is raised at the end.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import socket
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from connectors.base import Delivery, Sent
from engine.clock import iso, utcnow
from engine.errors import PermanentError, TransientError
from engine.outbox import backoff, judge
from engine.outbox.channel import Channel, KeptChannels
from engine.outbox.claim import (
    HEARTBEAT,
    LEASE,
    Claimed,
    claim_due,
    due_kinds,
    extend_leases,
)
from engine.outbox.handoff import quick_handoff
from engine.outbox.record import RELEASED, Outcome, record
from engine.plan.delivery import DeliveryRules
from engine.store.status import DEAD, DEFERRED, RETRYING, SENT, SKIPPED, SUPPRESSED

log = logging.getLogger(__name__)
BATCH = 256
"""Rows per claim and outcomes per record transaction; a new claim starts when fewer than this
many claimed rows wait for a sender."""


@dataclass
class DispatchReport:
    """What one pass did: outcome counts per (playbook, status), rows put back unsent (their
    connector went down, or the pass was stopping: they stay due), rows lost to another
    worker."""

    worker: str
    as_of: datetime
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    released: int = 0
    lost: int = 0
    stopped: bool = False

    def total(self, status: str) -> int:
        """How many rows ended with this outcome."""
        return sum(n for (_, outcome), n in self.counts.items() if outcome == status)

    def by_playbook(self) -> dict[str, dict[str, int]]:
        """{playbook: {outcome: count}}, sorted."""
        table: dict[str, dict[str, int]] = {}
        for (playbook, outcome), n in sorted(self.counts.items()):
            table.setdefault(playbook, {})[outcome] = n
        return table

    def to_json(self) -> dict[str, Any]:
        """The report as plain data (`retain dispatch --json`)."""
        outcomes = sorted({outcome for _, outcome in self.counts})
        return {"as_of": iso(self.as_of), "worker": self.worker, "stopped": self.stopped,
                "released": self.released, "lost": self.lost,
                "totals": {o: self.total(o) for o in outcomes},
                "playbooks": self.by_playbook()}


def default_worker() -> str:
    """host:pid:random, unique per dispatcher (two threads of one process differ too)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def dispatch(engine: sa.Engine, settings: Any, as_of: datetime, *, worker: str | None = None,
             limit: int | None = None, connectors: Mapping[str, Any] | None = None,
             stop: threading.Event | None = None, batch: int = BATCH,
             rng: random.Random | None = None, lease: timedelta = LEASE) -> DispatchReport:
    """Deliver everything due at `as_of`; see the module docstring. Blocking (asyncio inside).
    When nothing is due, one read answers: no event loop, no thread, no write lock."""
    due = due_kinds(engine, as_of)
    if not due:
        return DispatchReport(worker=worker or default_worker(), as_of=as_of)
    return asyncio.run(dispatch_async(engine, settings, as_of, worker=worker, limit=limit,
                                      connectors=connectors, stop=stop, batch=batch, rng=rng,
                                      lease=lease, due=due))


async def dispatch_async(engine: sa.Engine, settings: Any, as_of: datetime, *,
                         worker: str | None = None, limit: int | None = None,
                         connectors: Mapping[str, Any] | None = None,
                         stop: threading.Event | None = None, batch: int = BATCH,
                         rng: random.Random | None = None,
                         observe: Callable[[list[Outcome]], None] | None = None,
                         lease: timedelta = LEASE, kept: KeptChannels | None = None,
                         due: Collection[str] | None = None) -> DispatchReport:
    """`dispatch` for a caller already in an event loop (the daemon); `observe` is called with
    each batch of outcomes once recorded (the daemon's metrics). `lease` is how long a claim
    holds a row (the daemon's `[daemon] claim_lease`): how soon a crashed worker's rows come
    back; the heartbeat renews it every `heartbeat_every(lease)`. `kept` (from `keep_open`):
    the connectors and their open channels, carried from pass to pass. `due`: the kinds
    `due_kinds` just found, the only ones the first claim tries."""
    instances = kept.connectors if kept is not None else _instances(connectors)
    pass_ = _Pass(engine, settings, as_of, worker or default_worker(), instances,
                  stop, rng or random.Random(), max(1, batch))
    pass_.kept = kept
    pass_.observe = observe
    pass_.lease = lease
    pass_.due = due
    with quick_handoff():  # the database threads give the sends' loop the GIL back sooner
        return await pass_.run(limit)


_THREADS: list[ThreadPoolExecutor] = []
_THREADS_MADE = threading.Lock()
T = TypeVar("T")


async def in_thread(work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a pass's database work (claim, record, heartbeat) in the process's dispatch
    threads. Made once and shared by every pass: `asyncio.to_thread` used the loop's default
    executor, which each `asyncio.run` (a `retain run`'s pass, each run of `retain test`)
    made and tore down again, starting and joining a thread every pass (~1 ms, more than a
    small pass's database work); in the daemon it shares no threads with the cycles. At most
    three tasks of a pass run at once (claim, record, heartbeat): 32 threads serve ten passes
    together."""
    with _THREADS_MADE:
        if not _THREADS:
            _THREADS.append(ThreadPoolExecutor(max_workers=32,
                                               thread_name_prefix="retain-dispatch"))
    return await asyncio.get_running_loop().run_in_executor(
        _THREADS[0], functools.partial(work, *args, **kwargs))


def keep_open(connectors: Mapping[str, Any] | None = None) -> KeptChannels:
    """Connectors (the installed ones by default) whose channels stay open between passes;
    the caller closes them (`KeptChannels.close`)."""
    return KeptChannels(_instances(connectors))


def heartbeat_every(lease: timedelta) -> float:
    """Seconds between heartbeats for a claim `lease`: HEARTBEAT, or a sixth of a short lease,
    so five beats can fail (the database away for a moment) before a lease runs out and a row
    being sent is taken over by another worker."""
    return min(HEARTBEAT.total_seconds(), lease.total_seconds() / 6)


def _maximum(connector: Any) -> int:
    """The attempts a connector allows (`retry[0]`)."""
    return int(connector.retry[0])


def _instances(connectors: Mapping[str, Any] | None) -> dict[str, Any]:
    if connectors is None:
        from engine.format.registry import load_connectors

        connectors = load_connectors()
    return {kind: c() if isinstance(c, type) else c for kind, c in connectors.items()}


class _Pass:
    """The state of one dispatch pass."""

    def __init__(self, engine: sa.Engine, settings: Any, as_of: datetime, worker: str,
                 connectors: dict[str, Any], stop: threading.Event | None,
                 rng: random.Random, batch: int) -> None:
        self.engine, self.settings, self.as_of, self.worker = engine, settings, as_of, worker
        self.connectors, self.stop, self.rng, self.batch = connectors, stop, rng, batch
        self.observe: Callable[[list[Outcome]], None] | None = None
        self.channels: dict[str, Channel] = {}
        self.kept: KeptChannels | None = None  # channels that outlive the pass (the daemon)
        self.report = DispatchReport(worker=worker, as_of=as_of)
        self.queues: dict[str, deque[Claimed]] = {}  # claimed and judged, waiting for a sender
        self.arrived: dict[str, asyncio.Event] = {}  # rows queued for that connector, or fed
        self.senders: list[asyncio.Task[None]] = []
        self.hungry = asyncio.Event()  # the queues ran low: claim more
        self.fed = False  # nothing more will be queued
        self.held: set[int] = set()  # claimed, not recorded yet: the heartbeat keeps their leases
        self.finished: list[Outcome] = []  # outcomes not yet handed to the recorder
        self.recording: asyncio.Task[None] | None = None
        self.unrecorded = 0  # batches of outcomes handed to the recorder, not yet written
        self.failure: BaseException | None = None  # a record that failed: the pass ends
        self.released: set[int] = set()
        self.lease = LEASE  # how long a claim holds a row unless the heartbeat renews it
        self.due: Collection[str] | None = None  # the kinds the next claim tries (None: all)

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def halted(self) -> bool:
        """Take nothing more: the pass is told to stop, or recording failed."""
        return self.failure is not None or self.stopping()

    async def run(self, limit: int | None) -> DispatchReport:
        """Claim and judge (in a thread) while earlier rows send; record every `batch` outcomes
        (in a thread, one transaction at a time). Senders never wait for a whole batch to
        finish, nor for the database: the next rows are claimed while the queue still holds a
        batch's worth."""
        beat = asyncio.create_task(self.heartbeat())
        try:
            await self.feed(limit)
        except BaseException as exc:  # cancelled (the daemon), or a claim failed: halted
            self.failure = self.failure or exc
            raise
        finally:
            self.fed = True
            for event in self.arrived.values():
                event.set()
            if isinstance(self.failure, asyncio.CancelledError) and self.senders:
                for sender in self.senders:  # cancelled (the daemon's grace ran out): the
                    sender.cancel()  # sends in flight too, their rows back after the lease
                await asyncio.wait(self.senders)
            try:
                await asyncio.gather(*self.senders)
            finally:
                for queue in self.queues.values():  # an error: what was not sent goes back
                    while queue:
                        self.finish(Outcome(queue.popleft(), RELEASED))
                self.flush()
                try:
                    if self.recording is not None:
                        await self.recording
                finally:
                    beat.cancel()  # the last records done: nothing is held any more
                    if self.kept is not None:
                        await self.kept.settle()
                    else:
                        for channel in self.channels.values():
                            await channel.close()
        if self.failure is not None:
            raise self.failure
        self.report.stopped = self.stopping()
        return self.report

    def queued(self) -> int:
        return sum(len(queue) for queue in self.queues.values())

    async def feed(self, limit: int | None) -> None:
        """Claim until nothing is due (a claim comes back short, or empty), `limit` rows were
        taken, or the pass halts, keeping at most about two batches claimed ahead of the
        senders."""
        while not self.halted() and (limit is None or limit > 0):
            if self.queued() >= self.batch:
                self.hungry.clear()
                await self.hungry.wait()
                continue
            if self.recording is not None and not self.recording.done() and self.unrecorded > 1:
                # the records fall behind the sends (instant sends with writes): claim no more
                # until they catch up, so sent-but-unrecorded rows stay about two batches
                await asyncio.wait([self.recording])
                continue
            size = self.batch if limit is None else min(self.batch, limit)
            skip = sorted(kind for kind, c in self.channels.items() if c.down)
            claiming = asyncio.ensure_future(in_thread(self.take, size, skip))
            try:
                rows, judged, error = await asyncio.shield(claiming)
            except asyncio.CancelledError as exc:  # the claim commits all the same: halted,
                self.failure = self.failure or exc  # its rows go back; run raises the cancel
                rows, judged, error = await claiming
            self.due = None  # found due before the first claim; every kind from then on
            if not rows:
                return
            last = len(rows) < size  # fewer than asked: nothing else was due (the next pass
            # takes rows committed since, and a lease that runs out from now on)
            self.failure = self.failure or error  # halted: these rows go back
            limit = None if limit is None else limit - len(rows)
            self.held.update(row.id for row in rows)  # the heartbeat keeps these from now on
            for row in rows:
                outcome = judged.get(row.id)
                if outcome is None and (self.halted() or self.channel(row.connector).down):
                    outcome = Outcome(row, RELEASED)  # claimed, never started: put back
                if outcome is not None:
                    self.finish(outcome)
                else:
                    self.queue(row)
            if last:
                return

    def take(self, size: int, skip: list[str]
             ) -> tuple[list[Claimed], dict[int, Outcome], Exception | None]:
        """Claim the next rows and judge them (a database thread); a judge that failed comes
        back with the rows it could not judge (claimed all the same: they go back)."""
        rows = claim_due(self.engine, self.worker, self.as_of, size, skip=skip,
                         lease=self.lease, kinds=self.due)
        try:
            return rows, self.judge(rows) if rows else {}, None
        except Exception as exc:  # noqa: BLE001  (raised at the end of the pass)
            return rows, {}, exc

    def queue(self, row: Claimed) -> None:
        """Hand a row to its connector's senders (started with its first row)."""
        kind = row.connector
        if kind not in self.queues:
            self.queues[kind], self.arrived[kind] = deque(), asyncio.Event()
            self.senders.append(asyncio.create_task(self.drain(kind)))
        self.queues[kind].append(row)
        self.arrived[kind].set()

    def finish(self, outcome: Outcome) -> None:
        """An outcome to record; every `batch` of them goes to the recorder."""
        self.finished.append(outcome)
        if len(self.finished) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Record the outcomes so far, after the ones handed over before (one transaction at
        a time, in order)."""
        if not self.finished:
            return
        outcomes, self.finished, before = self.finished, [], self.recording
        self.unrecorded += 1
        # no more heartbeats for those put back: one can be claimed again, and held again,
        # before its record returns; the others are kept until theirs (it may wait behind
        # records before it for longer than a lease), and none of them is due again this pass
        self.held.difference_update(o.row.id for o in outcomes if o.status == RELEASED)

        async def write() -> None:
            if before is not None:  # after it, even when it failed: these still go in
                await asyncio.wait([before])
                if not before.cancelled():
                    before.exception()  # retrieved: self.failure has it
            try:
                await self.record(outcomes)
            except BaseException as exc:
                self.failure = self.failure or exc
                self.hungry.set()
                raise
            finally:
                self.held.difference_update(o.row.id for o in outcomes if o.status != RELEASED)
                self.unrecorded -= 1

        self.recording = asyncio.create_task(write())

    async def record(self, outcomes: list[Outcome]) -> None:
        kept = await in_thread(record, self.engine, self.worker, outcomes, self.as_of)
        self.report.counts.update((o.row.playbook_id, o.status) for o in kept
                                  if o.status != RELEASED)
        # distinct rows: one put back can be claimed again in this pass, and go back again
        # (its channel is down, or the pass is stopping)
        self.released.update(o.row.id for o in kept if o.status == RELEASED)
        self.report.released = len(self.released)
        self.report.lost += len(outcomes) - len(kept)
        if self.observe is not None:
            self.observe(kept)

    def judge(self, rows: list[Claimed]) -> dict[int, Outcome]:
        """Outcomes decided before sending (engine/outbox/judge.py); read in one connection."""
        now, judged = utcnow(), {}
        with self.engine.connect() as connection:
            over = [r for r in rows if r.connector in self.connectors
                    and r.attempts > _maximum(self.connectors[r.connector])]
            finished = judge.finished_attempts(connection, [r.id for r in over])
            for row in over:
                reason = judge.gave_up_reason(row, _maximum(self.connectors[row.connector]),
                                              finished.get(row.id, 0))
                judged[row.id] = Outcome(row, DEAD, f"dead: {reason}", reason, started_at=now,
                                         finished_at=now)
            for row in rows:
                if row.connector not in self.connectors:
                    why = (f"no connector {row.connector!r} is installed (installed: "
                           f"{', '.join(sorted(self.connectors)) or 'none'})")
                    judged[row.id] = Outcome(row, DEAD, f"dead: {why}", why, started_at=now,
                                             finished_at=now)
            judged.update(self.quiet(connection, [r for r in rows if r.id not in judged], now))
            emails = [r for r in rows if r.id not in judged
                      and getattr(self.connectors[r.connector], "needs_email", False)]
            judged.update(self.blocked(connection, emails, now))
        return judged

    def quiet(self, connection: sa.Connection, rows: list[Claimed], now: datetime
              ) -> dict[int, Outcome]:
        """Rows whose channel is in its quiet hours for the customer right now (as-of): a late
        dispatch, or a retry whose backoff lands at night, must not send then. Deferred to the
        next allowed minute, without using up an attempt (nothing was tried)."""
        rules = DeliveryRules.from_settings(self.settings)
        rows = [row for row in rows if row.connector in rules.quiet_hours]
        zones = judge.time_zones(connection, [row.customer_id for row in rows])
        judged = {}
        for row in rows:
            decision = rules.defer(row.connector, self.as_of, zones.get(row.customer_id))
            if decision is not None:
                judged[row.id] = Outcome(row, DEFERRED, decision.reason,
                                         next_attempt_at=decision.at, started_at=now,
                                         finished_at=now)
        return judged

    def blocked(self, connection: sa.Connection, rows: list[Claimed], now: datetime
                ) -> dict[int, Outcome]:
        """Emails to no address, or to one suppressed since the plan (RELIABILITY 16, 17)."""
        found = judge.addresses(connection, rows)
        table = judge.suppressed(connection, [a for a in found.values() if a])
        judged = {}
        for row in rows:
            address = found[row.id]
            why = "the customer has no email address" if not address else \
                self.connectors[row.connector].blocked(address, table)
            if why:
                status = SKIPPED if not address else SUPPRESSED
                judged[row.id] = Outcome(row, status, why, started_at=now, finished_at=now)
        return judged

    def channel(self, kind: str) -> Channel:
        if kind not in self.channels:
            self.channels[kind] = self.kept.take(kind) if self.kept is not None else \
                Channel(kind, self.connectors[kind])
        return self.channels[kind]

    async def heartbeat(self) -> None:
        """While sends of the batch run, keep the leases of all its rows (real clock) every
        `heartbeat_every(lease)` s: those sent early wait for the batch's record, and must not
        be taken over. A beat that fails (the database busy or away for a moment) is logged and
        the next one tries again: the lease has five more beats' worth of room."""
        every = heartbeat_every(self.lease)
        while True:
            await asyncio.sleep(every)
            try:
                held = await in_thread(extend_leases, self.engine, self.worker,
                                       list(self.held), lease=self.lease)
            except SQLAlchemyError as exc:
                log.warning("heartbeat of worker %s failed, trying again in %s s: %s",
                            self.worker, every, exc)
                continue
            log.debug("heartbeat: %d lease(s) extended", held)

    async def drain(self, kind: str) -> None:
        """Send one connector's rows with `concurrency` workers, as they are queued, until the
        pass is fed; what is left when the channel goes down or the pass halts is put back."""
        channel, queue = self.channel(kind), self.queues[kind]
        error = None if self.halted() else await channel.open(self.settings)
        if error is not None and channel.blamed is None and queue:  # shown on one row
            row = queue.popleft()
            channel.blamed, now = row.id, utcnow()
            self.finish(self.failed(row, channel, error, None, now, now))
        elif error is None and not self.halted():
            workers = max(1, int(channel.connector.concurrency))
            await asyncio.gather(*(self.work(channel, queue, self.arrived[kind])
                                   for _ in range(workers)), return_exceptions=True)
        while queue:
            self.finish(Outcome(queue.popleft(), RELEASED))
        self.hungry.set()  # the feed may be waiting for these rows to go

    async def work(self, channel: Channel, queue: deque[Claimed], arrived: asyncio.Event
                   ) -> None:
        """One sender: takes the next row until the pass is fed and the queue empty, the
        channel is down or the pass halts (a send in flight always finishes). One that crashes
        halts the pass, which raises its error at the end."""
        try:
            while not channel.down and not self.halted():
                if not queue:
                    if self.fed:
                        return
                    arrived.clear()
                    await arrived.wait()
                    continue
                row = queue.popleft()
                if len(queue) < self.batch and self.queued() < self.batch:
                    self.hungry.set()
                self.finish(await self.send(row=row, channel=channel))
        except BaseException as exc:
            self.failure = self.failure or exc
            raise

    async def send(self, row: Claimed, channel: Channel) -> Outcome:
        started = utcnow()
        delivery = Delivery(action_id=row.id, key=row.key, customer_id=row.customer_id,
                            playbook_id=row.playbook_id, payload=row.payload, as_of=self.as_of,
                            attempt=row.attempts)
        try:
            result = await channel.connector.send(delivery)
        except TransientError as exc:
            if exc.connection:
                if channel.down:  # the outage is charged to the row that found it out
                    return Outcome(row, RELEASED)
                channel.go_down(str(exc))
                channel.blamed = row.id  # a batch claimed ahead puts its rows back, uncharged
            return self.failed(row, channel, str(exc), exc.retry_after, started, utcnow())
        except PermanentError as exc:
            address = judge.recipient(row.payload) if exc.suppress else None
            return Outcome(row, DEAD, f"dead: {exc}", str(exc), started_at=started,
                           finished_at=utcnow(),
                           suppress={address: exc.suppress} if address and exc.suppress else {})
        except Exception as exc:  # noqa: BLE001  (a connector's bug: retried, never fatal)
            log.exception("action %s (%s): the connector raised", row.id, row.connector)
            return self.failed(row, channel, repr(exc), None, started, utcnow())
        if not isinstance(result, Sent):
            return self.failed(row, channel, f"send returned {result!r}, not Sent", None, started,
                               utcnow())
        return Outcome(row, SENT, None, writes=tuple(result.writes), detail=result.detail,
                       email=row.connector == "email", started_at=started, finished_at=utcnow())

    def failed(self, row: Claimed, channel: Channel, error: str,
               retry_after: timedelta | None, started: datetime, finished: datetime) -> Outcome:
        """A transient failure: retrying after the backoff, or dead once attempts are used."""
        maximum, first, growth = channel.retry
        if row.attempts >= maximum:
            reason = f"dead: gave up after {row.attempts} attempts; last error: {error}"
            return Outcome(row, DEAD, reason, error, started_at=started, finished_at=finished)
        wait = backoff.delay(row.attempts, first, growth, self.rng)
        if retry_after is not None:
            wait = max(retry_after, backoff.MINIMUM)
        due = self.as_of + wait
        reason = f"attempt {row.attempts} of {maximum} failed; next at {iso(due)}"
        return Outcome(row, RETRYING, reason, error, next_attempt_at=due, started_at=started,
                       finished_at=finished)
