"""Sync: upsert customers and append events from CSV/JSONL files or rows, then refresh facts.

This is one of the three places with side effects (DESIGN 4: "sync: upsert customers, append
events (dedupe by id), update derived facts"). Guarantees:

- A bad row is reported with its line and every reason, and loses nothing else: good rows land.
- Rows are read and written in batches (memory stays flat) and committed every CUSTOMER_COMMIT
  or EVENT_COMMIT rows: a crash leaves only whole transactions behind, and running the same
  file again completes it (customers are upserted by id, events deduplicated by `event_id`
  with INSERT ... ON CONFLICT DO NOTHING). Transactions span several batches because on SQLite
  each commit rewrites every index page the batch touched, and event inserts touch pages all
  over the customer index: 100,000 rows per commit synced 1.5x faster than 10,000.
- Customers: the columns a row gives are set (an empty value sets NULL, except `created_at`,
  which is kept or derived, see engine/store/facts.py); columns it does not give are never touched,
  nor are the derived facts. Extra columns are merged into `attributes`. `first_synced_at` is
  set when a customer is first inserted, with a new customer's facts (`_new_customer`). Facts
  of updated customers are refreshed batch by batch, in the batch's transaction; of inserted
  ones too once events or ledger entries exist (`_may_have_facts`). A file's `tags` replace the file's tags (`file_tags`), never the ones playbooks
  added or removed; `tags` is recomputed from both (engine/sync/tags.py).
- Events: an event for a customer not in the database is rejected. Facts of every customer with
  a valid event in the file (new or duplicate) are refreshed once at the end, so a re-run after
  a crash also repairs facts the crash left stale. Into an empty events table (a first load)
  those are everyone with events, refreshed as such (engine/sync/facts.py), and each batch is
  written in one statement that checks its customers (`EventWriter.write_new`).
- RFM scores (`rfm_score`, `rfm_segment`) rank customers against each other, so after an event
  sync that touched any customer they are brought up to date (engine/sync/rfm.py `refresh_rfm`:
  the customers who moved and those pushed across a score boundary, or everyone when there is
  no ranking to start from), in the transaction of the last facts refresh. A customer file
  changes no purchase fact and skips it.

Report counts add up (engine/sync/report.py): an existing customer whose given values all match
is unchanged; an event whose event_id is known is a duplicate when its contents match the stored
event and a conflict when they differ (engine/sync/conflicts.py).

Inserts take a fast path per backend (engine/sync/bulk.py); everything else is SQLAlchemy Core.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.clock import utcnow
from engine.store.dialect import insert_ignoring
from engine.store.tables import customers, events, points
from engine.sync.arrow import ParsedBatch, event_rows
from engine.sync.arrow_customers import CustomerBatch, customer_rows, write_customer_batch
from engine.sync.batches import (
    Progress,
    Writer,
    bytes_progress,
    existing_customers,
    parse_batch,
    raw_row,
    require_columns,
    run_batches,
)
from engine.sync.bulk import (
    EventWriter,
    build_indexes,
    defer_indexes,
    drop_customer_batch,
    event_writer,
    insert_rows,
    is_bulk,
)
from engine.sync.conflicts import conflict_reason, contents, same, stored
from engine.sync.files import Row, open_data_file, read_rows, write_rejects
from engine.sync.report import RowError, SyncReport
from engine.sync.rows import (
    CUSTOMER_COLUMNS,
    CustomerValues,
    EventValues,
    customer_values,
    event_values,
    event_warning,
    json_text,
)
from engine.sync.tags import json_bind, synced_tags

__all__ = ["RowError", "SyncReport", "add_customers", "ingest_customers", "ingest_events",
           "read_rows", "sync_customers", "sync_events", "write_customers", "write_events",
           "write_rejects"]

CUSTOMER_BATCH = 5_000
CUSTOMER_COMMIT = 50_000  # rows per transaction: fewer commits rewrite the indexes' pages less
EVENT_BATCH = 10_000
EVENT_COMMIT = 100_000
KNOWN_CUSTOMERS = 200_000  # customer ids remembered as found during an event sync, at most
FACT_DEFAULTS = {"last_active_at": None, "first_purchase_at": None, "last_purchase_at": None,
                 "purchase_count": 0, "total_spent": 0.0, "last_feedback_score": None,
                 "last_feedback_at": None, "points_balance": 0, "last_emailed_at": None,
                 "rfm_score": None, "rfm_segment": None}

def sync_customers(engine: sa.Engine, path: Path, fmt: str | None = None,
                   progress: Progress | None = None, now: datetime | None = None) -> SyncReport:
    """Upsert the customers of a CSV/JSONL file; `progress` gets the bytes read since last call."""
    with open_data_file(path, fmt) as data:
        require_columns(data, "customers")
        rows = customer_rows(data) or data.rows  # a large plain CSV file: parsed by column
        return ingest_customers(engine, rows, str(path), bytes_progress(data, progress), now)


def sync_events(engine: sa.Engine, path: Path, fmt: str | None = None,
                progress: Progress | None = None) -> SyncReport:
    """Append the events of a CSV/JSONL file; `progress` gets the bytes read since last call."""
    with open_data_file(path, fmt) as data:
        require_columns(data, "events")
        rows = event_rows(data) or data.rows  # a large plain CSV file: parsed by column
        return ingest_events(engine, rows, str(path), bytes_progress(data, progress))


def ingest_customers(engine: sa.Engine, rows: Iterable[Row], source: str,
                     progress: Progress | None = None, now: datetime | None = None) -> SyncReport:
    """Upsert customer rows; `progress` gets the number of rows of each committed batch."""
    report = SyncReport("customers", source)
    moment = now or utcnow()

    def start(connection: sa.Connection) -> tuple[Writer, Callable[[], None]]:
        new_have_facts = _may_have_facts(connection)
        deferred: list[sa.Index] | None = None  # decided at the first batch

        def write(batch: list[Row]) -> set[str]:
            nonlocal deferred
            if deferred is None:
                deferred = defer_indexes(connection, customers) if is_bulk(batch) else []
            if batch.__class__ is CustomerBatch:
                inserted, updated = write_customer_batch(
                    connection, batch, report, moment, _upsert)  # type: ignore[arg-type]
            else:
                inserted, updated = _upsert(connection, batch, report, moment)
            return (inserted | updated) if new_have_facts else updated

        def close() -> None:
            build_indexes(connection, deferred or [])
            drop_customer_batch(connection)

        return write, close

    return run_batches(engine, rows, report, start, progress, CUSTOMER_BATCH, refresh_each_batch=True,
                   commit_every=CUSTOMER_COMMIT)


def _may_have_facts(connection: sa.Connection) -> bool:
    """Whether a customer inserted now could have facts other than a new customer's defaults.

    Only events and ledger entries give facts. Events need their customer to exist, and the
    engine awards points to existing customers only, so on a database without either (the
    first customer file) the facts `_new_customer` writes are the refreshed ones: refreshing
    them again per batch cost a sixth of the sync.
    """
    return any(connection.execute(sa.select(table.c.customer_id).limit(1)).first() is not None
               for table in (events, points))


def ingest_events(engine: sa.Engine, rows: Iterable[Row], source: str,
                  progress: Progress | None = None) -> SyncReport:
    """Append event rows; `progress` gets the number of rows of each committed batch."""
    report = SyncReport("events", source)

    def start(connection: sa.Connection) -> tuple[Writer, Callable[[], None]]:
        writer = event_writer(connection)
        seen: set[str] = set()  # customers found so far (customers are never deleted)

        def write(batch: list[Row]) -> set[str]:
            writer.begin(is_bulk(batch))
            return _append_events(connection, writer, batch, report, seen)

        return write, writer.close

    return run_batches(engine, rows, report, start, progress, EVENT_BATCH, refresh_each_batch=False,
                   commit_every=EVENT_COMMIT, rerank=True, first_load=_no_events)


def _no_events(connection: sa.Connection) -> bool:
    """Whether the events table is empty (a first load)."""
    return connection.execute(sa.select(events.c.id).limit(1)).first() is None


# --- one small batch in the caller's transaction (the daemon's API, engine/sync/live.py) --------


def write_customers(connection: sa.Connection, rows: list[Row], report: SyncReport,
                    now: datetime) -> set[str]:
    """Upsert these customer rows exactly as a sync batch is written; the ids written."""
    return _upsert_customers(connection, rows, report, now)


def write_events(connection: sa.Connection, rows: list[Row], report: SyncReport) -> set[str]:
    """Append these event rows exactly as a sync batch is written (duplicates and conflicts
    judged the same way); the ids of the customers of the valid events."""
    writer = event_writer(connection)
    try:
        return _append_events(connection, writer, rows, report, set())
    finally:
        writer.close()


def add_customers(connection: sa.Connection, ids: set[str], now: datetime) -> set[str]:
    """Create the customers among `ids` that do not exist yet, with no columns but their id (as
    a customer file row with only `customer_id` would); the ids created.

    For an event that arrives before its customer (Segment's track before identify). INSERT ...
    ON CONFLICT DO NOTHING, so a replica creating the same customer meanwhile is no error.
    """
    found = {row.customer_id for row in existing_customers(connection, sorted(ids), [])}
    missing = sorted(ids - found)
    if missing:
        statement = insert_ignoring(customers, connection.dialect, ["customer_id"])
        connection.execute(statement, [_new_customer(CustomerValues(customer_id), now)
                                       for customer_id in missing])
    return set(missing)


# --- customers ----------------------------------------------------------------------------------


def _upsert_customers(connection: sa.Connection, batch: list[Row], report: SyncReport,
                      now: datetime) -> set[str]:
    """Insert new customers, update changed ones; the ids written."""
    inserted, updated = _upsert(connection, batch, report, now)
    return inserted | updated


def _upsert(connection: sa.Connection, batch: list[Row], report: SyncReport,
            now: datetime) -> tuple[set[str], set[str]]:
    """Insert new customers, update changed ones; the ids inserted and the ids updated."""
    pending: dict[str, CustomerValues] = {}
    for _, _, item in parse_batch(batch, customer_values, report):
        _fold(pending, item, report)
    columns = [_stored(name) for name in (*CUSTOMER_COLUMNS, "attributes")]
    existing = {row.customer_id: row for row in existing_customers(connection, list(pending), columns)}
    inserts: list[dict[str, Any]] = []
    updates: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for customer_id, item in pending.items():
        old = existing.get(customer_id)
        if old is None:
            inserts.append(_new_customer(item, now))
            continue
        changes = _changes(item, old._mapping)
        if changes:
            if "tags" in changes:
                changes["tags"] = json_text(changes["tags"])  # once; bound in 4 places
            updates[tuple(sorted(changes))].append(
                {"_id": customer_id, **{f"v_{k}": v for k, v in changes.items()}})
        else:
            report.unchanged += 1
    if inserts:
        insert_rows(connection, customers, inserts)
    for names, rows in updates.items():
        connection.execute(_update_statement(names), rows)
    report.inserted += len(inserts)
    report.updated += sum(len(rows) for rows in updates.values())
    return ({row["customer_id"] for row in inserts},
            {row["_id"] for rows in updates.values() for row in rows})


def _fold(pending: dict[str, CustomerValues], item: CustomerValues, report: SyncReport) -> None:
    """Keep one row per customer in a batch; a repeat changes it (update) or not (unchanged)."""
    earlier = pending.get(item.customer_id)
    if earlier is None:
        pending[item.customer_id] = item
        return
    before = (dict(earlier.columns), dict(earlier.attributes), set(earlier.removed))
    earlier.merge(item)
    if (earlier.columns, earlier.attributes, earlier.removed) == before:
        report.unchanged += 1
    else:
        report.updated += 1


def _new_customer(item: CustomerValues, now: datetime) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(CUSTOMER_COLUMNS)
    row.update(item.columns, customer_id=item.customer_id, first_synced_at=now,
               attributes=item.apply_attributes({}), **FACT_DEFAULTS)
    row["tags"] = row["file_tags"] = row["tags"] or []  # no playbook tagged a new customer yet
    row["created_at"] = row["created_at"] or now  # until events say better (engine/store/facts.py)
    row["last_active_at"] = row["created_at"]  # the facts of a customer without events
    return row


def _changes(item: CustomerValues, old: Any) -> dict[str, Any]:
    changes = {name: value for name, value in item.columns.items()
               if old[name] != value and not (name == "created_at" and value is None)}
    if item.attributes or item.removed:
        merged = item.apply_attributes(old["attributes"] or {})
        if merged != old["attributes"]:
            changes["attributes"] = merged
    return changes


def _stored(name: str) -> sa.ColumnElement[Any]:
    """The column a file's `name` is compared with: a file's `tags` are kept in `file_tags`."""
    return customers.c.file_tags.label("tags") if name == "tags" else customers.c[name]


def _update_statement(names: tuple[str, ...]) -> sa.Update:
    values: dict[str, Any] = {name: sa.bindparam(f"v_{name}", type_=customers.c[name].type)
                              for name in names}
    if "tags" in values:  # the file's tags, merged with the playbooks' (engine/sync/tags.py)
        values["file_tags"] = json_bind("v_tags")
        values["tags"] = synced_tags(values["file_tags"])
    return (sa.update(customers)
            .where(customers.c.customer_id == sa.bindparam("_id"))
            .values(values))


# --- events -------------------------------------------------------------------------------------


def _append_events(connection: sa.Connection, writer: EventWriter, batch: list[Row],
                   report: SyncReport, seen: set[str]) -> set[str]:
    """Insert the batch's new events; the ids of the customers its valid events belong to.

    A row rejected for its unknown customer does not hide a later valid row with its event_id;
    of valid rows with one event_id, the first wins (as across batches and runs), and a later
    one with other contents is a conflict (engine/sync/conflicts.py).
    """
    if batch.__class__ is ParsedBatch:
        report.read += len(batch.fast)  # type: ignore[attr-defined]
        parsed = batch.merge(parse_batch(batch.slow, event_values, report))  # type: ignore[attr-defined]
    else:
        parsed = parse_batch(batch, event_values, report)
    ids = {values[1] for _, _, values in parsed}
    if len(seen) > KNOWN_CUSTOMERS:
        seen.clear()  # bounded memory; they are looked up again
    unseen = ids - seen
    # Checking the customer in the insert costs ~2.5 µs an event, looking customers up ~12 µs
    # each: the hopeful way pays below ~4 events per customer not remembered (measured at
    # 100k customers: 2.25 events each gain, 8.5 lose).
    if writer.hopeful and 4 * len(unseen) > len(parsed):
        written = _append_all_new(writer, parsed, batch, report)
        if written is not None:
            seen.update(written)
            return written
    seen.update(found.customer_id for found in existing_customers(connection, list(unseen), []))
    known = ids & seen
    rows: dict[str, EventValues] = {}
    first: dict[str, int] = {}  # event_id -> the line it was first read from
    repeats: list[tuple[int, Any, EventValues]] = []
    for line, row, values in parsed:
        if values[1] not in known:
            reason = f"unknown customer {values[1]!r} (sync customers first)"
            report.rejected.append(RowError(line, reason, _row_raw(batch, line, row)))
        elif values[0] in rows:
            repeats.append((line, row, values))
        else:
            rows[values[0]] = values
            first[values[0]] = line
            warning = event_warning(values)
            if warning is not None:
                report.warnings.append(RowError(line, warning, _row_raw(batch, line, row)))
    inserted = writer.write(list(rows.values()), list(first.values())) if rows else 0
    report.inserted += inserted
    if inserted < len(rows) or repeats:
        _sort_known(connection, writer, rows, first, inserted, repeats, batch, parsed, report)
    return known


def _append_all_new(writer: EventWriter, parsed: list[Any], batch: Any,
                    report: SyncReport) -> set[str] | None:
    """The batch in one statement, when its events are all new and its customers all known
    (a first load): the ids of their customers. None, having written nothing, otherwise."""
    rows = [values for _, _, values in parsed]
    if len({values[0] for values in rows}) < len(rows) or not writer.write_new(
            rows, [line for line, _, _ in parsed]):
        return None
    for line, row, values in parsed:
        warning = event_warning(values)
        if warning is not None:
            report.warnings.append(RowError(line, warning, _row_raw(batch, line, row)))
    report.inserted += len(rows)
    return {values[1] for values in rows}


def _sort_known(connection: sa.Connection, writer: EventWriter, rows: dict[str, EventValues],
                first: dict[str, int], inserted: int, repeats: list[tuple[int, Any, EventValues]],
                batch: Any, parsed: list[Any], report: SyncReport) -> None:
    """Sort the rows whose event_id was known into duplicates and conflicts.

    Each is compared with the event that is kept: the first row with that id, whether it came
    earlier in this batch, earlier in this sync, or from a sync before. Only a batch in which
    some event was not inserted compares with the stored versions (never a first load): the
    database names the rows that may differ and only those, with the ids repeated within the
    batch, are read back, so the answer does not depend on where batches happen to end (the
    arrow path's are shorter).
    """
    source = report.source
    kept = {event_id: (contents(rows[event_id]), f"at {source}:{first[event_id]}")
            for _, _, (event_id, *_) in repeats}
    if inserted < len(rows):
        differing = writer.differing(list(rows.values()))
        row_at = {line: row for line, row, _ in parsed} if differing else {}
        judged = 0
        for event_id, row_id, old in stored(connection, list(differing | kept.keys())):
            line = first[event_id]
            earlier = writer.lines.line_of(row_id)
            if earlier == line:
                continue  # inserted by this batch
            where = f"at {source}:{earlier}" if earlier is not None else "already in the database"
            if event_id in differing:
                _judge(event_id, contents(rows[event_id]), (old, where), line,
                       (batch, line, row_at[line]), report)
                judged += 1
            kept[event_id] = (old, where)
        report.duplicates += len(rows) - inserted - judged  # the database found them the same
    for line, row, values in repeats:
        _judge(values[0], contents(values), kept[values[0]], line, (batch, line, row), report)


def _judge(event_id: str, new: Any, kept: tuple[Any, str], line: int,
           source: tuple[Any, int, dict[str, Any] | None], report: SyncReport) -> None:
    """A row whose event_id is known: a duplicate when the contents agree, else a conflict.

    `source` is (batch, line, row): the row as read is only rebuilt for a conflict (the arrow
    path keeps columns, and rebuilding every duplicate's row cost a third of a re-sync)."""
    old, where = kept
    if same(new, old):
        report.duplicates += 1
    else:
        reason = conflict_reason(event_id, new, old, where)
        report.conflicts.append(RowError(line, reason, _row_raw(*source)))


def _row_raw(batch: Any, line: int, row: dict[str, Any] | None) -> dict[str, str] | str:
    """The row of `line` as read, also when the arrow path kept only its values."""
    return raw_row(row) if row is not None else batch.raw(line)
