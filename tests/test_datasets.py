"""engine.sync.datasets: the real datasets become Retain rows exactly as shared/data/README.md says.

Whole-file counts are checked against the README's published figures, and loaded samples against
an independent pandas computation from the raw files (not against the loader's own code), down to
the derived facts that sync computes. Small hand-written files pin the edge cases: split invoices,
"17850.0" ids, returns, prefixes, deterministic samples and bad lines.
"""

from __future__ import annotations

import gzip
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from engine.errors import DataFileError
from engine.store.open import open_store
from engine.store.tables import Customer, Event
from engine.sync.datasets import (
    DATASETS,
    cdnow_rows,
    dataset_rows,
    load_dataset,
    normalize_customer_id,
    read_invoices,
    retail_rows,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = 300
RETAIL_I = ("InvoiceNo", "UnitPrice", "CustomerID")
RETAIL_II = ("Invoice", "Price", "Customer ID")


def data_file(name: str) -> Path:
    """The real file; skipped with a reason on a machine without it, a failure in CI."""
    path = DATA / DATASETS[name]
    if not path.is_file():
        reason = f"real dataset {path} is absent"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the dataset tests")
        pytest.skip(reason)
    return path


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def write_csv(path: Path, text: str) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)
    return path


# --- independent pandas computations ---------------------------------------------------------


def pandas_retail(path: Path, columns: tuple[str, str, str], limit: int | None) -> pd.DataFrame:
    """One row per invoice of the first `limit` customers (by integer id), straight from the file."""
    invoice, price, customer = columns
    df = pd.read_csv(path, dtype={invoice: str, "StockCode": str})
    df = df[df[customer].notna()].copy()
    df["cid"] = df[customer].astype("int64")
    if limit is not None:
        df = df[df["cid"].isin(sorted(df["cid"].unique())[:limit])]
    df["cid"] = df["cid"].astype(str)
    df["amount"] = df["Quantity"] * df[price]
    out = df.groupby(invoice).agg(cid=("cid", "first"), at=("InvoiceDate", "min"),
                                  amount=("amount", "sum"))
    out["type"] = ["return" if i.startswith("C") else "purchase" for i in out.index]
    return out


def expected_facts(events: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """purchase_count, total_spent (returns not subtracted: DESIGN section 1), first/last purchase."""
    bought = events[events["type"] == "purchase"].groupby("cid").agg(
        n=("amount", "size"), total=("amount", "sum"), first=("at", "min"), last=("at", "max"))
    facts = {cid: {"purchase_count": 0, "total_spent": 0.0, "first_purchase_at": None,
                   "last_purchase_at": None} for cid in events["cid"].unique()}
    for cid, row in bought.iterrows():
        facts[str(cid)] = {"purchase_count": int(row["n"]), "total_spent": float(row["total"]),
                           "first_purchase_at": utc(row["first"]), "last_purchase_at": utc(row["last"])}
    return facts


def stored_facts(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    columns = (Customer.customer_id, Customer.purchase_count, Customer.total_spent,
               Customer.first_purchase_at, Customer.last_purchase_at)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(*columns)).all()  # type: ignore[call-overload]
    return {r[0]: {"purchase_count": r[1], "total_spent": pytest.approx(r[2], abs=1e-6),
                   "first_purchase_at": r[3], "last_purchase_at": r[4]} for r in rows}


def events_by_type(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(Event.type, sa.func.count()).group_by(Event.type)).all()
    return {kind: count for kind, count in rows}


# --- whole files against the README's published figures -------------------------------------


def test_online_retail_whole_file_matches_published_counts() -> None:
    path = data_file("online_retail")
    invoices = read_invoices(path)
    assert len(invoices) == 25_900  # C and A invoices and customerless ones included
    assert sum(inv.amount_milli for inv in invoices) == 9_747_747_934  # README: 9,747,747.934
    assert sum(inv.lines for inv in invoices) == 541_909
    raw = pd.read_csv(path, dtype={"InvoiceNo": str, "StockCode": str})
    assert sum(inv.type == "return" for inv in invoices) == raw.loc[
        raw["InvoiceNo"].str.startswith("C"), "InvoiceNo"].nunique()

    customers, events = retail_rows(path)
    assert len(customers) == 4_372
    assert len(events) == raw.loc[raw["CustomerID"].notna(), "InvoiceNo"].nunique()
    assert len({row["event_id"] for _, row in events}) == len(events)


def test_online_retail_ii_whole_file_matches_published_counts() -> None:
    invoices = read_invoices(data_file("online_retail_ii"))
    assert len(invoices) == 28_816
    assert len({inv.customer_id for inv in invoices} - {None}) == 4_383
    assert sum(inv.lines for inv in invoices) == 525_461


def test_cdnow_whole_file() -> None:
    customers, events = cdnow_rows(data_file("cdnow"))
    assert (len(customers), len(events)) == (23_570, 69_659)
    assert {row["occurred_at"][10:] for _, row in events} == {"T00:00:00+00:00"}


# --- samples loaded through sync, against pandas ---------------------------------------------


@pytest.mark.parametrize(("name", "columns"), [("online_retail", RETAIL_I),
                                               ("online_retail_ii", RETAIL_II)])
def test_retail_sample_loads_with_the_facts_pandas_computes(
        sqlite_url: str, name: str, columns: tuple[str, str, str]) -> None:
    path = data_file(name)
    expected = pandas_retail(path, columns, SAMPLE)
    engine = open_store(sqlite_url)
    customers, events = load_dataset(engine, name, path, limit_customers=SAMPLE)

    assert (customers.inserted, customers.rejected) == (SAMPLE, [])
    assert (events.inserted, events.duplicates, events.rejected) == (len(expected), 0, [])
    assert events_by_type(engine) == expected["type"].value_counts().to_dict()
    assert stored_facts(engine) == expected_facts(expected)
    engine.dispose()


def test_both_retail_files_keep_shared_invoices_once(sqlite_url: str) -> None:
    old = pandas_retail(data_file("online_retail_ii"), RETAIL_II, SAMPLE)
    new = pandas_retail(data_file("online_retail"), RETAIL_I, SAMPLE)
    shared = old.index.intersection(new.index)
    assert len(shared) > 0  # the two samples overlap in 2010-12-01..09, so this tests something
    assert (old.loc[shared, "amount"] - new.loc[shared, "amount"]).abs().max() < 1e-6

    engine = open_store(sqlite_url)
    load_dataset(engine, "online_retail_ii", data_file("online_retail_ii"), limit_customers=SAMPLE)
    _, events = load_dataset(engine, "online_retail", data_file("online_retail"),
                             limit_customers=SAMPLE)
    assert events.duplicates == len(shared)
    assert events.inserted == len(new) - len(shared)
    union = pd.concat([old, new[~new.index.isin(shared)]])
    assert sum(events_by_type(engine).values()) == len(union)
    assert stored_facts(engine) == expected_facts(union)
    engine.dispose()


def test_cdnow_sample_loads_with_the_facts_pandas_computes(sqlite_url: str) -> None:
    path = data_file("cdnow")
    raw = pd.read_csv(path)
    chosen = raw[raw["customer_id"].isin(range(1, SAMPLE + 1))]
    expected = pd.DataFrame({"cid": chosen["customer_id"].astype(str), "type": "purchase",
                             "at": chosen["date"], "amount": chosen["dollar_value"]})
    engine = open_store(sqlite_url)
    customers, events = load_dataset(engine, "cdnow", path, limit_customers=SAMPLE, prefix="cd-")

    assert (customers.inserted, events.inserted, events.rejected) == (SAMPLE, len(chosen), [])
    want = {f"cd-{cid}": facts for cid, facts in expected_facts(expected).items()}
    assert stored_facts(engine) == want
    engine.dispose()


# --- edge cases on small hand-written files --------------------------------------------------

RETAIL_II_HEADER = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n"


def test_split_invoice_is_one_event_at_its_earliest_line_with_an_exact_amount(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv.gz", RETAIL_II_HEADER
                     + "100,A,x,3,2010-01-01 10:01:00,0.1,17850.0,United Kingdom\n"
                     + "101,B,y,1,2010-01-01 10:05:00,2.5,,United Kingdom\n"
                     + '100,C,"z, with comma",1,2010-01-01 10:00:00,0.005,17850.0,United Kingdom\n'
                     + "C102,A,x,-2,2010-02-01 09:00:00,0.1,12,France\n"
                     + "103,A,x,1,2010-03-01 09:00:00,0,12,Germany\n")
    customers, events = retail_rows(path)
    assert customers == [(5, {"customer_id": "12", "country": "Germany"}),
                         (2, {"customer_id": "17850", "country": "United Kingdom"})]
    assert events == [
        (2, {"event_id": "100", "customer_id": "17850", "type": "purchase",
             "occurred_at": "2010-01-01T10:00:00+00:00",
             "properties": {"amount": 0.305, "items": 4, "lines": 2, "currency": "GBP"}}),
        (5, {"event_id": "C102", "customer_id": "12", "type": "return",
             "occurred_at": "2010-02-01T09:00:00+00:00",
             "properties": {"amount": -0.2, "items": -2, "lines": 1, "currency": "GBP"}}),
        (6, {"event_id": "103", "customer_id": "12", "type": "purchase",
             "occurred_at": "2010-03-01T09:00:00+00:00",
             "properties": {"amount": 0.0, "items": 1, "lines": 1, "currency": "GBP"}}),
    ]


def test_prefix_goes_on_customer_ids_only(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv.gz", RETAIL_II_HEADER
                     + "100,A,x,1,2010-01-01 10:00:00,1,7,Spain\n")
    customers, events = retail_rows(path, prefix="or-")
    assert customers[0][1]["customer_id"] == "or-7"
    assert (events[0][1]["customer_id"], events[0][1]["event_id"]) == ("or-7", "100")


def test_customer_samples_are_deterministic(tmp_path: Path) -> None:
    lines = "".join(f"{n},{n % 40 + 1},1997-01-0{n % 9 + 1},1,9.99\n" for n in range(1, 201))
    path = write_csv(tmp_path / "c.csv.gz", "txn_id,customer_id,date,number_of_cds,dollar_value\n"
                     + lines)
    first, _ = cdnow_rows(path, limit_customers=12)
    assert [row["customer_id"] for _, row in first] == [str(n) for n in range(1, 13)]  # 9 < 10
    sampled, events = cdnow_rows(path, limit_customers=12, seed=7)
    assert sampled == cdnow_rows(path, limit_customers=12, seed=7)[0]
    assert sampled != first
    assert {row["customer_id"] for _, row in events} == {row["customer_id"] for _, row in sampled}
    assert len(events) == 12 * 5  # 200 rows over 40 customers, every row of a chosen customer


def test_customer_ids_normalise_to_integer_text() -> None:
    assert [normalize_customer_id(v) for v in ("17850", "17850.0", " 0042 ", "")] == [
        "17850", "17850", "42", None]
    with pytest.raises(ValueError, match="not an integer"):
        normalize_customer_id("17850.5")


def test_a_bad_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv.gz", RETAIL_II_HEADER
                     + "100,A,x,1,2010-01-01 10:00:00,1,7,Spain\n"
                     + "100,A,x,one,2010-01-01 10:00:00,1,7,Spain\n")
    with pytest.raises(DataFileError) as caught:
        read_invoices(path)
    assert f"{path}:3:" in str(caught.value)
    with pytest.raises(DataFileError, match="expected column sets"):
        cdnow_rows(path)
    with pytest.raises(DataFileError, match="unknown dataset 'nope'"):
        dataset_rows("nope", path)
