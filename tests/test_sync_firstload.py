"""A first load's shortcuts (issue 14) give what the checked way gives, and survive a crash.

- Events written in one guarded statement per batch (every event new, every customer known)
  must leave what the looked-up way leaves, also when a batch breaks the hope part-way.
- Customer indexes dropped for a first load are there afterwards, and after a crash
  `open_store` builds them again; a load smaller than a bulk one drops none.
- Facts a first load skips refreshing (new customers' defaults, the id set) equal a full refresh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_sync import NOW, rows_of

import engine.sync.bulk as bulk_module
import engine.sync.ingest as sync_module
from engine.store.open import open_store
from engine.store.tables import Customer, Event
from engine.sync.bulk import EventWriter
from engine.sync.facts import refresh_facts
from engine.sync.ingest import ingest_customers, ingest_events


def _events(count: int, customers: int = 50) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for n in range(count):
        who = "nobody" if n in (13, 14, 100) else f"c{n % customers}"
        kind = ("purchase", "feedback", "login")[n % 3]
        row = {"event_id": f"e{n % 60}", "customer_id": who, "type": kind,
               "occurred_at": f"2024-02-{n % 28 + 1:02}T10:00:00Z"}
        row.update({"amount": str(n)} if kind == "purchase" else {})
        row.update({"score": str(n % 11)} if kind == "feedback" and n % 5 else {})
        rows.append((n + 2, row))
    return rows


def _outcome(engine: sa.Engine, rows: list[Any], batch: int,
             monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    monkeypatch.setattr(sync_module, "EVENT_BATCH", batch)
    monkeypatch.setattr(bulk_module, "BULK_ROWS", batch)  # a batch of that size: a bulk load
    ingest_customers(engine, [(n + 2, {"customer_id": f"c{n}"}) for n in range(50)], "c", now=NOW)
    report = ingest_events(engine, rows, "e.csv")
    again = ingest_events(engine, rows, "e.csv")
    return (report.summary(), report.rejected, report.warnings, report.conflicts,
            again.summary(), again.conflicts, rows_of(engine, Event), rows_of(engine, Customer))


@pytest.mark.parametrize("batch", [10, 25, 1000])
def test_events_written_in_hope_equal_the_looked_up_way(db_url: str, tmp_path: Path, batch: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown customers in some batches and repeated event ids in others break the hope
    part-way through a statement; the batch is then written the checked way."""
    rows = _events(120)
    tried: list[bool] = []
    real = EventWriter.write_new

    def counting(self: EventWriter, *args: Any) -> bool:
        tried.append(written := real(self, *args))
        return written

    monkeypatch.setattr(EventWriter, "write_new", counting)
    hopeful = open_store(db_url)
    got = _outcome(hopeful, rows, batch, monkeypatch)
    hopeful.dispose()
    if db_url.startswith("sqlite"):
        assert batch == 1000 or (True in tried and False in tried)
    monkeypatch.setattr(EventWriter, "HOPES", 0)
    checked = open_store(db_url if db_url.startswith("postgresql") else
                         f"sqlite:///{tmp_path}/checked.db")
    if db_url.startswith("postgresql"):
        with checked.begin() as connection:
            for table in ("events", "customers"):
                connection.exec_driver_sql(f"DELETE FROM {table}")
    want = _outcome(checked, rows, batch, monkeypatch)
    checked.dispose()
    assert got == want
    assert got[1] and got[3]  # rows rejected for unknown customers, and conflicts


def test_a_first_load_of_customers_builds_their_indexes_and_a_crash_leaves_them_rebuilt(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_module, "CUSTOMER_BATCH", 10)
    monkeypatch.setattr(sync_module, "CUSTOMER_COMMIT", 10)
    monkeypatch.setattr(bulk_module, "BULK_ROWS", 10)
    engine = open_store(sqlite_url)
    declared = {index.name for index in Customer.__table__.indexes}
    rows = [(n + 2, {"customer_id": f"c{n}", "email": f"u{n}@example.com"}) for n in range(35)]

    def crashing() -> Any:
        yield from rows[:25]
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        ingest_customers(engine, crashing(), "c.csv", now=NOW)
    assert len(rows_of(engine, Customer)) == 20  # whole transactions only
    assert not declared <= {ix["name"] for ix in sa.inspect(engine).get_indexes("customers")}
    engine.dispose()
    engine = open_store(sqlite_url)  # builds the indexes the crashed load had dropped
    assert declared <= {ix["name"] for ix in sa.inspect(engine).get_indexes("customers")}
    report = ingest_customers(engine, rows, "c.csv", now=NOW)
    assert (report.inserted, report.unchanged) == (15, 20)
    engine.dispose()


@pytest.mark.parametrize("bulk_rows", [4, 2_000], ids=["bulk", "small"])
def test_first_loads_leave_the_facts_a_full_refresh_gives(db: sa.Engine, bulk_rows: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """New customers get their defaults at insert and a first event load refreshes everyone
    with events; a full refresh afterwards changes nothing. Only a bulk load (a first batch of
    BULK_ROWS rows) drops indexes, to build them after; a smaller one keeps them."""
    monkeypatch.setattr(bulk_module, "BULK_ROWS", bulk_rows)
    dropped: list[str] = []

    def statement(conn: Any, cursor: Any, sql: str, *rest: Any) -> None:
        if sql.lstrip().upper().startswith("DROP INDEX"):
            dropped.append(sql)

    sa.event.listen(db, "before_cursor_execute", statement)
    try:
        ingest_customers(db, [(n + 2, {"customer_id": f"c{n}", "created_at":
                                       "2023-01-05T00:00:00Z" if n % 2 else ""})
                              for n in range(9)], "c", now=NOW)
        ingest_events(db, [row for row in _events(60, 7)
                           if row[1]["customer_id"] != "nobody"], "e")
    finally:
        sa.event.remove(db, "before_cursor_execute", statement)
    assert bool(dropped) == (bulk_rows == 4)
    for model in (Customer, Event):  # dropped for the load or the refresh, and built again
        declared = {index.name for index in model.__table__.indexes}
        assert declared <= {ix["name"] for ix in sa.inspect(db).get_indexes(model.__tablename__)}
    with db.connect() as connection:
        before = rows_of(db, Customer)
        refresh_facts(connection)
        after = connection.execute(sa.select(Customer.__table__)
                                   .order_by(Customer.__table__.c.customer_id)).mappings().all()
        connection.rollback()
    assert [dict(row) for row in after] == before
    assert any(row["last_feedback_score"] is not None for row in before)
    assert {row["last_active_at"] for row in before if row["customer_id"] in ("c7", "c8")} == {
        row["created_at"] for row in before if row["customer_id"] in ("c7", "c8")}
