"""The pyarrow fast path for large CSV event files gives exactly what the per-row path gives."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_sync import NOW, rows_of, write_csv

import engine.sync.arrow as syncarrow
from engine.store.open import open_store
from engine.store.tables import Customer, Event
from engine.sync.ingest import SyncReport, sync_customers, sync_events

HEADER = ["event_id", "customer_id", "type", "occurred_at", "amount", "score", "page", "note",
          "_reason"]
ODD_TIMES = ["2023-02-30T00:00:00", "yesterday", "", "2023-01-01T24:00:00", "2023-13-01T00:00:00",
             "2023-01-01T00:00:00.5", "2023-01-01", "0001-01-01T00:00:00+01:00",
             "9999-12-31T23:00:00-05:00", "2023-06-01 10:00:00.123-05:30", "2023-06-01T10:00:00+05:30",
             " 2023-06-01T10:00:00Z ", "2023-06-01T10:00:00.123456Z", "2023-06-01T10:00:00-00:00",
             "2024-02-29 23:59:59", "2023-01-01T23:59:60", "20230601T100000", "2023-06-01T10:00"]
ODD_NUMBERS = ["abc", "1e999", "nan", "inf", "1_000", "+5", " 3.5 ", "-0", ".5", "5.", "1e-3", ""]
ODD_TEXT = ["", "/pricing", "café", "a\\b", "x\ty", " padded ", "\u00a0nbsp", "{}"]


def _rows(count: int, seed: int, texts: list[str] = ODD_TEXT) -> list[list[Any]]:
    pick = random.Random(seed).choice
    rows = []
    for number in range(count):
        event_id = f"e{pick(range(count // 2)) if number % 7 == 0 else number}"  # duplicates
        customer_id = pick(["c1", "c2", "c3", " c1 ", "", "nobody"] + ["c1", "c2"] * 10)
        kind = pick(["login", "purchase", " page_view", "", "feedback"] + ["login"] * 10)
        when = (pick(ODD_TIMES) if number % 3 == 0
                else f"2023-{number % 12 + 1:02}-{number % 28 + 1:02}T{number % 24:02}:00:00Z")
        amount, score = (pick(ODD_NUMBERS) for _ in range(2))
        page, note = (pick(texts) for _ in range(2))
        rows.append([pick(["", " ", event_id]) if number % 50 == 0 else event_id, customer_id,
                     kind, when, amount, score, page, note, pick(["", "old reason"])])
    return rows


def _both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          events: Path) -> list[tuple[SyncReport, list[Any], list[Any]]]:
    customers = write_csv(tmp_path / "customers.csv", ["customer_id", "email"],
                          [["c1", "a@example.com"], ["c2", ""], ["c3", "c@example.com"]])
    parsed = []
    real_parse = syncarrow._parse
    monkeypatch.setattr(syncarrow, "_parse", lambda *a: parsed.append(1) or real_parse(*a))
    monkeypatch.setattr(syncarrow, "BLOCK_BYTES", 2048)
    results = []
    for name, threshold in (("old", 1 << 62), ("arrow", 0)):
        monkeypatch.setattr(syncarrow, "MIN_BYTES", threshold)
        engine = open_store(f"sqlite:///{tmp_path}/{name}.db")
        sync_customers(engine, customers, now=NOW)
        report = sync_events(engine, events)
        results.append((report, rows_of(engine, Event), rows_of(engine, Customer)))
        engine.dispose()
    results.append(len(parsed))  # type: ignore[arg-type]
    return results  # [old, arrow, blocks parsed by pyarrow]


@pytest.mark.parametrize("texts", [ODD_TEXT, ["", "/pricing", " padded ", "{}"]])
def test_mixed_rows_give_the_same_report_and_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   texts: list[str]) -> None:
    events = write_csv(tmp_path / "events.csv", HEADER, _rows(3000, 1, texts))
    old, arrow, blocks = _both(tmp_path, monkeypatch, events)
    assert blocks > 10
    assert old[0].rejected and old[0].conflicts and old[0].inserted
    assert {"unknown customer" in r.reason for r in old[0].rejected} == {True, False}
    assert arrow == old


def test_a_line_with_the_wrong_width_goes_on_per_row(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    events = write_csv(tmp_path / "events.csv", HEADER, _rows(2000, 2))
    lines = events.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[900:900] = ["e1,c1,login\n", "   \n"]
    events.write_text("".join(lines), encoding="utf-8")
    old, arrow, blocks = _both(tmp_path, monkeypatch, events)
    assert blocks > 3
    assert any("expected 9 fields" in r.reason and r.line == 901 for r in old[0].rejected)
    assert arrow == old


@pytest.mark.parametrize("extra", ['e9,c1,login,2023-01-01T00:00:00Z,,,"two\nlines",,\n',
                                   "\n", "\r\n"])
def test_files_whose_lines_are_not_records_take_the_per_row_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str) -> None:
    events = write_csv(tmp_path / "events.csv", HEADER, _rows(500, 3))
    with events.open("a", encoding="utf-8", newline="") as handle:
        handle.write(extra)
        handle.write("e10,c2,login,2023-01-01T00:00:00Z,,,,,\n")
    old, arrow, blocks = _both(tmp_path, monkeypatch, events)
    assert blocks == 0
    assert arrow == old


def test_a_plain_file_is_all_parsed_by_column(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [[f"e{n}", f"c{n % 3 + 1}", "purchase", f"2023-05-{n % 28 + 1:02}T10:00:0{n % 10}Z",
             f"{n}.25", "", "/p" if n % 2 else "", "", ""] for n in range(1000)]
    events = write_csv(tmp_path / "events.csv", HEADER, rows)
    old, arrow, blocks = _both(tmp_path, monkeypatch, events)
    assert blocks > 3 and old[0].inserted == 1000
    assert arrow == old
    with sa.create_engine(f"sqlite:///{tmp_path}/arrow.db").connect() as connection:
        stored = connection.exec_driver_sql(
            "SELECT occurred_at, amount, properties FROM events WHERE event_id = 'e1'").one()
    assert tuple(stored) == ("2023-05-02 10:00:01.000000", 1.25, '{"page":"/p"}')


def test_a_file_parsed_by_column_is_a_bulk_load(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A CSV file large enough for the column parser is a bulk load, however few rows each of
    its blocks holds (about 4,500 events in 256 KB): its first load drops the events' indexes
    and builds them after. The same rows read one by one are a small load: they keep them."""
    rows = [[f"e{n}", f"c{n % 3 + 1}", "purchase", "2023-05-01T10:00:00Z", "1", "", "", "", ""]
            for n in range(300)]
    events = write_csv(tmp_path / "events.csv", HEADER, rows)
    customers = write_csv(tmp_path / "customers.csv", ["customer_id"], [["c1"], ["c2"], ["c3"]])
    monkeypatch.setattr(syncarrow, "BLOCK_BYTES", 2048)
    dropped = {}
    for name, threshold in (("rows", 1 << 62), ("columns", 0)):
        monkeypatch.setattr(syncarrow, "MIN_BYTES", threshold)
        engine = open_store(f"sqlite:///{tmp_path}/{name}.db")
        sync_customers(engine, customers, now=NOW)
        seen: list[str] = []

        def statement(conn: Any, cursor: Any, sql: str, *rest: Any, seen: list[str] = seen
                      ) -> None:
            seen.append(sql)

        sa.event.listen(engine, "before_cursor_execute", statement)
        assert sync_events(engine, events).inserted == 300
        dropped[name] = [sql for sql in seen if "DROP INDEX" in sql.upper()]
        engine.dispose()
    assert dropped["rows"] == []
    assert any("events" in sql for sql in dropped["columns"])
