"""Sync of customer and event files on real SQLite and PostgreSQL: upserts, dedupe, bad rows.

Reading files (gzip, encodings, unreadable lines) is tested in test_syncfiles.py.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import engine.sync.ingest as sync_module
from engine.store.tables import Customer, Event
from engine.sync.ingest import (
    RowError,
    SyncReport,
    ingest_customers,
    ingest_events,
    sync_customers,
    sync_events,
)
from engine.sync.rows import RowProblem, _checked_event_values, event_values

FIXTURES = Path(__file__).parent / "fixtures" / "sync"
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def rows_of(engine: sa.Engine, model: Any) -> list[dict[str, Any]]:
    """Every row of a table as typed values, in key order (ids excluded: they are surrogate)."""
    table = model.__table__
    key = table.c.event_id if model is Event else table.c.customer_id
    with engine.connect() as connection:
        found = connection.execute(sa.select(table).order_by(key)).mappings().all()
    return [{k: v for k, v in row.items() if k != "id"} for row in found]


def customer(engine: sa.Engine, customer_id: str) -> dict[str, Any]:
    return next(row for row in rows_of(engine, Customer) if row["customer_id"] == customer_id)


def event(engine: sa.Engine, event_id: str) -> dict[str, Any]:
    return next(row for row in rows_of(engine, Event) if row["event_id"] == event_id)


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def counts(report: SyncReport) -> tuple[int, int, int, int, int]:
    """(read, inserted, updated, unchanged customers or duplicate events, rejected); and every
    row is counted once (conflicts are tested on their own and must not appear elsewhere)."""
    same = report.unchanged if report.kind == "customers" else report.duplicates
    assert report.read == (report.inserted + report.updated + report.unchanged + report.duplicates
                           + len(report.conflicts) + len(report.rejected))
    assert not report.conflicts
    return report.read, report.inserted, report.updated, same, len(report.rejected)


# --- customers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_customers_are_inserted_with_their_columns_and_attributes(db: sa.Engine, fmt: str) -> None:
    report = sync_customers(db, FIXTURES / f"customers.{fmt}", now=NOW)
    assert counts(report) == (4, 4, 0, 0, 0)
    ada = customer(db, "c1")
    assert ada["email"] == "ada@example.com"
    assert ada["created_at"] == datetime(2024, 1, 10, 8, 0, tzinfo=UTC)  # +01:00 -> UTC
    assert ada["birthday"] == date(1815, 12, 10)
    assert ada["tags"] == ["vip", "newsletter"]
    assert ada["attributes"] == {"plan": "premium"}
    assert ada["first_synced_at"] == NOW
    assert ada["last_active_at"] == ada["created_at"]  # no events yet
    chen = customer(db, "c3")
    assert chen["attributes"] == {} and chen["segment"] is None and chen["tags"] == []
    assert chen["created_at"] == NOW  # no created_at and no events: the first sync
    dara = customer(db, "c4")
    assert dara["email"] is None
    assert dara["tags"] == ["mobile"]  # empty and repeated tags dropped
    assert dara["attributes"] == {"plan": "free"}


def test_csv_and_jsonl_files_give_the_same_state(tmp_path: Path, sqlite_url: str) -> None:
    from engine.store.open import open_store

    states = []
    for fmt in ("csv", "jsonl"):
        engine = open_store(f"sqlite:///{tmp_path / fmt}.db")
        sync_customers(engine, FIXTURES / f"customers.{fmt}", now=NOW)
        sync_events(engine, FIXTURES / f"events.{fmt}")
        states.append((rows_of(engine, Customer), rows_of(engine, Event)))
        engine.dispose()
    assert states[0] == states[1]


def test_a_resync_updates_only_the_given_columns_and_merges_attributes(db: sa.Engine) -> None:
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)
    before = customer(db, "c1")
    report = sync_customers(db, FIXTURES / "customers_update.csv", now=datetime(2025, 2, 1,
                                                                                  tzinfo=UTC))
    assert counts(report) == (2, 0, 2, 0, 0)
    ada = customer(db, "c1")
    assert ada["email"] == "ada@lovelace.example"
    assert ada["attributes"] == {"seats": "2"}  # empty `plan` cell removes it; `seats` merged in
    unchanged = {k: v for k, v in ada.items() if k not in ("email", "attributes")}
    assert unchanged == {k: v for k, v in before.items() if k not in ("email", "attributes")}
    assert customer(db, "c2")["attributes"] == {"plan": "enterprise"}
    assert customer(db, "c2")["first_synced_at"] == NOW  # set once, on the first insert


def test_an_empty_cell_sets_no_value_but_created_at_is_kept(db: sa.Engine, tmp_path: Path) -> None:
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)
    path = write_csv(tmp_path / "blank.csv", ["customer_id", "email", "created_at", "tags"],
                     [["c1", "", "", ""]])
    report = sync_customers(db, path, now=NOW)
    assert counts(report) == (1, 0, 1, 0, 0)
    ada = customer(db, "c1")
    assert ada["email"] is None and ada["tags"] == []
    assert ada["created_at"] == datetime(2024, 1, 10, 8, 0, tzinfo=UTC)


def test_jsonl_attributes_object_typed_values_and_integer_ids(db: sa.Engine,
                                                              tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"customer_id": 7, "attributes": {"seats": 3, "beta": True}, "plan": "pro"},
        {"customer_id": "7", "attributes": {"seats": 4}, "tags": ["a", " b ", "a"]},
    ])
    report = sync_customers(db, path, now=NOW)
    assert counts(report) == (2, 1, 1, 0, 0)  # the second row updates the first
    row = customer(db, "7")
    assert row["attributes"] == {"seats": 4, "beta": True, "plan": "pro"}
    assert row["tags"] == ["a", "b"]


def test_the_same_customer_twice_in_a_file_is_counted_once_new(db: sa.Engine,
                                                                tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", ["customer_id", "name"],
                     [["c1", "Ada"], ["c1", "Ada"], ["c1", "Ada L."]])
    assert counts(sync_customers(db, path, now=NOW)) == (3, 1, 1, 1, 0)
    assert customer(db, "c1")["name"] == "Ada L."


# --- events --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_events_land_with_utc_times_and_typed_amount_and_score(db: sa.Engine, fmt: str) -> None:
    sync_customers(db, FIXTURES / f"customers.{fmt}", now=NOW)
    report = sync_events(db, FIXTURES / f"events.{fmt}")
    assert counts(report) == (8, 8, 0, 0, 0)
    login = event(db, "e1")
    assert login["occurred_at"] == datetime(2024, 4, 1, 8, 0, tzinfo=UTC)
    assert login["properties"] == {"channel": "web"}
    purchase = event(db, "e2")
    assert purchase["occurred_at"] == datetime(2024, 4, 2, 8, 15, tzinfo=UTC)  # +02:00
    assert purchase["amount"] == 120.5
    assert purchase["properties"] == {"channel": "web"}  # amount lives in its column only
    feedback = event(db, "e3")
    assert feedback["occurred_at"] == datetime(2024, 4, 3, 18, 0, tzinfo=UTC)  # naive = UTC
    assert (feedback["score"], feedback["amount"], feedback["properties"]) == (4.0, None, {})
    assert event(db, "e7")["occurred_at"] == datetime(2023, 12, 25, 4, 30, tzinfo=UTC)
    assert event(db, "e8")["properties"] == {"channel": "app"}


def test_jsonl_properties_object_keeps_nested_values(db: sa.Engine, tmp_path: Path) -> None:
    sync_customers(db, FIXTURES / "customers.jsonl", now=NOW)
    path = write_jsonl(tmp_path / "e.jsonl", [{
        "event_id": 1, "customer_id": "c1", "type": "purchase",
        "occurred_at": "2024-05-01T10:00:00.123456+00:00",
        "properties": {"amount": 12, "score": None, "items": [{"sku": "A1", "qty": 2}],
                       "gift": False, "note": "ünïcode"}}])
    assert counts(sync_events(db, path)) == (1, 1, 0, 0, 0)
    row = event(db, "1")
    assert row["amount"] == 12.0 and row["score"] is None
    assert row["occurred_at"] == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert row["properties"] == {"items": [{"sku": "A1", "qty": 2}], "gift": False,
                                 "note": "ünïcode"}


def test_duplicate_event_ids_are_counted_in_a_file_and_across_runs(db: sa.Engine,
                                                                   tmp_path: Path) -> None:
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)
    header = ["event_id", "customer_id", "type", "occurred_at"]
    first = write_csv(tmp_path / "a.csv", header, [
        ["e1", "c1", "login", "2024-01-01T00:00:00Z"],
        ["e2", "c1", "login", "2024-01-02T00:00:00Z"],
        ["e1", "c1", "login", "2024-01-01T00:00:00Z"],  # the same event again
    ])
    assert counts(sync_events(db, first)) == (3, 2, 0, 1, 0)
    assert event(db, "e1")["occurred_at"] == datetime(2024, 1, 1, tzinfo=UTC)
    second = write_csv(tmp_path / "b.csv", header, [
        ["e2", "c1", "login", "2024-01-02T00:00:00Z"],
        ["e3", "c2", "login", "2024-01-04T00:00:00Z"],
    ])
    assert counts(sync_events(db, second)) == (2, 1, 0, 1, 0)
    assert len(rows_of(db, Event)) == 3


def test_resyncing_the_same_files_changes_nothing(db: sa.Engine) -> None:
    first = [sync_customers(db, FIXTURES / "customers.csv", now=NOW),
             sync_events(db, FIXTURES / "events.csv")]
    state = (rows_of(db, Customer), rows_of(db, Event))
    again = [sync_customers(db, FIXTURES / "customers.csv", now=datetime(2026, 1, 1, tzinfo=UTC)),
             sync_events(db, FIXTURES / "events.csv")]
    assert (rows_of(db, Customer), rows_of(db, Event)) == state
    assert [counts(r) for r in first] == [(4, 4, 0, 0, 0), (8, 8, 0, 0, 0)]
    assert [counts(r) for r in again] == [(4, 0, 0, 4, 0), (8, 0, 0, 8, 0)]


def test_sqlite_times_are_stored_exactly_as_sqlalchemy_writes_them(sqlite_url: str) -> None:
    from engine.store.open import open_store

    engine = open_store(sqlite_url)
    ingest_customers(engine, [(2, {"customer_id": "c1"})], "test", now=NOW)
    ingest_events(engine, [(2, {"event_id": "raw", "customer_id": "c1", "type": "login",
                                "occurred_at": "2024-01-02T03:04:05+01:00"})], "test")
    with engine.begin() as connection:
        connection.execute(sa.insert(Event), [{
            "event_id": "core", "customer_id": "c1", "type": "login", "properties": {},
            "occurred_at": datetime(2024, 1, 2, 2, 4, 5, tzinfo=UTC)}])
        stored = dict(connection.exec_driver_sql("select event_id, occurred_at from events").all())
        first_synced = connection.exec_driver_sql("select first_synced_at from customers").scalar()
    assert stored["raw"] == stored["core"] == "2024-01-02 02:04:05.000000"
    assert first_synced == "2025-01-01 00:00:00.000000"
    engine.dispose()


# --- bad rows ------------------------------------------------------------------------------------


def thousand_customers(tmp_path: Path, fmt: str) -> Path:
    """1,000 customer rows whose row on line 57 has a bad created_at (CSV: the header is line 1)."""
    first_row_line = 2 if fmt == "csv" else 1
    rows = [{"customer_id": f"c{n:04}", "email": f"u{n}@example.com",
             "created_at": "2024-01-01T00:00:00Z"} for n in range(1000)]
    rows[57 - first_row_line]["created_at"] = "2024-13-01"
    if fmt == "jsonl":
        return write_jsonl(tmp_path / "customers.jsonl", rows)
    return write_csv(tmp_path / "customers.csv", list(rows[0]), [list(r.values()) for r in rows])


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_bad_row_at_line_57_of_1000_is_reported_and_the_rest_kept(db: sa.Engine,
                                                                     tmp_path: Path,
                                                                     fmt: str) -> None:
    report = sync_customers(db, thousand_customers(tmp_path, fmt), now=NOW)
    assert counts(report) == (1000, 999, 0, 0, 1)
    [error] = report.rejected
    assert (error.line, error.reason) == (57, "bad created_at '2024-13-01': not an ISO 8601 time")
    assert len(rows_of(db, Customer)) == 999


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_bad_event_at_line_57_of_1000_is_reported_and_the_rest_kept(db: sa.Engine,
                                                                      tmp_path: Path,
                                                                      fmt: str) -> None:
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)
    rows = [{"event_id": f"e{n}", "customer_id": "c1", "type": "login",
             "occurred_at": f"2024-01-01T00:{n // 60 % 60:02}:{n % 60:02}Z"} for n in range(1000)]
    rows[57 - (2 if fmt == "csv" else 1)]["occurred_at"] = "yesterday"
    path = (write_jsonl(tmp_path / "e.jsonl", rows) if fmt == "jsonl" else
            write_csv(tmp_path / "e.csv", list(rows[0]), [list(r.values()) for r in rows]))
    report = sync_events(db, path)
    assert counts(report) == (1000, 999, 0, 0, 1)
    assert report.rejected[0].line == 57
    assert report.rejected[0].reason == "bad occurred_at 'yesterday': not an ISO 8601 time"


CUSTOMER_ERRORS = [
    ({"customer_id": ""}, "missing customer_id"),
    ({"customer_id": "c1", "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"customer_id": "c1", "email": "ada.example.com"},
     "bad email 'ada.example.com': not an email address"),
    ({"customer_id": "c1", "birthday": "1990-02-30"},
     "bad birthday '1990-02-30': not a date (YYYY-MM-DD)"),
    ({"customer_id": "", "created_at": "soon", "timezone": "Nowhere"},
     "missing customer_id; bad created_at 'soon': not an ISO 8601 time; "
     "unknown time zone 'Nowhere'"),
]


@pytest.mark.parametrize(("row", "reason"), CUSTOMER_ERRORS)
def test_bad_customer_rows_name_every_problem(sqlite_url: str, row: dict[str, str],
                                              reason: str) -> None:
    from engine.store.open import open_store

    engine = open_store(sqlite_url)
    report = ingest_customers(engine, [(3, row)], "x.csv", now=NOW)
    assert report.rejected == [RowError(3, reason, row)]
    assert rows_of(engine, Customer) == []
    engine.dispose()


EVENT = {"event_id": "e1", "customer_id": "c1", "type": "purchase",
         "occurred_at": "2024-01-01T00:00:00Z"}
EVENT_ERRORS = [
    ({**EVENT, "event_id": ""}, "missing event_id"),
    ({**EVENT, "customer_id": " "}, "missing customer_id"),
    ({**EVENT, "type": ""}, "missing type"),
    ({**EVENT, "occurred_at": ""}, "missing occurred_at"),
    ({**EVENT, "amount": "12,50"}, "bad amount '12,50': not a number"),
    ({**EVENT, "score": "nan"}, "bad score 'nan': not a number"),
    ({**EVENT, "customer_id": "c9"}, "unknown customer 'c9' (sync customers first)"),
    ({**EVENT, "event_id": "", "type": "", "amount": "x"},
     "missing event_id; missing type; bad amount 'x': not a number"),
]


@pytest.mark.parametrize(("row", "reason"), EVENT_ERRORS)
def test_bad_event_rows_name_every_problem(db: sa.Engine, row: dict[str, str],
                                           reason: str) -> None:
    ingest_customers(db, [(2, {"customer_id": "c1"})], "c.csv", now=NOW)
    report = ingest_events(db, [(5, row)], "e.csv")
    assert report.rejected == [RowError(5, reason, row)]
    assert rows_of(db, Event) == []


# --- batches, crashes, progress --------------------------------------------------------------------


def test_a_crash_mid_file_leaves_whole_batches_and_a_rerun_completes(
        db: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_module, "EVENT_BATCH", 10)
    monkeypatch.setattr(sync_module, "EVENT_COMMIT", 10)
    ingest_customers(db, [(n, {"customer_id": f"c{n}"}) for n in range(5)], "c", now=NOW)
    rows = [(n + 2, {"event_id": f"e{n}", "customer_id": f"c{n % 5}", "type": "purchase",
                     "occurred_at": f"2024-01-{n % 28 + 1:02}", "amount": "1"}) for n in range(35)]

    def crashing() -> Any:
        yield from rows[:25]
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        ingest_events(db, crashing(), "e.csv")
    assert len(rows_of(db, Event)) == 20  # two whole batches committed, the third lost
    report = ingest_events(db, rows, "e.csv")
    assert counts(report) == (35, 15, 0, 20, 0)
    assert sum(row["purchase_count"] for row in rows_of(db, Customer)) == 35
    assert sum(row["total_spent"] for row in rows_of(db, Customer)) == 35.0
    if db.dialect.name == "sqlite":
        with db.connect() as connection:  # the crashed connection did not go back to the pool
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_a_sync_leaves_its_sqlite_pragmas_as_it_found_them(sqlite_url: str) -> None:
    from engine.store.open import open_store

    engine = open_store(sqlite_url)
    pragmas = ("threads", "cache_size", "foreign_keys")
    with engine.connect() as connection:
        driver = connection.connection.driver_connection
        before = {name: connection.exec_driver_sql(f"PRAGMA {name}").scalar() for name in pragmas}
    ingest_customers(engine, [(2, {"customer_id": "c1"})], "c", now=NOW)
    ingest_events(engine, [(2, {"event_id": "e1", "customer_id": "c1", "type": "purchase",
                                "occurred_at": "2024-01-02", "amount": "3"})], "e.csv")
    with engine.connect() as connection:
        assert connection.connection.driver_connection is driver  # the one sync used
        after = {name: connection.exec_driver_sql(f"PRAGMA {name}").scalar() for name in pragmas}
    assert after == before
    engine.dispose()


def test_progress_reports_bytes_for_files_and_rows_for_ingest(sqlite_url: str,
                                                              tmp_path: Path) -> None:
    from engine.store.open import open_store

    engine = open_store(sqlite_url)
    seen: list[int] = []
    sync_customers(engine, FIXTURES / "customers.csv", progress=seen.append, now=NOW)
    assert sum(seen) == (FIXTURES / "customers.csv").stat().st_size
    seen.clear()
    ingest_customers(engine, [(2, {"customer_id": "x"})] * 3, "rows", progress=seen.append)
    assert seen == [3]
    engine.dispose()


EVENT_SHAPES = [
    EVENT, {**EVENT, "amount": "1e3", "score": " 7 ", "x": "", "y": "z"},
    {**EVENT, "event_id": 5, "occurred_at": datetime(2024, 1, 1, 12, tzinfo=UTC)},
    {**EVENT, "occurred_at": " 2024-01-01T10:00:00+05:30 "},
    {**EVENT, "occurred_at": "2024-01-01T10:00:00.5-01:00", "properties": {"amount": 2, "k": None}},
    {**EVENT, "occurred_at": "2024-06-01", "amount": True}, {**EVENT, "properties": [1]},
    {**EVENT, "occurred_at": "0001-01-01T00:00:00+01:00"}, {**EVENT, "score": "inf"},
    {**EVENT, "properties": {"ratio": float("nan")}}, {**EVENT, "customer_id": 7.5},
]


@pytest.mark.parametrize("row", EVENT_SHAPES)
def test_the_fast_path_agrees_with_the_checked_definition(row: dict[str, Any]) -> None:
    def outcome(parse: Any) -> Any:
        try:
            return parse(row)
        except RowProblem as exc:
            return str(exc)

    assert outcome(event_values) == outcome(_checked_event_values)


def test_a_first_load_leaves_every_event_index_in_place(db: sa.Engine, tmp_path: Path) -> None:
    """The first load into an empty events table builds its indexes at the end, not per row."""
    customers = tmp_path / "c.csv"
    customers.write_text("customer_id\nc1\n")
    events = tmp_path / "e.csv"
    events.write_text("event_id,customer_id,type,occurred_at\ne1,c1,login,2024-01-01T00:00:00\n")
    sync_customers(db, customers)
    sync_events(db, events)
    names = {ix["name"] for ix in sa.inspect(db).get_indexes("events")}
    assert {"ix_events_customer_type_time", "ix_events_type_time"} <= names
