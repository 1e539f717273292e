"""`retain report retention` on real SQLite and PostgreSQL.

Three kinds of evidence: DESIGN section 1's worked examples, each built as customers and events
whose activity produces exactly that S, N and E (never by calling the formula); a sample of the
real Online Retail data checked period by period against a plain pandas computation; and random
histories (hypothesis on SQLite, a seeded set on both backends) checked against a brute-force
reading of the definitions, with small mask words so that many-word masks are exercised too.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import SHARED_DATA, Cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import iso
from engine.format.durations import parse_duration
from engine.reports import retention
from engine.reports.periods import PeriodKind
from engine.store.facts import ENGINE_EVENT_TYPES, customers, events
from engine.store.open import open_store
from engine.sync.datasets import dataset_rows
from engine.sync.ingest import ingest_customers, ingest_events

NOW = datetime(2025, 1, 1, tzinfo=UTC)
TICK = timedelta(microseconds=1)
RETAIL = SHARED_DATA / "online_retail.csv.gz"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def load(engine: sa.Engine, people: dict[str, str], happenings: list[tuple[str, str, str]]
         ) -> None:
    """Customers (id -> created_at) then events (customer, type, time), through sync's ingest."""
    ingest_customers(engine, list(enumerate(({"customer_id": c, "created_at": created}
                                             for c, created in people.items()), 2)),
                     "test", now=NOW)
    ingest_events(engine, list(enumerate(
        ({"event_id": f"e{i}", "customer_id": c, "type": kind, "occurred_at": when}
         for i, (c, kind, when) in enumerate(happenings)), 2)), "test")


def report(engine: sa.Engine, **options: Any) -> dict[str, Any]:
    with engine.connect() as connection:
        return retention.build(connection, **options).to_json()


def period(document: dict[str, Any], label: str) -> dict[str, Any]:
    return next(p for p in document["periods"] if p["label"] == label)


# --- DESIGN section 1's worked examples, as data ------------------------------------------------


def worked_example(start: int, new: int, end: int, returned: int, later: bool = True
                   ) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Customers and events whose March 2024 (default 90-day window) has this S, N and E.

    At 2024-03-01 a customer counts with an activity event in [2023-12-02, 2024-03-01); at
    2024-04-01 with one in [2024-01-02, 2024-04-01). So: kept customers act on 2024-02-15 (inside
    both windows; half also act in March), lost ones last acted on 2023-12-25 (only inside the
    first; still inside the window of 2024-03-20, so a report cut at the latest event would
    keep them), joined ones first act on 2024-03-10, returned ones acted in June 2023 (long lapsed)
    and again on 2024-03-12. Lost customers get an email in March: engine events are not
    activity. With `later`, one customer acting in June 2024 takes the data past March; without,
    the latest activity is on 2024-03-20, and March, which has ended, is whole all the same.
    """
    kept = end - new
    people: dict[str, str] = {}
    happenings: list[tuple[str, str, str]] = []
    for i in range(kept):
        people[f"k{i}"] = "2023-05-01"
        happenings.append((f"k{i}", "purchase", "2024-02-15T10:00:00Z"))
        if i % 2:
            happenings.append((f"k{i}", "login", "2024-03-20T10:00:00Z"))
    for i in range(start - kept):
        people[f"l{i}"] = "2023-05-01"
        happenings.append((f"l{i}", "purchase", "2023-12-25T10:00:00Z"))
        happenings.append((f"l{i}", "email_sent", "2024-03-25T10:00:00Z"))
    for i in range(new - returned):
        people[f"j{i}"] = "2024-03-10"
        happenings.append((f"j{i}", "purchase", "2024-03-10T10:00:00Z"))
    for i in range(returned):
        people[f"r{i}"] = "2023-05-01"
        happenings.append((f"r{i}", "purchase", "2023-06-01T10:00:00Z"))
        happenings.append((f"r{i}", "login", "2024-03-12T10:00:00Z"))
    if later:
        people["later"] = "2024-06-01"
        happenings.append(("later", "purchase", "2024-06-01T10:00:00Z"))
    return people, happenings


@pytest.mark.parametrize(("start", "new", "end", "returned", "crr"), [
    (50, 20, 60, 5, 80.0),
    (200, 50, 220, 20, 85.0),
    (500, 50, 480, 10, 86.0),
])
def test_worked_examples_arise_from_activity(db: sa.Engine, start: int, new: int, end: int,
                                             returned: int, crr: float) -> None:
    load(db, *worked_example(start, new, end, returned))
    march = period(report(db), "2024-03")
    assert march == {
        "label": "2024-03", "start": "2024-03-01T00:00:00Z", "end": "2024-04-01T00:00:00Z",
        "start_customers": start, "end_customers": end, "joined_customers": new - returned,
        "returned_customers": returned, "kept_customers": end - new,
        "lost_customers": start - (end - new), "crr": crr, "churn_rate": 100 - crr,
        "partial": False}


def test_a_period_that_ended_is_whole_however_old_the_latest_event(db: sa.Engine) -> None:
    """DESIGN's S=50, E=60, 80% with no event after 2024-03-20: March has ended, so E is
    counted at April 1. Cut at the latest event (the old behaviour) the 10 lost customers, last
    active on 2023-12-25, were still inside the window and it read 100%. A note says the latest
    event is 12 days before March ends. March running past --as-of is partial, cut there."""
    load(db, *worked_example(50, 20, 60, 5, later=False))
    document = report(db)
    march = period(document, "2024-03")
    assert (march["end"], march["start_customers"], march["end_customers"], march["crr"],
            march["partial"]) == ("2024-04-01T00:00:00Z", 50, 60, 80.0, False)
    assert document["latest_event"] == "2024-03-20T10:00:00Z"
    assert document["notes"] == ["latest event 2024-03-20, 12 days before 2024-03 ends: "
                                 "customers with no later activity count as lapsed"]
    cut = report(db, now=utc("2024-03-25"))
    march = period(cut, "2024-03")
    assert (march["end"], march["partial"], march["end_customers"]) == (
        "2024-03-25T00:00:00Z", True, 60)
    assert cut["as_of"] == "2024-03-25T00:00:00Z" and cut["notes"] == []
    # Cut at 03-15 the lost customers' December 25 is still inside the window: all 50 kept.
    before = period(report(db, now=utc("2024-03-15")), "2024-03")
    assert (before["end"], before["partial"], before["kept_customers"], before["crr"]) == (
        "2024-03-15T00:00:00Z", True, 50, 100.0)


def test_worked_example_through_the_cli(cli: Cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    load(open_store(url), *worked_example(50, 20, 60, 5, later=False))
    code, out, err = cli(["--db", url, "report", "retention", "--from", "2024-03-01",
                          "--to", "2024-04-01", "--json"])
    assert code == 0, err
    document = json.loads(out)
    assert [(p["label"], p["start_customers"], p["end_customers"],
             p["joined_customers"] + p["returned_customers"], p["crr"], p["churn_rate"])
            for p in document["periods"]] == [("2024-03", 50, 60, 20, 80.0, 20.0)]
    assert document["active_window"] == "90d" and document["activity"] is None

    code, out, err = cli(["--db", url, "report", "retention", "--from", "2024-03-01",
                          "--to", "2024-04-01"])
    assert code == 0, err
    row = next(line for line in out.splitlines() if "2024-03" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == [
        "2024-03", "50", "15", "5", "40", "60", "80.00"]  # churn % only with --wide
    assert "Note: latest event 2024-03-20, 12 days before 2024-03 ends" in " ".join(out.split())

    code, out, err = cli(["--db", url, "report", "retention", "--from", "2024-03-01",
                          "--to", "2024-04-01", "--wide"])
    assert code == 0, err
    row = next(line for line in out.splitlines() if "2024-03" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == [
        "2024-03", "50", "15", "5", "40", "60", "80.00", "20.00"]


def test_engine_events_and_the_activity_option(db: sa.Engine) -> None:
    load(db, *worked_example(50, 20, 60, 5))
    # Every other kept customer acted again by login in March; with only purchases counting,
    # returned customers (back by login) are not counted at the end, nor "k" customers' logins.
    purchases = period(report(db, activity=["purchase"]), "2024-03")
    assert (purchases["start_customers"], purchases["end_customers"],
            purchases["joined_customers"], purchases["returned_customers"]) == (50, 55, 15, 0)
    # Counting the engine's emails makes the lost customers count at the end (back in March).
    emails = period(report(db, activity=["purchase", "login", "email_sent"]), "2024-03")
    assert (emails["kept_customers"], emails["returned_customers"]) == (50, 5)
    assert emails["crr"] == 100.0
    # A type with no events (a typo) is named, not silently ignored.
    typo = report(db, activity=["purchase", "purchses"])
    assert typo["activity_types_without_events"] == ["purchses"]
    with db.connect() as connection:
        (sheet, *_) = retention.build(connection, activity=["purchase", "purchses"]).sheets()
    assert "no events of type purchses (did you mean 'purchase'?)" in (sheet.caption or "")
    assert period(typo, "2024-03")["end_customers"] == 55


# --- periods, partial periods, options -----------------------------------------------------------


def test_the_last_period_ends_at_its_end_or_at_now(db: sa.Engine) -> None:
    """The periods run to the end of the one holding the latest event (not the engine's): a
    period that has ended is whole. Only now (--as-of) cuts one short."""
    load(db, {"a": "2024-01-05", "b": "2024-01-05"},
         [("a", "purchase", "2024-01-05T00:00:00Z"), ("b", "purchase", "2024-02-10T12:30:00Z"),
          ("a", "purchase", "2024-03-10T08:00:00.250000Z"),
          ("b", "email_sent", "2024-05-01T00:00:00Z")])  # the engine's record: not the data end
    document = report(db)
    assert document["latest_event"] == "2024-03-10T08:00:00Z"  # JSON times: no microseconds
    assert [(p["label"], p["start"], p["end"], p["start_customers"], p["end_customers"],
             p["partial"]) for p in document["periods"]] == [
        ("2024-01", "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", 0, 1, False),
        ("2024-02", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z", 1, 2, False),
        ("2024-03", "2024-03-01T00:00:00Z", "2024-04-01T00:00:00Z", 2, 2, False)]
    assert not re.search(r"T\d\d:\d\d:\d\d\.", json.dumps(document))
    cut = report(db, now=utc("2024-03-10T08:00:00.250001"))  # just after the latest event
    assert cut["periods"][-1]["end"] == "2024-03-10T08:00:00Z" and cut["periods"][-1]["partial"]
    assert period(document, "2024-01")["crr"] is None
    assert period(document, "2024-01")["churn_rate"] is None


def test_from_and_to_inside_periods_measure_at_the_cuts(db: sa.Engine) -> None:
    load(db, {"a": "2024-01-05", "b": "2024-01-05", "z": "2024-09-01"},
         [("a", "purchase", "2024-01-05T00:00:00Z"), ("b", "purchase", "2024-02-20T00:00:00Z"),
          ("z", "purchase", "2024-09-01T00:00:00Z")])
    document = report(db, start=utc("2024-01-10"), end=utc("2024-04-15"),
                      kind=PeriodKind.QUARTER, window=timedelta(days=30))
    # At 2024-01-10: a (Jan 5). At 2024-04-01: nobody within 30 days. At 2024-04-15: nobody.
    assert [(p["label"], p["start"], p["end"], p["start_customers"], p["end_customers"],
             p["kept_customers"], p["joined_customers"], p["partial"])
            for p in document["periods"]] == [
        ("2024-Q1", "2024-01-10T00:00:00Z", "2024-04-01T00:00:00Z", 1, 0, 0, 0, True),
        ("2024-Q2", "2024-04-01T00:00:00Z", "2024-04-15T00:00:00Z", 0, 0, 0, 0, True)]


def test_weekly_periods_and_a_short_window(db: sa.Engine) -> None:
    # 2024-01-01 is a Monday. a acts on Tuesday of week 1 and Tuesday of week 3; with a 7-day
    # window a counts at the end of week 1 (Jan 8), not of week 2 (Jan 15), again of week 3.
    load(db, {"a": "2024-01-02"},
         [("a", "login", "2024-01-02T09:00:00Z"), ("a", "login", "2024-01-16T09:00:00Z"),
          ("a", "login", "2024-01-29T00:00:00Z")])
    document = report(db, kind=PeriodKind.WEEK, window=timedelta(days=7))
    assert [(p["label"], p["start_customers"], p["joined_customers"], p["returned_customers"],
             p["kept_customers"], p["end_customers"]) for p in document["periods"]] == [
        ("2024-W01", 0, 1, 0, 0, 1), ("2024-W02", 1, 0, 0, 0, 0), ("2024-W03", 0, 0, 1, 0, 1),
        ("2024-W04", 1, 0, 0, 0, 0), ("2024-W05", 0, 0, 1, 0, 1)]


def test_a_customer_who_lapses_and_returns_inside_a_period_is_kept(db: sa.Engine) -> None:
    # Counted at March 1 (Feb 25) and at April 1 (Mar 28), not in between (3-day window): kept.
    load(db, {"a": "2024-02-25", "z": "2024-06-01"},
         [("a", "purchase", "2024-02-25T00:00:00Z"), ("a", "purchase", "2024-03-28T00:00:00Z"),
          ("a", "purchase", "2024-03-29T00:00:00Z"), ("z", "purchase", "2024-06-01T00:00:00Z")])
    march = period(report(db, window=timedelta(days=5)), "2024-03")
    assert (march["start_customers"], march["kept_customers"], march["end_customers"],
            march["crr"]) == (1, 1, 1, 100.0)


def test_cohorts_by_signup_month(db: sa.Engine) -> None:
    load(db, {"a": "2024-01-03", "b": "2024-01-20", "c": "2024-02-02", "quiet": "2024-02-10"},
         [("a", "purchase", "2024-01-03T00:00:00Z"), ("a", "purchase", "2024-03-01T00:00:00Z"),
          ("b", "login", "2024-01-21T00:00:00Z"), ("b", "login", "2024-02-29T23:59:59Z"),
          ("c", "purchase", "2024-02-02T00:00:00Z"), ("c", "email_sent", "2024-03-02T00:00:00Z"),
          ("c", "purchase", "2024-03-15T00:00:00Z")])
    document = report(db, now=utc("2024-03-20"))
    assert document["cohorts"] == [
        {"cohort": "2024-01", "start": "2024-01-01T00:00:00Z", "customers": 2,
         "active": [2, 1, 1], "percent": [100.0, 50.0, 50.0]},
        # quiet signed up without acting: in the cohort, never active
        {"cohort": "2024-02", "start": "2024-02-01T00:00:00Z", "customers": 2,
         "active": [1, 1], "percent": [50.0, 50.0]}]
    assert document["cohorts_end"] == "2024-03-20T00:00:00Z"
    assert document["cohorts_last_month_partial"] is True
    whole = report(db)  # March has ended
    assert (whole["cohorts_end"], whole["cohorts_last_month_partial"]) == (
        "2024-04-01T00:00:00Z", False)
    assert whole["cohorts"] == document["cohorts"]


def test_an_empty_database_reports_no_periods(db: sa.Engine) -> None:
    document = report(db)
    assert (document["periods"], document["cohorts"]) == ([], [])
    with db.connect() as connection:
        [sheet] = retention.build(connection).sheets()
    assert sheet.rows[0][0].startswith("No activity events in range")


def test_sqlite_streams_the_events_in_customer_order(tmp_path: Path) -> None:
    """The per-customer pass must read ix_events_customer_type_time in order, sorting nothing:
    a sort of every event is what made the alternatives slow (module docstring)."""
    engine = open_store(f"sqlite:///{tmp_path / 'plan.db'}")
    load(engine, *worked_example(50, 20, 60, 5))
    seen: list[tuple[str, Any]] = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda conn, cursor, statement, parameters, context, many:
                    seen.append((statement, parameters)))
    for activity in (None, ["purchase", "login"]):  # with a type filter and without
        seen.clear()
        report(engine, activity=activity)
        statement, parameters = next(s for s in seen if "per_customer" in s[0])
        with engine.connect() as connection:
            plan = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement,
                                              parameters).all()
        inner = {row[0] for row in plan if row[3] == "CO-ROUTINE per_customer"}
        below = [row[3] for row in plan if row[1] in inner]
        assert any("COVERING INDEX ix_events_customer_type_time" in d for d in below), plan
        assert not any("GROUP BY" in d or "ORDER BY" in d for d in below), plan


# --- options in the CLI --------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "2024-03-01", "--to", "2024-03-01"], "is not before --to"),
    (["--from", "2024-04-01", "--to", "2024-03-01"], "is not before --to"),
    (["--from", "March"], "not an ISO 8601"),
    (["--active-window", "90"], "malformed duration"),
    (["--active-window", "0d"], "longer than 0"),
    (["--activity", " , "], "expected event types"),
    (["--period", "year"], "year"),
])
def test_bad_options_are_usage_errors(cli: Cli, tmp_path: Path, args: list[str],
                                      message: str) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    open_store(url).dispose()
    code, out, err = cli(["--db", url, "report", "retention", *args])
    assert code == 2
    assert message in " ".join(err.replace("│", " ").split())


def test_an_empty_database_through_the_cli(cli: Cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    open_store(url).dispose()
    code, out, err = cli(["--db", url, "report", "retention"])
    assert code == 0, err
    assert "No activity events" in out
    code, out, _ = cli(["--db", url, "report", "retention", "--json"])
    assert code == 0 and json.loads(out)["periods"] == []
    html = tmp_path / "empty.html"
    code, _, _ = cli(["--db", url, "report", "retention", "--html", str(html)])
    assert code == 0 and "No activity events" in html.read_text()


# --- real data: Online Retail against pandas ---------------------------------------------------


@pytest.fixture(scope="module")
def retail_sample() -> tuple[list[Any], list[Any]]:
    """300 customers of Online Retail (a seeded sample) as sync rows: read once per module."""
    if not RETAIL.is_file():
        pytest.skip(f"{RETAIL} is missing")
    return dataset_rows("online_retail", RETAIL, limit_customers=300, seed=11)


@pytest.fixture(scope="module")
def retail_invoices() -> pd.DataFrame:
    """Every invoice of Online Retail with a customer: (invoice, customer, time), read with
    pandas straight from the CSV (one event per invoice at its earliest line, as the mapping in
    shared/data/README.md says; returns are activity too)."""
    if not RETAIL.is_file():
        pytest.skip(f"{RETAIL} is missing")
    lines = pd.read_csv(RETAIL, usecols=["InvoiceNo", "InvoiceDate", "CustomerID"],
                        dtype={"InvoiceNo": str, "CustomerID": str})
    lines = lines.dropna(subset=["CustomerID"])
    lines["customer"] = lines["CustomerID"].str.replace(r"\.0$", "", regex=True)
    lines["time"] = pd.to_datetime(lines["InvoiceDate"], utc=True)
    return lines.groupby("InvoiceNo").agg(customer=("customer", "first"),
                                          time=("time", "min")).reset_index()


def pandas_retention(invoices: pd.DataFrame, boundaries: list[pd.Timestamp],
                     window: pd.Timedelta) -> list[dict[str, Any]]:
    """Per period, the definitions applied one boundary at a time with pandas sets."""
    first = invoices.groupby("customer")["time"].min()

    def counted(at: pd.Timestamp) -> set[str]:
        inside = invoices[(invoices["time"] >= at - window) & (invoices["time"] < at)]
        return set(inside["customer"])

    rows = []
    for start, end in zip(boundaries, boundaries[1:], strict=False):
        s, e = counted(start), counted(end)
        new = e - s
        joined = {c for c in new if start <= first[c] < end}
        rows.append({"start_customers": len(s), "end_customers": len(e),
                     "joined_customers": len(joined), "returned_customers": len(new - joined),
                     "kept_customers": len(e & s),
                     "crr": round(100 * len(e & s) / len(s), 4) if s else None})
    return rows


def month_starts(first: pd.Timestamp, last: pd.Timestamp) -> list[pd.Timestamp]:
    return list(pd.date_range(first.replace(day=1).normalize(), last, freq="MS"))


@pytest.mark.parametrize(("kind", "window"), [("month", "90d"), ("week", "30d")])
def test_online_retail_sample_matches_pandas(db: sa.Engine, retail_sample: tuple[Any, Any],
                                             retail_invoices: pd.DataFrame, kind: str,
                                             window: str) -> None:
    ingest_customers(db, retail_sample[0], str(RETAIL), now=NOW)
    ingest_events(db, retail_sample[1], str(RETAIL))
    with db.connect() as connection:
        chosen = set(connection.execute(sa.select(customers.c.customer_id)).scalars())
    invoices = retail_invoices[retail_invoices["customer"].isin(chosen)]
    assert len(chosen) == 300 and invoices["customer"].nunique() == 300

    width = pd.Timedelta(parse_duration(window))
    document = report(db, kind=PeriodKind(kind), window=width.to_pytimedelta())
    latest = invoices["time"].max()
    first_time = invoices["time"].min()
    if kind == "month":
        starts = month_starts(first_time, latest)
        stop = (latest.replace(day=1) + pd.DateOffset(months=1)).normalize()
    else:
        monday = (first_time - pd.Timedelta(days=first_time.weekday())).normalize()
        starts = list(pd.date_range(monday, latest, freq="7D"))
        stop = starts[-1] + pd.Timedelta(days=7)
    boundaries = [*starts, stop]  # the period of the latest invoice has ended: whole
    expected = pandas_retention(invoices, boundaries, width)
    got = [{k: p[k] for k in expected[0]} for p in document["periods"]]
    assert len(got) == len(expected) >= 12
    for index, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        assert mine == theirs, (document["periods"][index]["label"], mine, theirs)
    assert [p["partial"] for p in document["periods"]] == [False] * len(got)
    assert pd.Timestamp(document["periods"][-1]["end"]) == stop

    # Cohorts: the month of each customer's first invoice (created_at is empty in this dataset,
    # so sync takes the first event), active = any invoice in that month + k.
    first = invoices.groupby("customer")["time"].min().dt.tz_localize(None).dt.to_period("M")
    month = invoices["time"].dt.tz_localize(None).dt.to_period("M")
    active = (pd.DataFrame({"customer": invoices["customer"], "month": month})
              .assign(cohort=lambda f: f["customer"].map(first))
              .assign(k=lambda f: (f["month"] - f["cohort"]).apply(lambda d: d.n))
              .groupby(["cohort", "k"])["customer"].nunique())
    sizes = first.value_counts()
    last_month = month.max()
    expected_cohorts = [
        {"cohort": str(c), "customers": int(sizes[c]),
         "active": [int(active.get((c, k), 0)) for k in range((last_month - c).n + 1)]}
        for c in sorted(sizes.index)]
    assert [{k: c[k] for k in ("cohort", "customers", "active")}
            for c in document["cohorts"]] == expected_cohorts


# --- random histories against the definitions ---------------------------------------------------


@dataclass(frozen=True)
class History:
    """Made-up customers (id -> created_at) and events (customer, type, time)."""

    people: dict[str, datetime | None]
    happenings: list[tuple[str, str, datetime]]


def calendar_start(moment: datetime, kind: str) -> datetime:
    day = moment.date()
    if kind == "week":
        day -= timedelta(days=day.weekday())
    elif kind == "month":
        day = day.replace(day=1)
    else:
        day = date(day.year, (day.month - 1) // 3 * 3 + 1, 1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def calendar_next(start: datetime, kind: str) -> datetime:
    if kind == "week":
        return start + timedelta(days=7)
    months = start.month - 1 + (1 if kind == "month" else 3)
    return start.replace(year=start.year + months // 12, month=months % 12 + 1)


def definitions(history: History, kind: str, window: timedelta, activity: list[str] | None,
                start: datetime | None, end: datetime | None, now: datetime
                ) -> dict[str, Any]:
    """Periods and cohorts straight from the definitions (docs/REPORTS.md), customer by customer:
    slow, obvious, and sharing no code with the report."""
    types = {t for _, t, _ in history.happenings}
    active_types = types - ENGINE_EVENT_TYPES if activity is None else set(activity) & types
    acts = [(c, t) for c, kind_, t in history.happenings if kind_ in active_types and t < now]
    data = [t for _, kind_, t in history.happenings
            if (kind_ not in ENGINE_EVENT_TYPES or kind_ in active_types) and t < now]
    if not acts:
        return {"periods": [], "cohorts": []}
    first = start if start is not None else min(t for _, t in acts)
    last_period_end = calendar_next(calendar_start(max(data), kind), kind)
    stop = min(last_period_end if end is None else end, now)
    if first >= stop:
        return {"periods": [], "cohorts": []}
    cuts = []
    moment = calendar_start(first, kind)
    while moment < stop:
        following = calendar_next(moment, kind)
        begin = max(moment, first) if start is not None else moment
        cuts.append((begin, min(following, stop), begin != moment or following > stop))
        moment = following

    def counted(at: datetime) -> set[str]:
        return {c for c, t in acts if at - window <= t < at}

    first_act = {c: min(t for c2, t in acts if c2 == c) for c, _ in acts}
    periods = []
    for begin, finish, partial in cuts:
        s, e = counted(begin), counted(finish)
        joined = {c for c in e - s if begin <= first_act[c] < finish}
        periods.append({"start": begin, "end": finish, "start_customers": len(s),
                        "end_customers": len(e), "joined_customers": len(joined),
                        "returned_customers": len(e - s - joined), "kept_customers": len(s & e),
                        "crr": round(100 * len(s & e) / len(s), 4) if s else None,
                        "partial": partial})
    months = [calendar_start(cuts[0][0], "month")]
    while calendar_next(months[-1], "month") < stop:
        months.append(calendar_next(months[-1], "month"))
    bounds = [*months[1:], cuts[-1][1]]
    cohorts = []
    for i, month in enumerate(months):
        members = {c for c, created in history.people.items()
                   if created is not None and month <= created < bounds[i]}
        if members:
            cohorts.append({"cohort": f"{month:%Y-%m}", "customers": len(members), "active": [
                len({c for c, t in acts if c in members and months[j] <= t < bounds[j]})
                for j in range(i, len(months))]})
    return {"periods": periods, "cohorts": cohorts}


def store(engine: sa.Engine, history: History) -> None:
    """Replace the database's customers and events with `history` (plain inserts: this tests
    the report, not sync, and runs for every generated example)."""
    with engine.begin() as connection:
        connection.execute(events.delete())
        connection.execute(customers.delete())
        if history.people:
            connection.execute(customers.insert(), [
                {"customer_id": c, "created_at": created, "tags": [], "attributes": {},
                 "purchase_count": 0, "total_spent": 0.0, "points_balance": 0}
                for c, created in history.people.items()])
        if history.happenings:
            connection.execute(events.insert(), [
                {"event_id": f"e{i}", "customer_id": c, "type": kind, "occurred_at": when,
                 "properties": {}} for i, (c, kind, when) in enumerate(history.happenings)])


def check(engine: sa.Engine, history: History, kind: str, window: timedelta,
          activity: list[str] | None, start: datetime | None, end: datetime | None,
          bits: int, timezone: str | None = None, now: datetime | None = None) -> None:
    with engine.connect() as connection:
        if timezone and connection.dialect.name == "postgresql":  # UTC must not depend on it
            connection.exec_driver_sql(f"SET TIME ZONE '{timezone}'")
        got = retention.build(connection, start, end, kind=PeriodKind(kind), window=window,
                              activity=activity, bits=bits, now=now).to_json()
    want = definitions(history, kind, window, activity, start, end,
                       datetime.now(UTC) if now is None else now)
    keys = ("start_customers", "end_customers", "joined_customers", "returned_customers",
            "kept_customers", "crr", "partial")
    assert [(p["start"], p["end"], *(p[k] for k in keys)) for p in got["periods"]] == [
        (iso(p["start"]), iso(p["end"]), *(p[k] for k in keys))
        for p in want["periods"]]
    assert [{k: c[k] for k in ("cohort", "customers", "active")}
            for c in got["cohorts"]] == want["cohorts"]


ORIGIN = datetime(2023, 11, 1, tzinfo=UTC)
SPAN_DAYS = 300
KINDS = ["week", "month", "quarter"]
WINDOWS = [timedelta(hours=12), timedelta(days=3), timedelta(days=20), timedelta(days=90),
           timedelta(days=200)]
ACTIVITIES: list[list[str] | None] = [None, ["purchase"], ["purchase", "email_sent"], ["nope"]]


def moments() -> st.SearchStrategy[datetime]:
    """Times in the span; half of them exactly at midnight, where boundaries and windows cut."""
    return st.one_of(
        st.integers(0, SPAN_DAYS * 86400 - 1).map(lambda s: ORIGIN + timedelta(seconds=s)),
        st.integers(0, SPAN_DAYS - 1).map(lambda d: ORIGIN + timedelta(days=d)))


@st.composite
def histories(draw: st.DrawFn) -> History:
    count = draw(st.integers(0, 8))
    people = {f"c{i}": draw(st.none() | moments()) for i in range(count)}
    happenings = [(f"c{draw(st.integers(0, count - 1))}",
                   draw(st.sampled_from(["purchase", "login", "email_sent"])), draw(moments()))
                  for _ in range(draw(st.integers(0, 14)) if count else 0)]
    return History(people, happenings)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    engine = open_store(f"sqlite:///{tmp_path_factory.mktemp('retention') / 'random.db'}")
    yield engine
    engine.dispose()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories(), kind=st.sampled_from(KINDS), window=st.sampled_from(WINDOWS),
       activity=st.sampled_from(ACTIVITIES), start=st.none() | moments(),
       end=st.none() | moments(), bits=st.sampled_from([1, 3, 62]),
       now=st.none() | moments())
def test_random_histories_follow_the_definitions(scratch: sa.Engine, history: History,
                                                 kind: str, window: timedelta,
                                                 activity: list[str] | None,
                                                 start: datetime | None, end: datetime | None,
                                                 bits: int, now: datetime | None) -> None:
    if start is not None and end is not None and start >= end:
        start, end = end, start + timedelta(days=1)
    store(scratch, history)
    check(scratch, history, kind, window, activity, start, end, bits, now=now)


def test_seeded_histories_on_both_backends(db: sa.Engine) -> None:
    """Larger random histories than hypothesis draws, on SQLite and PostgreSQL alike."""
    rng = random.Random(20240301)
    for round_ in range(6):
        people = {f"c{i}": ORIGIN + timedelta(days=rng.randrange(SPAN_DAYS)) for i in range(40)}
        happenings = []
        for customer in people:
            moment = people[customer]
            for _ in range(rng.randrange(0, 12)):
                moment += timedelta(hours=rng.choice([1, 30, 24 * 20, 24 * 100]))
                happenings.append((customer, rng.choice(["purchase", "login", "email_sent"]),
                                   moment))
        history = History(people, happenings)
        store(db, history)
        kind = KINDS[round_ % 3]
        check(db, history, kind, WINDOWS[round_ % len(WINDOWS)], ACTIVITIES[round_ % 3],
              None if round_ < 3 else ORIGIN + timedelta(days=45),
              None if round_ % 2 else ORIGIN + timedelta(days=250), bits=[62, 4][round_ % 2],
              timezone=["Pacific/Kiritimati", "America/Los_Angeles"][round_ % 2],
              now=None if round_ % 3 else ORIGIN + timedelta(days=200 + round_))
