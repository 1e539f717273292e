"""The dispatcher: claim what is due, send it through its connector, record every outcome.

One pass (`dispatch`) loops until nothing is due at `as_of` (or `limit` rows were taken, or
`stop` is set): claim a batch with a lease (engine/outbox/claim.py), judge what must not be sent
(engine/outbox/judge.py), send the rest concurrently, up to each connector's `concurrency`
(asyncio), heartbeat the lease while sends run, and record the batch's outcomes in one
transaction (engine/outbox/record.py). The payload was frozen at commit: nothing is rendered
here, so a re-send after a crash is byte-identical.

Outcomes: `Sent` -> `sent` (with its writes, and for email the `email_sent` facts);
`TransientError` -> `retrying` after a jittered exponential backoff (engine/outbox/backoff.py)
or the peer's `retry_after`, `dead` once the connector's attempts are used up;
`TransientError(connection=True)` -> that row retrying and the connector down for the pass
(engine/outbox/channel.py); `PermanentError` -> `dead`, the address suppressed when it says so;
any other exception -> transient, with its repr: a connector's bug never stops the loop.

Stopping (`stop` set, e.g. by SIGTERM): sends in flight finish and are recorded, rows claimed but
not started are put back unchanged, nothing new is claimed (RELIABILITY 4).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from connectors.base import Delivery, Sent
from engine.clock import iso, utcnow
from engine.errors import PermanentError, TransientError
from engine.outbox import backoff, judge
from engine.outbox.channel import Channel
from engine.outbox.claim import HEARTBEAT, Claimed, claim_due, extend_leases
from engine.outbox.handoff import quick_handoff
from engine.outbox.record import RELEASED, Outcome, record
from engine.plan.delivery import DeliveryRules
from engine.store.status import DEAD, DEFERRED, RETRYING, SENT, SKIPPED, SUPPRESSED

log = logging.getLogger(__name__)
BATCH = 256
"""Rows claimed, sent and recorded together: one claim and one outcome transaction per batch."""


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
             rng: random.Random | None = None) -> DispatchReport:
    """Deliver everything due at `as_of`; see the module docstring. Blocking (asyncio inside)."""
    return asyncio.run(dispatch_async(engine, settings, as_of, worker=worker, limit=limit,
                                      connectors=connectors, stop=stop, batch=batch, rng=rng))


async def dispatch_async(engine: sa.Engine, settings: Any, as_of: datetime, *,
                         worker: str | None = None, limit: int | None = None,
                         connectors: Mapping[str, Any] | None = None,
                         stop: threading.Event | None = None, batch: int = BATCH,
                         rng: random.Random | None = None) -> DispatchReport:
    """`dispatch` for a caller already in an event loop (the daemon)."""
    pass_ = _Pass(engine, settings, as_of, worker or default_worker(), _instances(connectors),
                  stop, rng or random.Random())
    with quick_handoff():  # the database threads give the sends' loop the GIL back sooner
        return await pass_.run(limit, batch)


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
                 rng: random.Random) -> None:
        self.engine, self.settings, self.as_of, self.worker = engine, settings, as_of, worker
        self.connectors, self.stop, self.rng = connectors, stop, rng
        self.channels: dict[str, Channel] = {}
        self.report = DispatchReport(worker=worker, as_of=as_of)
        self.held: list[int] = []  # the batch being sent: its leases are kept alive
        self.ahead: list[int] = []  # the next batch, claimed while this one sends: kept too
        self.released: set[int] = set()

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    async def run(self, limit: int | None, batch: int) -> DispatchReport:
        """Claim, send, record, batch after batch. The next batch is claimed (in a thread)
        while this one sends, and a batch's outcomes are recorded (in a thread) while the next
        one sends, so sending never waits for the database; each batch is judged just before
        its sends start, so the send-time checks read the database as late as before."""
        recording: asyncio.Task[None] | None = None
        claiming = self.claim(limit, batch)
        try:
            while claiming is not None:
                taking, claiming = claiming, None
                rows = await taking
                self.ahead = []  # now the batch in hand: self.held once it is judged
                if not rows:
                    break
                limit = None if limit is None else limit - len(rows)
                if self.stopping():  # claimed ahead, never started: put back unchanged
                    outcomes = [Outcome(row, RELEASED) for row in rows]
                else:
                    claiming = self.claim(limit, batch)
                    outcomes = await self.batch(rows)
                if recording is not None:
                    await recording
                recording = asyncio.create_task(self.record(outcomes))
        finally:
            if claiming is not None:  # an error while sending: the rows claimed ahead go back
                await self.put_back(claiming)
            if recording is not None:
                await recording
            for channel in self.channels.values():
                await channel.close()
        self.report.stopped = self.stopping()
        return self.report

    def claim(self, limit: int | None, batch: int) -> asyncio.Task[list[Claimed]] | None:
        """Start claiming the next batch in a thread (None: the pass is done or stopping)."""
        if self.stopping() or (limit is not None and limit <= 0):
            return None
        size = batch if limit is None else min(batch, limit)
        skip = sorted(kind for kind, c in self.channels.items() if c.down)

        def take() -> list[Claimed]:
            rows = claim_due(self.engine, self.worker, self.as_of, size, skip=skip)
            self.ahead = [row.id for row in rows]  # the heartbeat keeps these too
            return rows

        return asyncio.create_task(asyncio.to_thread(take))

    async def put_back(self, claiming: asyncio.Task[list[Claimed]]) -> None:
        """The pass is ending on an error: the batch claimed ahead goes back unchanged."""
        try:
            rows = await claiming
        except Exception:  # noqa: BLE001  (the error being raised is the one to report)
            log.exception("claiming ahead failed while the pass was ending")
            return
        await self.record([Outcome(row, RELEASED) for row in rows])

    async def record(self, outcomes: list[Outcome]) -> None:
        kept = await asyncio.to_thread(record, self.engine, self.worker, outcomes, self.as_of)
        self.report.counts.update((o.row.playbook_id, o.status) for o in kept
                                  if o.status != RELEASED)
        # distinct rows: one put back while the next batch was being claimed can come back in
        # it, and go back again (its channel is down, or the pass is stopping)
        self.released.update(o.row.id for o in kept if o.status == RELEASED)
        self.report.released = len(self.released)
        self.report.lost += len(outcomes) - len(kept)

    async def batch(self, rows: list[Claimed]) -> list[Outcome]:
        """Judge, then send, one claimed batch; every row gets an outcome."""
        judged = await asyncio.to_thread(self.judge, rows)
        queues: dict[str, deque[Claimed]] = {}
        for row in rows:
            if row.id not in judged:
                queues.setdefault(row.connector, deque()).append(row)
        self.held = [row.id for queue in queues.values() for row in queue]
        beat = asyncio.create_task(self.heartbeat())
        try:
            done = await asyncio.gather(*(self.drain(kind, queue) for kind, queue in
                                          queues.items()))
        finally:
            beat.cancel()
        return [*judged.values(), *(outcome for part in done for outcome in part)]

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
            self.channels[kind] = Channel(kind, self.connectors[kind])
        return self.channels[kind]

    async def heartbeat(self) -> None:
        """While sends of the batch run, keep the leases of all its rows (real clock) every
        10 s: those sent early wait for the batch's record, and must not be taken over. A beat
        that fails (the database busy or away for a moment) is logged and the next one tries
        again: the lease has five more beats' worth of room."""
        while True:
            await asyncio.sleep(HEARTBEAT.total_seconds())
            try:
                held = await asyncio.to_thread(extend_leases, self.engine, self.worker,
                                               [*self.held, *self.ahead])
            except SQLAlchemyError as exc:
                log.warning("heartbeat of worker %s failed, trying again in %s s: %s",
                            self.worker, HEARTBEAT.total_seconds(), exc)
                continue
            log.debug("heartbeat: %d lease(s) extended", held)

    async def drain(self, kind: str, queue: deque[Claimed]) -> list[Outcome]:
        """Send one connector's rows of the batch with `concurrency` workers; what is left
        when the channel goes down or the pass is stopping is put back."""
        channel, done = self.channel(kind), []
        if not self.stopping():
            error = await channel.open(self.settings)
            if error is not None and channel.blamed is None:  # the open failure shows on one row
                row = queue.popleft()
                channel.blamed, now = row.id, utcnow()
                done.append(self.failed(row, channel, error, None, now, now))
            elif error is None:
                workers = min(max(1, int(channel.connector.concurrency)), len(queue))
                for part in await asyncio.gather(*(self.work(channel, queue)
                                                   for _ in range(workers))):
                    done.extend(part)
        done.extend(Outcome(row, RELEASED) for row in queue)
        return done

    async def work(self, channel: Channel, queue: deque[Claimed]) -> list[Outcome]:
        """One sender: takes the next row until none is left, the channel is down or the pass
        is stopping (a send in flight always finishes)."""
        done = []
        while queue and not channel.down and not self.stopping():
            done.append(await self.send(row=queue.popleft(), channel=channel))
        return done

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
