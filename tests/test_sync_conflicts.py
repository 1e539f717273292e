"""A known event_id: a duplicate when the contents agree, a conflict naming both lines when not.

On both databases, on the per-row path and the pyarrow path (which must give identical reports),
within one batch, across batches of one file, and against events synced before.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_sync import FIXTURES, NOW, event, rows_of, write_csv, write_jsonl

import engine.sync.arrow as syncarrow
import engine.sync.ingest as ingest
from engine.store.open import open_store
from engine.store.tables import Event
from engine.sync.conflicts import contents, same
from engine.sync.ingest import SyncReport, sync_customers, sync_events
from engine.sync.rows import event_values

HEADER = ["event_id", "customer_id", "type", "occurred_at", "amount"]


def _summary(report: SyncReport) -> tuple[int, int, int, list[tuple[int, str]], int]:
    assert report.read == (report.inserted + report.duplicates + len(report.conflicts)
                           + len(report.rejected))
    return (report.read, report.inserted, report.duplicates,
            [(c.line, c.reason) for c in report.conflicts], len(report.rejected))


def test_a_changed_repeat_in_one_file_is_a_conflict_naming_both_lines(db: sa.Engine,
                                                                      tmp_path: Path) -> None:
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)
    path = write_csv(tmp_path / "events.csv", HEADER, [
        ["e1", "c1", "purchase", "2024-01-01T00:00:00Z", "10"],
        ["e2", "c1", "login", "2024-01-02T00:00:00Z", ""],
        ["e1", "c1", "purchase", "2024-01-01T00:00:00Z", "10.0"],  # the same event: duplicate
        ["e1", "c1", "purchase", "2024-01-01T00:00:00Z", "12"],  # another amount: conflict
    ])
    report = sync_events(db, path)
    assert _summary(report) == (4, 2, 1, [(5, (
        f"conflict: event_id 'e1' has other contents at {path}:2"
        " (amount 10.0 there, 12.0 here)"))], 0)
    assert report.summary() == "read 4, inserted 2, duplicates 1, conflicts 1, rejected 0"
    assert event(db, "e1")["amount"] == 10.0  # the first one stays
    assert report.conflicts[0].raw["amount"] == "12"  # as read, for --rejects


def test_a_conflict_across_batches_names_the_earlier_line(db: sa.Engine, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "EVENT_BATCH", 3)
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)
    rows = [[f"e{n}", "c1", "login", f"2024-01-0{n}T00:00:00Z", ""] for n in range(1, 8)]
    rows[5] = ["e2", "c2", "login", "2024-01-02T00:00:00Z", ""]  # line 7: e2 of line 3, other customer
    rows[6] = ["e3", "c1", "login", "2024-01-03T00:00:00Z", ""]  # line 8: e3 of line 4, the same
    report = sync_events(db, write_csv(tmp_path / "events.csv", HEADER, rows))
    (line, reason), = _summary(report)[3]
    assert (line, _summary(report)[:3]) == (7, (7, 5, 1))
    assert reason.endswith("events.csv:3 (customer_id 'c1' there, 'c2' here)")
    assert event(db, "e2")["customer_id"] == "c1"


def test_against_the_database_a_conflict_says_so_and_a_repeat_is_a_duplicate(
        db: sa.Engine, tmp_path: Path) -> None:
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)
    first = write_csv(tmp_path / "a.csv", HEADER, [
        ["e1", "c1", "purchase", "2024-01-01T00:00:00Z", "10"],
        ["e2", "c1", "login", "2024-01-02T00:00:00Z", ""]])
    assert _summary(sync_events(db, first)) == (2, 2, 0, [], 0)
    again = write_csv(tmp_path / "b.csv", HEADER, [
        ["e1", "c1", "purchase", "2024-01-01T01:00:00+01:00", "10"],  # the same instant: duplicate
        ["e3", "c1", "login", "2024-01-03T00:00:00Z", ""],  # new
        ["e2", "c1", "login", "2024-01-05T00:00:00Z", ""],  # another time: conflict
        ["e2", "c1", "login", "2024-01-06T00:00:00Z", ""],  # against the kept one, not line 4
    ])
    report = sync_events(db, again)
    assert _summary(report) == (4, 1, 1, [(4, (
        "conflict: event_id 'e2' has other contents already in the database (occurred_at"
        " '2024-01-02 00:00:00.000000' there, '2024-01-05 00:00:00.000000' here)")), (5, (
        "conflict: event_id 'e2' has other contents already in the database (occurred_at"
        " '2024-01-02 00:00:00.000000' there, '2024-01-06 00:00:00.000000' here)"))], 0)
    assert len(rows_of(db, Event)) == 3


def test_properties_are_compared_as_values(db: sa.Engine, tmp_path: Path) -> None:
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)
    header = ["event_id", "customer_id", "type", "occurred_at", "page", "ref"]
    write = write_csv(tmp_path / "a.csv", header, [["e1", "c1", "view", "2024-01-01", "/a", "x"]])
    sync_events(db, write)
    swapped = write_csv(tmp_path / "b.csv", ["ref", "page", *header[:4]],
                        [["x", "/a", "e1", "c1", "view", "2024-01-01"],
                         ["y", "/a", "e1", "c1", "view", "2024-01-01"]])
    report = sync_events(db, swapped)
    assert (report.duplicates, [c.line for c in report.conflicts]) == (1, [3])
    assert report.conflicts[0].reason.endswith(
        """already in the database (properties {"page": "/a", "ref": "x"} there,"""
        """ {"page": "/a", "ref": "y"} here)""")


def _conflicting_rows(count: int) -> list[list[str]]:
    rows = []
    for n in range(count):
        when = f"2023-{n % 12 + 1:02}-{n % 28 + 1:02}T{n % 24:02}:00:00Z"
        rows.append([f"e{n}", f"c{n % 3 + 1}", "purchase", when, f"{n % 50}.5"])
    for n in range(0, count, 97):  # repeats far apart: some identical, some changed
        again = list(rows[n])
        if n % 2:
            again[4] = "999"
        rows.append(again)
    return rows


def test_the_arrow_path_reports_conflicts_exactly_as_the_row_path(
        db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    customers = write_csv(tmp_path / "customers.csv", ["customer_id"], [["c1"], ["c2"], ["c3"]])
    events = write_csv(tmp_path / "events.csv", HEADER, _conflicting_rows(3000))
    later_rows = _conflicting_rows(3100)[2990:3010]
    for row in later_rows[1::2]:
        row[4] = "7"  # e2991, e2993...: conflicts with the database; e3001...: new
    later = write_csv(tmp_path / "later.csv", HEADER, later_rows)
    monkeypatch.setattr(syncarrow, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(ingest, "EVENT_BATCH", 500)
    results = []
    for threshold in (1 << 62, 0):  # the per-row path, then pyarrow
        monkeypatch.setattr(syncarrow, "MIN_BYTES", threshold)
        engine = open_store(db_url)
        with engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM events")
        sync_customers(engine, customers, now=NOW)
        reports = [sync_events(engine, events), sync_events(engine, later)]
        results.append(([_summary(r) for r in reports], rows_of(engine, Event)))
        engine.dispose()
    (first, later_report), _ = results[0]
    assert first[:3] == (3031, 3000, 16) and len(first[3]) == 15
    assert later_report[1:3] == (10, 5) and len(later_report[3]) == 5
    assert results[1] == results[0]


PROPERTY_PAIRS = {  # event_id: (properties synced first, properties of the re-sync)
    "key-order": ({"page": "/a", "ref": "x"}, {"ref": "x", "page": "/a"}),
    "int-float": ({"qty": 1}, {"qty": 1.0}),
    "top-null": ({"note": None, "qty": 3}, {"qty": 3}),  # a null property is not kept
    "nested-null": ({"meta": {"a": None}}, {"meta": {}}),
    "other-value": ({"qty": 1}, {"qty": 2}),
    "list-order": ({"tags": [1, 2]}, {"tags": [2, 1]}),
    "true-one": ({"flag": True}, {"flag": 1}),
    "unicode": ({"city": "Tromsø"}, {"city": "Tromsø"}),
}


def test_a_resync_compares_properties_as_values_whatever_the_database_sees(
        db: sa.Engine, tmp_path: Path) -> None:
    """The database only picks the rows that may differ; `same` alone decides (both databases).

    jsonb calls key order and 1 vs 1.0 equal, SQLite's text does not; true and 1 are different
    JSON values (Python alone would call them equal). Whatever the database lets through or holds back, the report
    must be the one `same` gives, with the values in the message. One stored event was written
    by another writer (SQLAlchemy's JSON, with spaces), so it differs from sync's text as text.
    """
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)

    def rows(side: int) -> list[dict[str, object]]:
        return [{"event_id": event_id, "customer_id": "c1", "type": "view",
                 "occurred_at": "2024-01-01T00:00:00Z", "properties": pair[side]}
                for event_id, pair in PROPERTY_PAIRS.items()]

    with db.begin() as connection:
        connection.execute(sa.insert(Event.__table__), [{
            "event_id": "spaced", "customer_id": "c1", "type": "view", "amount": 5.0,
            "occurred_at": datetime(2024, 1, 1, tzinfo=UTC), "properties": {"a": 1, "b": "x"}}])
    assert sync_events(db, write_jsonl(tmp_path / "a.jsonl", rows(0))).inserted == len(PROPERTY_PAIRS)
    spaced = {"event_id": "spaced", "customer_id": "c1", "type": "view", "amount": 5,
              "occurred_at": "2024-01-01T00:00:00Z", "properties": {"b": "x", "a": 1.0}}
    report = sync_events(db, write_jsonl(tmp_path / "b.jsonl", [*rows(1), spaced]))

    judged = {old["event_id"]: same(contents(event_values(old)), contents(event_values(new)))
              for old, new in zip(rows(0), rows(1), strict=True)}  # as parsed, in Python
    assert not judged["true-one"]  # JSON true is not 1, though Python's True == 1
    conflicting = [event_id for event_id, agree in judged.items() if not agree]
    assert conflicting == ["nested-null", "other-value", "list-order", "true-one"]
    assert (report.read, report.inserted, report.duplicates) == (9, 0, 9 - len(conflicting))
    assert [c.line for c in report.conflicts] == [
        list(PROPERTY_PAIRS).index(event_id) + 1 for event_id in conflicting]
    assert [c.reason.split(" already in the database ")[1] for c in report.conflicts] == [
        """(properties {"meta": {"a": null}} there, {"meta": {}} here)""",
        """(properties {"qty": 1} there, {"qty": 2} here)""",
        """(properties {"tags": [1, 2]} there, {"tags": [2, 1]} here)""",
        """(properties {"flag": true} there, {"flag": 1} here)"""]


def test_a_resync_reads_back_only_the_rows_that_differ(db: sa.Engine, tmp_path: Path) -> None:
    """The database compares a re-synced batch; only a conflicting row's stored event is read.

    Reading every known event back to compare in Python halved re-sync speed on PostgreSQL.
    """
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)
    rows = [[f"e{n}", "c1", "purchase", f"2024-01-{n % 28 + 1:02}T00:00:00Z", f"{n}.5"]
            for n in range(50)]
    sync_events(db, write_csv(tmp_path / "a.csv", HEADER, rows))
    rows[20][4] = "99"
    read_back: list[Any] = []

    def spy(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.startswith("SELECT event_id, id, customer_id"):
            read_back.extend(parameters[0] if statement.endswith("ANY(%s)") else parameters)

    sa.event.listen(db, "before_cursor_execute", spy)
    try:
        report = sync_events(db, write_csv(tmp_path / "b.csv", HEADER, rows))
    finally:
        sa.event.remove(db, "before_cursor_execute", spy)
    assert (report.duplicates, [c.line for c in report.conflicts]) == (49, [22])
    assert report.conflicts[0].reason.endswith("(amount 20.5 there, 99.0 here)")
    assert read_back == ["e20"]
