"""The three real datasets in `shared/data/` as Retain's standard customer and event rows.

They give benchmarks, examples, `retain demo` and end-to-end tests data that no one on the project
made up. The mapping follows `shared/data/README.md` ("Mapping to Retain's customers and events")
to the letter, so numbers computed from a Retain database compare with its reference numbers:

- Online Retail and Online Retail II: one `purchase` event per invoice not starting with `C`, one
  `return` event per `C` invoice (negative amount); `event_id` = the invoice number, so loading
  both files keeps the 1,088 invoices they share once. `occurred_at` = the earliest `InvoiceDate`
  of the invoice's lines. Those times are UK local time without a zone; they are taken as UTC
  (off by one hour in British Summer Time), because guessing a zone would change the reference
  numbers. `amount` = the exact sum of Quantity x UnitPrice (lines with price 0 included),
  summed in Decimal and rounded to the prices' 3 decimals so no float drift creeps in. Lines
  without a customer are not a customer's and are skipped.
- CDNOW: one `purchase` per row, `event_id` = `cdnow-<txn_id>`, `occurred_at` = the date at
  00:00 UTC, `amount` = `dollar_value`.
- Customers: `customer_id` is the integer as text ("17850", also when a conversion wrote
  "17850.0"), `country` from Online Retail (the country of the customer's latest invoice: a
  handful of customers have two). `created_at` stays empty: the first purchase stands for joining.

Lines of one invoice are NOT always contiguous (checked: 1 invoice in Online Retail and 655 in
Online Retail II are split), so the reader streams the lines once and keeps one small aggregate per
invoice: memory grows with the number of invoices (~29,000), not lines (~540,000).
"""

from __future__ import annotations

import csv
import gzip
import operator
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa

from engine.errors import DataFileError, Issue, Location
from engine.sync.ingest import SyncReport, ingest_customers, ingest_events

Row = tuple[int, dict[str, Any]]
"""(line number in the source file, row in Retain's standard shape), as `engine.sync.ingest` ingests."""

DATASETS: dict[str, str] = {
    "online_retail": "online_retail.csv.gz",
    "online_retail_ii": "online_retail_ii_2009_2010.csv.gz",
    "cdnow": "cdnow_master.csv.gz",
}
"""Dataset name -> its file name in `shared/data/`, for callers that know only the folder."""

# Both Online Retail layouts: (invoice, date, quantity, price, customer, country) column names.
_RETAIL_LAYOUTS = (
    ("InvoiceNo", "InvoiceDate", "Quantity", "UnitPrice", "CustomerID", "Country"),
    ("Invoice", "InvoiceDate", "Quantity", "Price", "Customer ID", "Country"),
)
_CDNOW_COLUMNS = ("txn_id", "customer_id", "date", "number_of_cds", "dollar_value")
_MILLI = Decimal(1000)


@dataclass(slots=True)
class Invoice:
    """One invoice of Online Retail (I or II), aggregated over its lines, wherever they are."""

    invoice: str
    customer_id: str | None
    country: str
    occurred_at: datetime
    line: int
    lines: int = 0
    items: int = 0
    amount_milli: int = 0

    @property
    def amount(self) -> float:
        """The exact sum of Quantity x UnitPrice; prices have at most 3 decimals, so this is too."""
        return self.amount_milli / 1000

    @property
    def type(self) -> str:
        """`return` for a cancellation (`C` prefix), else `purchase` (the README's rule)."""
        return "return" if self.invoice.startswith("C") else "purchase"


def _error(path: Path, line: int, message: str) -> DataFileError:
    return DataFileError(message, [Issue(Location(file=str(path), line=line), "", message)])


def _open_text(path: Path) -> TextIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _read_csv(path: Path, wanted: tuple[tuple[str, ...], ...]) -> Iterator[tuple[int, tuple[str, ...]]]:
    """Stream (line, values of the first layout in `wanted` that the header has); one row at a time."""
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise _error(path, 1, "empty file, expected a header row")
        layout = next((cols for cols in wanted if set(cols) <= set(header)), None)
        if layout is None:
            raise _error(path, 1, f"header {header} has none of the expected column sets {wanted}")
        pick = operator.itemgetter(*(header.index(col) for col in layout))
        width = len(header)
        for values in reader:
            if len(values) != width:
                raise _error(path, reader.line_num, f"{len(values)} values, header has {width}")
            yield reader.line_num, pick(values)


def normalize_customer_id(raw: str) -> str | None:
    """The customer id as integer text ("17850.0" -> "17850"); None when the cell is empty."""
    raw = raw.strip()
    if not raw:
        return None
    if raw.isdigit():
        return str(int(raw))
    number = Decimal(raw)  # InvalidOperation for text that is no number at all
    if number != number.to_integral_value():
        raise ValueError(f"customer id {raw!r} is not an integer")
    return str(int(number))


def _parse_time(raw: str) -> datetime:
    # Naive local times from the file, read as UTC (see the module docstring for why).
    return datetime.fromisoformat(raw.strip()).replace(tzinfo=UTC)


def _parse_milli(raw: str) -> int:
    milli = Decimal(raw) * _MILLI
    if milli != milli.to_integral_value():
        raise ValueError(f"price {raw!r} has more than 3 decimals")
    return int(milli)


def read_invoices(path: Path) -> list[Invoice]:
    """Every invoice of an Online Retail file, customerless ones too, in order of first line."""
    invoices: dict[str, Invoice] = {}
    # Per-file caches: ids, times and prices repeat on most of ~540k lines (3x faster).
    customer_of, time_of, milli_of = (cache(normalize_customer_id), cache(_parse_time),
                                      cache(_parse_milli))
    for line, (number, when, quantity, price, customer, country) in _read_csv(path, _RETAIL_LAYOUTS):
        try:
            customer_id = customer_of(customer)
            occurred_at = time_of(when)
            qty = int(quantity)
            price_milli = milli_of(price)
        except (ValueError, InvalidOperation) as exc:
            raise _error(path, line, str(exc) or f"unreadable value ({exc.__class__.__name__})") from exc
        invoice = invoices.get(number)
        if invoice is None:
            invoice = invoices[number] = Invoice(number, customer_id, country, occurred_at, line)
        elif invoice.customer_id != customer_id:
            raise _error(path, line, f"invoice {number} has lines of customers "
                                     f"{invoice.customer_id!r} and {customer_id!r}")
        if occurred_at < invoice.occurred_at:
            invoice.occurred_at = occurred_at
        invoice.lines += 1
        invoice.items += qty
        invoice.amount_milli += qty * price_milli
    return list(invoices.values())


def _id_key(customer_id: str) -> tuple[int, int, str]:
    return (0, int(customer_id), "") if customer_id.isdigit() else (1, 0, customer_id)


def choose_customers(ids: set[str], limit: int | None, seed: int | None = None) -> set[str]:
    """A deterministic subset: the `limit` smallest ids, or a seeded sample of them.

    The smallest ids are simplest to reason about, but in CDNOW ids follow the first purchase
    date, so they form an early-January cohort; a seed gives an unbiased sample that is still the
    same on every run and machine (`random.Random(seed)` over the sorted ids).
    """
    if limit is None or limit >= len(ids):
        return set(ids)
    ordered = sorted(ids, key=_id_key)
    if seed is None:
        return set(ordered[:limit])
    return set(random.Random(seed).sample(ordered, limit))


def _customer_rows(first: dict[str, tuple[int, dict[str, Any]]], chosen: set[str],
                   prefix: str) -> list[Row]:
    rows = []
    for customer_id in sorted(chosen, key=_id_key):
        line, extra = first[customer_id]
        rows.append((line, {"customer_id": prefix + customer_id, **extra}))
    return rows


def retail_rows(path: Path, *, limit_customers: int | None = None, seed: int | None = None,
                prefix: str = "") -> tuple[list[Row], list[Row]]:
    """(customer rows, event rows) of Online Retail or Online Retail II (the header tells which).

    Customers come in id order, events in file order of their invoice's first line; each row
    carries that line so ingest errors point into the original file. `prefix` goes on customer
    ids only (not on event ids, which must stay the invoice number to dedupe the two files).
    """
    invoices = [(inv.customer_id, inv) for inv in read_invoices(path) if inv.customer_id]
    customers: dict[str, tuple[int, dict[str, Any]]] = {}
    latest: dict[str, Invoice] = {}
    for cid, inv in invoices:
        customers.setdefault(cid, (inv.line, {}))
        if cid not in latest or inv.occurred_at >= latest[cid].occurred_at:
            latest[cid] = inv
    for cid, (_line, extra) in customers.items():
        extra["country"] = latest[cid].country
    chosen = choose_customers(set(customers), limit_customers, seed)
    events = [
        (inv.line, {
            "event_id": inv.invoice,
            "customer_id": prefix + cid,
            "type": inv.type,
            "occurred_at": inv.occurred_at.isoformat(),
            "properties": {"amount": inv.amount, "items": inv.items, "lines": inv.lines,
                           "currency": "GBP"},
        })
        for cid, inv in invoices
        if cid in chosen
    ]
    return _customer_rows(customers, chosen, prefix), events


def cdnow_rows(path: Path, *, limit_customers: int | None = None, seed: int | None = None,
               prefix: str = "") -> tuple[list[Row], list[Row]]:
    """(customer rows, event rows) of CDNOW: one purchase per row, customers in id order.

    The 69,659 rows are read into memory (about 30 MB of dicts) because the customer sample is
    only known after the last row; `prefix` keeps CDNOW's ids 1..23,570 apart from Online
    Retail's when both go into one database.
    """
    customers: dict[str, tuple[int, dict[str, Any]]] = {}
    events: list[tuple[str, Row]] = []
    for line, (txn_id, customer, date, cds, dollars) in _read_csv(path, (_CDNOW_COLUMNS,)):
        try:
            customer_id = normalize_customer_id(customer)
            if customer_id is None:
                raise ValueError("customer_id is empty")
            day = datetime.fromisoformat(date.strip()).replace(tzinfo=UTC)
            properties = {"amount": round(float(dollars), 2), "number_of_cds": int(cds),
                          "currency": "USD"}
        except (ValueError, InvalidOperation) as exc:
            raise _error(path, line, str(exc) or f"unreadable value ({exc.__class__.__name__})") from exc
        customers.setdefault(customer_id, (line, {}))
        events.append((customer_id, (line, {
            "event_id": f"cdnow-{txn_id.strip()}",
            "customer_id": prefix + customer_id,
            "type": "purchase",
            "occurred_at": day.isoformat(),
            "properties": properties,
        })))
    chosen = choose_customers(set(customers), limit_customers, seed)
    return (_customer_rows(customers, chosen, prefix),
            [row for customer_id, row in events if customer_id in chosen])


def dataset_rows(name: str, path: Path, *, limit_customers: int | None = None,
                 seed: int | None = None, prefix: str = "") -> tuple[list[Row], list[Row]]:
    """(customer rows, event rows) of the dataset called `name` (a key of `DATASETS`)."""
    if name not in DATASETS:
        raise DataFileError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    reader = cdnow_rows if name == "cdnow" else retail_rows
    return reader(Path(path), limit_customers=limit_customers, seed=seed, prefix=prefix)


def load_dataset(engine: sa.Engine, name: str, path: Path, *, limit_customers: int | None = None,
                 seed: int | None = None, prefix: str = "", progress: Any = None,
                 now: datetime | None = None) -> tuple[SyncReport, SyncReport]:
    """Ingest a dataset (customers first, so every event finds its customer); both reports.

    Loading `online_retail_ii` and `online_retail` into one database gives the two-year history;
    the invoices they share come back as `duplicates` in the second events report.
    """
    customers, events = dataset_rows(name, path, limit_customers=limit_customers, seed=seed,
                                     prefix=prefix)
    source = str(path)
    customer_report = ingest_customers(engine, customers, source, progress=progress, now=now)
    event_report = ingest_events(engine, events, source, progress=progress)
    return customer_report, event_report


def sync_dataset(engine: sa.Engine, name: str, kind: str, path: Path,
                 progress: Any = None) -> SyncReport:
    """Sync the customers or the events of a public data set's original file.

    `retain sync customers --dataset cdnow FILE` then `retain sync events --dataset cdnow FILE`
    is how a team tries Retain on real data without writing a mapper. Each call reads the whole
    file (the customers of a data set are only known from its events); `progress` is given the
    file's size in bytes once the rows are mapped, as file syncs report bytes read.
    """
    if kind not in ("customers", "events"):
        raise DataFileError(f"--dataset loads customers or events, not {kind}")
    customers, events = dataset_rows(name, path)
    if progress is not None:
        progress(Path(path).stat().st_size)
    if kind == "customers":
        return ingest_customers(engine, customers, str(path))
    return ingest_events(engine, events, str(path))
