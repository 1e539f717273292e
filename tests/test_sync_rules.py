"""The per-type rules of an event row (engine/sync/rows.py TYPE_RULES), alike on every path.

A purchase with a negative amount is rejected (a refund is a `return`); a feedback score outside
0-10 is rejected; a feedback without a score is kept and listed as a warning (it may be a comment,
but it is no NPS answer). The real data sets have no negative purchase (their cancellations are
`return` events with negative amounts), so they load as before: tests/test_datasets.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from test_sync import FIXTURES, NOW, rows_of, write_csv

import engine.sync.arrow as syncarrow
from engine.store.open import open_store
from engine.store.tables import Event
from engine.sync.ingest import sync_customers, sync_events
from engine.sync.rows import RowProblem, event_values

HEADER = ["event_id", "customer_id", "type", "occurred_at", "amount", "score"]
ROWS = [
    ["p1", "c1", "purchase", "2024-01-01T00:00:00Z", "10", ""],
    ["p2", "c1", "purchase", "2024-01-02T00:00:00Z", "-5", ""],
    ["r1", "c1", "return", "2024-01-03T00:00:00Z", "-5", ""],
    ["f1", "c1", "feedback", "2024-01-04T00:00:00Z", "", "9"],
    ["f2", "c1", "feedback", "2024-01-05T00:00:00Z", "", ""],
    ["f3", "c1", "feedback", "2024-01-06T00:00:00Z", "", "11"],
    ["f4", "c1", "feedback", "2024-01-07T00:00:00Z", "", "-1"],
    ["p3", "c1", "purchase", "2024-01-08T00:00:00Z", "", ""],
]
NEGATIVE = ("purchase amount -5: cannot be negative; a refund or cancellation is its own event"
            " type (e.g. `return`, whose amount may be negative)")
NO_SCORE = ("feedback score missing: kept, but it is no NPS answer: negative_feedback and the NPS"
            " report skip it, and last_feedback_score reads none until the next scored feedback")


def test_rules_reject_or_warn_by_line(db: sa.Engine, tmp_path: Path) -> None:
    sync_customers(db, FIXTURES / "customers.csv", now=NOW)
    report = sync_events(db, write_csv(tmp_path / "events.csv", HEADER, ROWS))
    assert [(r.line, r.reason) for r in report.rejected] == [
        (3, NEGATIVE), (7, "feedback score 11: must be from 0 to 10 (NPS)"),
        (8, "feedback score -1: must be from 0 to 10 (NPS)")]
    assert [(w.line, w.reason) for w in report.warnings] == [(6, NO_SCORE)]
    assert report.summary() == ("read 8, inserted 5, duplicates 0, conflicts 0, rejected 3,"
                                " warnings 1")
    assert sorted(e["event_id"] for e in rows_of(db, Event)) == ["f1", "f2", "p1", "p3", "r1"]


def test_the_checked_path_gives_every_reason_and_no_rule_for_a_bad_number() -> None:
    row = {"event_id": "", "customer_id": "c1", "type": "purchase", "occurred_at": "x",
           "amount": "-3"}
    with pytest.raises(RowProblem) as found:
        event_values(row)
    assert str(found.value) == ("missing event_id; bad occurred_at 'x': not an ISO 8601 time; "
                                "purchase amount -3: cannot be negative; a refund or"
                                " cancellation is its own event type (e.g. `return`, whose"
                                " amount may be negative)")
    with pytest.raises(RowProblem, match=r"^bad score 'ten': not a number$"):
        event_values({**row, "event_id": "e", "occurred_at": "2024-01-01", "amount": "",
                      "type": "feedback", "score": "ten"})


def test_the_arrow_path_applies_the_same_rules(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [[f"{kind[0]}{n}", "c1", kind, f"2024-01-{n % 28 + 1:02}T00:00:00Z", amount, score]
            for n in range(400)
            for kind, amount, score in [(("purchase", "feedback")[n % 2],
                                         ("12.5", "-1", "")[n % 3], ("", "4", "-2", "10")[n // 2 % 4])]]
    events = write_csv(tmp_path / "events.csv", HEADER, rows)
    customers = write_csv(tmp_path / "customers.csv", ["customer_id"], [["c1"]])
    monkeypatch.setattr(syncarrow, "BLOCK_BYTES", 2048)
    results = []
    for name, threshold in (("row", 1 << 62), ("arrow", 0)):
        monkeypatch.setattr(syncarrow, "MIN_BYTES", threshold)
        engine = open_store(f"sqlite:///{tmp_path}/{name}.db")
        sync_customers(engine, customers, now=NOW)
        report = sync_events(engine, events)
        results.append((report.summary(), report.rejected, report.warnings,
                        rows_of(engine, Event)))
        engine.dispose()
    assert results[0][1] and results[0][2]
    assert results[1] == results[0]
