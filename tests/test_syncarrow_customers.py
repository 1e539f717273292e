"""The pyarrow fast path for large CSV customer files gives exactly what the per-row path gives.

Both paths sync the same file into the same database (SQLite and PostgreSQL), one after the
other from the same starting state: the reports and every stored column must be equal, for rows
the fast path vouches for and for the ones it hands to the per-row code (odd values, ids
repeated within a block or across blocks, customers that exist already).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_sync import NOW, rows_of, write_csv

import engine.sync.arrow as syncarrow
import engine.sync.arrow_customers as arrow_customers
from engine.store.tables import Customer
from engine.sync.ingest import SyncReport, sync_customers

HEADER = ["customer_id", "email", "name", "created_at", "birthday", "timezone", "country",
          "segment", "tags", "plan", "_reason"]
IDS = [f"c{n}" for n in range(400)] + [" c1 ", "", "c1", "c2", "007"]
EMAILS = ["a@example.com", "a@b", "x y@example.com", "", "a@@b.com", "é@example.com",
          "first.last@mail.example.net", "@example.com", "a@b.c", " pad@example.com "]
TIMES = ["2023-02-30T00:00:00", "yesterday", "", "2023-01-01T24:00:00", "2023-01-01",
         "0001-01-01T00:00:00+01:00", "2023-06-01 10:00:00.123-05:30", " 2023-06-01T10:00:00Z ",
         "2023-06-01T10:00:00.123456Z", "2024-02-29 23:59:59", "20230601T100000"]
BIRTHDAYS = ["1990-04-29", "2024-02-30", "1990-1-1", "19900101", "", "0000-01-01", "2024-02-29",
             "1990-04-29T00:00:00", "9999-12-31", " 1970-01-01 "]
ZONES = ["Europe/London", "Mars/Base", "", "europe/london", "UTC", "America/New_York", "Etc/GMT+5"]
TAGS = ["vip, beta", "vip", "", " , ", "a,a,b", "newsletter", "x\ty", "café"]
TEXTS = ["", "Ada", "Zoë", " padded ", "a\\b", "{}", "GB"]


def _rows(count: int, seed: int) -> list[list[Any]]:
    pick = random.Random(seed).choice
    rows = []
    for number in range(count):
        when = (pick(TIMES) if number % 3 == 0
                else f"2023-{number % 12 + 1:02}-{number % 28 + 1:02}T{number % 24:02}:00:00Z")
        plain = number % 4 != 0  # most rows are plain, as in a real export
        rows.append([
            f"c{number}" if plain and number % 9 else pick(IDS),
            f"u{number}@example.com" if plain else pick(EMAILS),
            f"Name {number}" if plain else pick(TEXTS), when,
            "1980-05-17" if plain else pick(BIRTHDAYS),
            "Europe/Oslo" if plain else pick(ZONES), pick(TEXTS), pick(["gold", "", "silver"]),
            pick(["", "vip", "vip, beta"]) if plain else pick(TAGS),
            pick(["free", "", "premium"]), pick(["", "old reason"])])
    return rows


def _sync_both(db: sa.Engine, monkeypatch: pytest.MonkeyPatch, customers: Path,
               before: list[list[Any]]) -> list[tuple[SyncReport, list[Any]]]:
    """Sync `customers` per row, then (from the same start) by column; the reports and rows."""
    parsed = []
    real_parse = arrow_customers.parse_customers
    monkeypatch.setattr(arrow_customers, "parse_customers",
                        lambda *a: parsed.append(1) or real_parse(*a))
    monkeypatch.setattr(arrow_customers, "BLOCK_BYTES", 4096)
    results = []
    for threshold in (1 << 62, 0):
        with db.begin() as connection:
            connection.exec_driver_sql("DELETE FROM customers")
        if before:
            monkeypatch.setattr(syncarrow, "MIN_BYTES", 1 << 62)
            sync_customers(db, write_csv(customers.with_name("before.csv"), HEADER, before),
                           now=NOW)
        monkeypatch.setattr(syncarrow, "MIN_BYTES", threshold)
        report = sync_customers(db, customers, now=NOW)
        results.append((report, rows_of(db, Customer)))
    assert parsed, "the fast path was not taken"
    return results


def _as_compared(result: tuple[SyncReport, list[Any]]) -> tuple[Any, ...]:
    report, rows = result
    return (report.summary(), [(r.line, r.reason, r.raw) for r in report.rejected],
            report.warnings, rows)


def test_mixed_rows_give_the_same_report_and_customers(db: sa.Engine, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Odd cells, repeated ids (in a block, across blocks), a first load."""
    customers = write_csv(tmp_path / "customers.csv", HEADER, _rows(1500, 1))
    old, arrow = _sync_both(db, monkeypatch, customers, [])
    assert old[0].rejected and old[0].updated and old[0].inserted
    assert _as_compared(arrow) == _as_compared(old)


def test_customers_that_exist_are_updated_per_row(db: sa.Engine, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A file over customers synced before: the existing ones go per row (updated, unchanged)."""
    rows = _rows(1200, 2)
    before = [row[:2] + ["Old", "", "", "", "", "", "old", "", ""] for row in rows[::5]]
    customers = write_csv(tmp_path / "customers.csv", HEADER, rows)
    old, arrow = _sync_both(db, monkeypatch, customers, before)
    assert old[0].updated and old[0].inserted
    assert _as_compared(arrow) == _as_compared(old)


def test_a_plain_file_is_all_parsed_by_column(db: sa.Engine, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [[f"c{n}", f"u{n}@example.com", f"N {n}", "2024-05-29T19:49:43Z", "1990-04-29",
             "Europe/London", "GB", "gold", "vip, beta" if n % 2 else "", "free", ""]
            for n in range(1000)]
    customers = write_csv(tmp_path / "customers.csv", HEADER, rows)
    seen: list[int] = []
    real = arrow_customers.write_customer_batch

    def counting(connection: Any, batch: Any, *rest: Any) -> Any:
        seen.append(len(batch.slow))
        return real(connection, batch, *rest)

    monkeypatch.setattr("engine.sync.ingest.write_customer_batch", counting)
    old, arrow = _sync_both(db, monkeypatch, customers, [])
    assert len(seen) > 3 and not any(seen)  # every row parsed by column
    assert _as_compared(arrow) == _as_compared(old)
    stored = next(row for row in arrow[1] if row["customer_id"] == "c1")
    assert stored["tags"] == stored["file_tags"] == ["vip", "beta"]
    assert stored["attributes"] == {"plan": "free"}
    assert stored["last_active_at"] == stored["created_at"]


@pytest.mark.parametrize("extra", ['c9,"a@example.com",x,,,,,,"two\nlines",,\n',
                                   'c9,a@exa"mple.com,x,,,,,,,,\n', 'c9,"a""b",x,,,,,,,,\n'])
def test_files_with_other_quotes_take_the_per_row_path(db: sa.Engine, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       extra: str) -> None:
    customers = write_csv(tmp_path / "customers.csv", HEADER, _rows(300, 3))
    with customers.open("a", encoding="utf-8", newline="") as handle:
        handle.write(extra)
    monkeypatch.setattr(syncarrow, "MIN_BYTES", 0)
    with customers.open(encoding="utf-8") as handle:
        assert syncarrow._scan(customers, quotes=True) is None, handle.name
