"""The daemon's Prometheus metrics: the objects the loop and the API update, and the scrape.

Each daemon owns one `Metrics`, with its own CollectorRegistry rather than prometheus-client's
global one, so two daemons in one test process (or one per test) never share counts. Counters
and histograms are updated where things happen (the API counts events ingested; the loop
counts evaluations, enrollments, actions and cycles); the outbox depth and the age of the
oldest due action are read from the database at scrape time, since every replica writes the
outbox and only the database knows its state now.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from engine.clock import aware_utc, utcnow
from engine.store.status import WAITING
from engine.store.tables import actions

PREFIX = "retain_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Every metric the daemon exports, names prefixed `retain_` (docs/DAEMON.md lists them)."""

    def __init__(self, engine: sa.Engine | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_ingested = Counter(
            f"{PREFIX}events_ingested", "Events written through the API (duplicates not counted).",
            ["source"], registry=r)
        self.items_rejected = Counter(
            f"{PREFIX}items_rejected", "API items (events, customers, messages) not kept.",
            ["endpoint"], registry=r)
        self.evaluations = Counter(
            f"{PREFIX}evaluations", "Playbook evaluations run.", ["playbook"], registry=r)
        self.enrollments = Counter(
            f"{PREFIX}enrollments", "Enrollments committed.", ["playbook"], registry=r)
        self.actions = Counter(
            f"{PREFIX}actions", "Actions dispatched, by connector and outcome status.",
            ["connector", "status"], registry=r)
        self.dispatch_latency = Histogram(
            f"{PREFIX}dispatch_latency_seconds", "Time from an action's due time to its delivery.",
            ["connector"], registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.last_cycle = Gauge(
            f"{PREFIX}last_successful_cycle_timestamp_seconds",
            "Unix time the last evaluation cycle finished without error.", registry=r)
        if engine is not None:
            r.register(OutboxCollector(engine))

    def scrape(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class OutboxCollector(Collector):
    """Outbox depth by connector and the age of the oldest due action, read when scraped."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """Describe without a query: registering must not touch the database."""
        return [GaugeMetricFamily(f"{PREFIX}outbox_depth", "Waiting actions.", labels=["connector"]),
                GaugeMetricFamily(f"{PREFIX}outbox_oldest_due_age_seconds",
                                  "Age of the oldest action due and not yet delivered.")]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """Two cheap queries on the (status, next_attempt_at) index."""
        depth = GaugeMetricFamily(f"{PREFIX}outbox_depth", "Waiting actions.",
                                  labels=["connector"])
        oldest = GaugeMetricFamily(f"{PREFIX}outbox_oldest_due_age_seconds",
                                   "Age of the oldest action due and not yet delivered.")
        now = utcnow()
        waiting = actions.c.status.in_(WAITING)
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(actions.c.connector, sa.func.count())
                                      .where(waiting).group_by(actions.c.connector)).all()
            first = connection.execute(sa.select(sa.func.min(actions.c.next_attempt_at)).where(
                waiting, actions.c.next_attempt_at <= now)).scalar()
        for connector, count in rows:
            depth.add_metric([connector], count)
        oldest.add_metric([], _age(first, now))
        return [depth, oldest]


def _age(first: datetime | str | None, now: datetime) -> float:
    """Seconds since `first` (0 when nothing is due); SQLite's MIN returns text, not a datetime."""
    if first is None:
        return 0.0
    moment = datetime.fromisoformat(first) if isinstance(first, str) else first
    return max(0.0, (now - aware_utc(moment)).total_seconds())
