"""Reading sync files: gzip, encodings, unreadable lines and whole-file errors, per backend."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine.errors import DataFileError
from engine.store.open import open_store
from engine.store.tables import Customer, Event
from engine.sync.ingest import RowError, SyncReport, read_rows, sync_customers, sync_events

FIXTURES = Path(__file__).parent / "fixtures" / "sync"
NOW = datetime(2025, 1, 1, tzinfo=UTC)
EVENT = {"event_id": "e1", "customer_id": "c1", "type": "purchase",
         "occurred_at": "2024-01-01T00:00:00Z"}


def counts(report: SyncReport) -> tuple[int, int, int, int, int]:
    return (report.read, report.inserted, report.updated, report.duplicates,
            len(report.rejected))


def event_ids(engine: sa.Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(sa.select(Event.event_id).order_by(Event.event_id))
                    .scalars())


def purchases_of(engine: sa.Engine, customer_id: str) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.select(Customer.purchase_count).where(
            Customer.customer_id == customer_id)).scalar_one()


def event_type(engine: sa.Engine, event_id: str) -> str:
    with engine.connect() as connection:
        return connection.execute(sa.select(Event.type).where(Event.event_id == event_id)
                                  ).scalar_one()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_unreadable_lines_are_rejected_with_their_text(db: sa.Engine, tmp_path: Path) -> None:
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)
    good = json.dumps(EVENT)
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text(f'{good}\n{{"event_id": "e2",\n[1, 2]\n\n', encoding="utf-8")
    report = sync_events(db, jsonl)
    assert counts(report) == (3, 1, 0, 0, 2)
    assert report.rejected == [
        RowError(2, "not valid JSON: Expecting property name enclosed in double quotes at column"
                    " 19", '{"event_id": "e2",'),
        RowError(3, "not a JSON object", "[1, 2]")]
    path = tmp_path / "e.csv"
    path.write_text("event_id,customer_id,type,occurred_at\ne1,c1,login\n"
                    'e3,c1,login,2024-01-01,extra\ne4,c1,"multi\nline",2024-01-01\n'
                    "e5,c1,login\n", encoding="utf-8")
    report = sync_events(db, path)
    assert [(e.line, e.reason) for e in report.rejected] == [
        (2, "expected 4 fields as in the header, found 3"),
        (3, "expected 4 fields as in the header, found 5"),
        (6, "expected 4 fields as in the header, found 3")]  # the quoted cell spans lines 4-5
    assert event_type(db, "e4") == "multi\nline"


def test_gzip_files_are_read_like_plain_ones(db: sa.Engine, tmp_path: Path) -> None:
    for name in ("customers.csv", "events.jsonl"):
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress((FIXTURES / name).read_bytes()))
    assert counts(sync_customers(db, tmp_path / "customers.csv.gz", now=NOW)) == (4, 4, 0, 0, 0)
    assert counts(sync_events(db, tmp_path / "events.jsonl.gz")) == (8, 8, 0, 0, 0)
    unnamed = tmp_path / "events.data"
    unnamed.write_bytes(gzip.compress((FIXTURES / "events.csv").read_bytes()))
    assert counts(sync_events(db, unnamed, fmt="csv")) == (8, 0, 0, 8, 0)


# --- whole-file problems ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.csv", None, "missing.csv: no such file"),
    ("events.txt", "x", "events.txt: unknown file format; name it .csv or .jsonl (optionally .gz)"
                        " or pass --format csv|jsonl"),
    ("empty.csv", "", "empty.csv: empty file; a CSV file starts with a header line"),
    ("short.csv", "event_id,type\n", "short.csv:1: the header lacks the column(s) customer_id,"
                                     " occurred_at that a events file needs"),
    ("twice.csv", "event_id,type,type\n", "twice.csv:1: column 'type' appears twice in the header"),
    ("latin1.csv", "event_id,customer_\xefd,type,occurred_at\n",
     "latin1.csv:1: the header is not usable: not UTF-8 text"),
])
def test_a_file_that_cannot_be_read_is_a_data_file_error(sqlite_url: str, tmp_path: Path,
                                                         name: str, content: str | None,
                                                         message: str) -> None:
    engine = open_store(sqlite_url)
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content.encode("latin-1"))
    with pytest.raises(DataFileError) as caught:
        sync_events(engine, path)
    assert str(caught.value).replace(str(tmp_path) + "/", "").startswith(message)
    engine.dispose()


def test_rows_before_a_truncated_gzip_end_are_kept(db: sa.Engine, tmp_path: Path) -> None:
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)
    lines = [f"e{n},c1,purchase,2024-01-01T00:00:{n % 60:02}Z\n" for n in range(3000)]
    content = gzip.compress(("event_id,customer_id,type,occurred_at\n" + "".join(lines)).encode())
    path = tmp_path / "e.csv.gz"
    path.write_bytes(content[:-40])
    with pytest.raises(DataFileError, match="cannot read after line .*: Compressed file ended") as e:
        sync_events(db, path)
    landed = len(event_ids(db))
    assert 2000 < landed < 3000
    assert f"synced up to there: read {landed}, inserted {landed}" in str(e.value)
    assert purchases_of(db, "c1") == landed  # facts refreshed for what landed


def test_a_line_that_is_not_utf8_is_rejected_alone(db: sa.Engine, tmp_path: Path) -> None:
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)
    path = tmp_path / "e.csv"
    path.write_bytes(b"event_id,customer_id,type,occurred_at\ne1,c1,login,2024-01-01\n"
                     b"e2,c\xe9,login,2024-01-02\ne3,c1,login,2024-01-03\n")
    report = sync_events(db, path)
    assert counts(report) == (3, 2, 0, 0, 1)
    assert report.rejected == [RowError(3, "not UTF-8 text (invalid bytes shown as \ufffd)", {
        "event_id": "e2", "customer_id": "c\ufffd", "type": "login",
        "occurred_at": "2024-01-02"})]
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_bytes(b'{"event_id": "x\xff"}\n')
    assert sync_events(db, jsonl).rejected[0].line == 1


def test_values_postgresql_cannot_store_are_rejected_on_both_backends(db: sa.Engine,
                                                                      tmp_path: Path) -> None:
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)
    path = tmp_path / "e.csv"
    path.write_bytes(b"event_id,customer_id,type,occurred_at,note\n"
                     b"e1,c1,login,2024-01-01,a\x00b\ne2,c1,login,2024-01-02,ok\n")
    report = sync_events(db, path)
    assert [(e.line, e.reason) for e in report.rejected] == [(2, "contains a NUL character")]
    jsonl = write_jsonl(tmp_path / "e.jsonl", [
        {**EVENT, "event_id": "e3", "properties": {"ratio": float("nan")}},
        {**EVENT, "event_id": "e4", "properties": {"note": "a\u0000b"}}])
    assert [(e.line, e.reason) for e in sync_events(db, jsonl).rejected] == [
        (1, "bad properties: NaN and Infinity are not numbers JSON can store"),
        (2, "contains a NUL character")]
    customers = write_jsonl(tmp_path / "c.jsonl", [{"customer_id": "c9", "score": float("inf")}])
    assert [(e.line, e.reason) for e in sync_customers(db, customers).rejected] == [
        (1, "bad attributes: NaN and Infinity are not numbers JSON can store")]
    assert event_ids(db) == ["e2"]


def test_read_rows_streams_csv_and_jsonl(tmp_path: Path) -> None:
    assert next(read_rows(FIXTURES / "customers.csv", None))[0] == 2
    rows = list(read_rows(FIXTURES / "customers.jsonl", None))
    assert [line for line, _ in rows] == [1, 2, 4, 5]  # the blank line 3 is skipped
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffcustomer_id, name \nc1, Ada \n".encode())
    assert list(read_rows(bom, "csv")) == [(2, {"customer_id": "c1", "name": "Ada"})]
