"""PostgreSQL after a bulk sync: statistics exist, so the planner uses the events index.

Without them (autovacuum off, as here and in CI) a dry-run right after loading CDNOW took 64-230 s
on PostgreSQL where SQLite took about 2 s.
"""

from __future__ import annotations

import sqlalchemy as sa

from engine.store.open import open_store
from engine.sync.bulk import analyze_if_grown
from engine.sync.ingest import ingest_customers, ingest_events

TYPES = ("purchase", "login", "page_view", "feedback")


def _load(engine: sa.Engine, customers: int, per_customer: int, start: int = 0) -> None:
    ingest_customers(engine, [(n, {"customer_id": f"c{n}"}) for n in range(customers)], "test")
    events = [(n, {"event_id": f"e{n}", "customer_id": f"c{n % customers}",
                   "type": TYPES[n % len(TYPES)], "occurred_at": f"2024-01-{n % 28 + 1:02}",
                   "amount": "5" if n % len(TYPES) == 0 else "",
                   "score": "7" if n % len(TYPES) == 3 else ""})
              for n in range(start, start + customers * per_customer)]
    ingest_events(engine, events, "test")


def test_a_bulk_sync_leaves_statistics_and_an_indexed_per_customer_plan(pg_url: str) -> None:
    engine = open_store(pg_url)
    _load(engine, 2_000, 10)
    with engine.connect() as connection:
        tuples = dict(connection.exec_driver_sql(
            "SELECT relname, reltuples FROM pg_class WHERE oid IN"
            " (to_regclass('events'), to_regclass('customers'))").all())
        stats = connection.exec_driver_sql(
            "SELECT count(*) FROM pg_stats WHERE tablename = 'events'"
            " AND schemaname = current_schema()").scalar()
        plan = "\n".join(row[0] for row in connection.exec_driver_sql(
            "EXPLAIN SELECT max(occurred_at) FROM events"
            " WHERE customer_id = 'c7' AND type = 'purchase'"))
    assert tuples == {"events": 20_000, "customers": 2_000}  # never analyzed: -1
    assert stats > 0
    assert "ix_events_customer_type_time" in plan and "Seq Scan" not in plan
    with engine.connect() as connection:
        assert analyze_if_grown(connection, "events", 100) is False  # 0.5%: not worth it
        assert analyze_if_grown(connection, "events", 5_000) is True  # 25%
    engine.dispose()
