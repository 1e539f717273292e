"""Driving a sync: rows in batches, a transaction every so many rows, facts refreshed at the end.

Shared by the customer, event and suppression syncs (engine/sync/ingest.py,
engine/sync/suppressions.py): each gives a writer for one batch; this module reads, batches,
parses, commits, refreshes the facts of the customers touched and collects the report.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from engine.errors import DataFileError
from engine.store.facts import customers
from engine.sync.arrow import ParsedBatch
from engine.sync.bulk import (
    analyze_if_grown,
    bulk_session,
    fact_indexes_dropped,
    finishing_cache,
    is_bulk,
)
from engine.sync.facts import CustomerIdSet, refresh_facts, refresh_rfm
from engine.sync.files import BadLine, DataFile, Row
from engine.sync.report import RowError, SyncReport
from engine.sync.rfm import rank_everyone
from engine.sync.rows import EVENT_COLUMNS, RowProblem

LOOKUP_CHUNK = 5_000  # ids bound per IN (...) query, well below SQLite's and psycopg's limits
REQUIRED_COLUMNS = {"customers": ("customer_id",), "events": EVENT_COLUMNS,
                    "suppressions": ("email",)}

Progress = Callable[[int], None]

# --- driving batches --------------------------------------------------------------------------

Writer = Callable[[list[Row]], set[str]]
"""Writes one batch in the open transaction; returns the ids of the customers whose facts change."""


def nothing() -> None:
    """No clean-up needed."""


def run_batches(engine: sa.Engine, rows: Iterable[Row], report: SyncReport,
            start: Callable[[sa.Connection], tuple[Writer, Callable[[], None]]],
            progress: Progress | None, size: int, *, refresh_each_batch: bool,
            commit_every: int = 0, rerank: bool = False,
            first_load: Callable[[sa.Connection], bool] | None = None) -> SyncReport:
    """Write batch by batch, commit every `commit_every` rows; refresh the touched customers' facts.

    `rerank`: when any customer was touched, bring the RFM scores up to date at the end (event
    syncs: purchases move ranks; a customer file changes no purchase fact, so it skips it).
    `first_load`: whether the sync starts on an empty table, where the customers it touches are
    exactly those with events (engine/sync/facts.py `cover_everyone_with_events`).

    After an unexpected error the connection is invalidated rather than returned to the pool,
    so no session state (temporary tables, SQLite pragmas) leaks to its next user.
    """
    with engine.connect() as connection, _collector_paused():
        touched = CustomerIdSet(connection, f"retain_sync_{report.kind}")
        if first_load is not None and first_load(connection):
            touched.cover_everyone_with_events()
        connection.commit()
        undo = bulk_session(connection)
        write, close = start(connection)
        changed = False  # some customer touched: RFM ranks may have moved
        bulk = False  # a bulk load (engine/sync/bulk.py `is_bulk`)
        try:
            pending = 0
            for batch in _batches(rows, size):
                bulk = bulk or is_bulk(batch)
                ids = write(batch)
                touched.add(ids)
                changed = changed or bool(ids)
                if refresh_each_batch:
                    _refresh(connection, touched)
                pending += len(batch)
                if pending >= commit_every:
                    connection.commit()
                    pending = 0
                if progress is not None:
                    progress(len(batch))
        except DataFileError as exc:
            _finish(connection, touched, close, undo, rerank and changed, bulk)
            raise DataFileError(f"{exc} (synced up to there: {report.summary()})") from exc
        except BaseException:
            connection.invalidate()
            raise
        _finish(connection, touched, close, undo, rerank and changed, bulk)
        if report.kind in ("customers", "events"):
            analyze_if_grown(connection, report.kind, report.inserted)
    report.sort()
    return report


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while syncing.

    Sync allocates millions of short-lived tuples and dicts, and no reference cycles (plain
    reference counting frees them all); the collector's repeated passes over each live batch
    cost a sixth of a sync's time. It is switched back on when sync ends, however it ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _finish(connection: sa.Connection, touched: CustomerIdSet, close: Callable[[], None],
            undo: Callable[[], None], rerank: bool = False, bulk: bool = False) -> None:
    finishing_cache(connection)  # sorts from here on: less memory (and no slower)
    close()  # first: it may rebuild indexes that the refresh needs
    everyone = touched.everyone and touched.pending
    with fact_indexes_dropped(connection, everyone and bulk) as rebuild:
        _refresh(connection, touched)
        # After the facts it ranks; in the same transaction, so both land or neither. Nearly
        # every customer's facts changed: all of them ranked again, with the indexes dropped.
        if rerank and everyone:
            rank_everyone(connection, before_bounds=rebuild)
        elif rerank:
            refresh_rfm(connection)
    touched.drop()
    connection.commit()
    undo()  # after the commit: SQLite ignores these pragmas inside a transaction


def _refresh(connection: sa.Connection, touched: CustomerIdSet) -> None:
    if touched.pending:  # (an empty scope still costs its statements)
        refresh_facts(connection, touched)
        touched.clear()


def _batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    """Rows in lists of `size`; rows read before a file error still come out before it is raised."""
    batch: list[Row] = []
    try:
        for row in rows:
            if isinstance(row, ParsedBatch):  # already a batch (engine/sync/arrow.py)
                if batch:
                    yield batch
                    batch = []
                yield row  # type: ignore[misc]
                continue
            batch.append(row)
            if len(batch) >= size:
                yield batch
                batch = []
    except DataFileError:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def parse_batch(batch: list[Row], parse: Callable[[dict[str, Any]], Any],
                 report: SyncReport) -> list[tuple[int, dict[str, Any], Any]]:
    """(line, row, parsed) for each good row; each bad one is recorded as rejected."""
    report.read += len(batch)
    parsed = []
    keep = parsed.append
    for line, row in batch:
        if row.__class__ is BadLine:
            report.rejected.append(RowError(line, row.reason, row.raw))  # type: ignore[attr-defined]
            continue
        try:
            keep((line, row, parse(row)))
        except RowProblem as exc:
            report.rejected.append(RowError(line, str(exc), raw_row(row)))
    return parsed


def raw_row(row: dict[str, Any]) -> dict[str, str] | str:
    if all(isinstance(value, str) for value in row.values()):
        return row
    return json.dumps(row, ensure_ascii=False, default=str)


def require_columns(data: DataFile, kind: str) -> None:
    if data.header is None:
        return
    missing = [name for name in REQUIRED_COLUMNS[kind] if name not in data.header]
    if missing:
        raise DataFileError(f"{data.path}:1: the header lacks the column(s) {', '.join(missing)}"
                            f" that a {kind} file needs")


def bytes_progress(data: DataFile, progress: Progress | None) -> Progress | None:
    if progress is None:
        return None
    done = 0

    def advance(_rows: int) -> None:
        nonlocal done
        position = data.position()
        progress(position - done)
        done = position

    return advance


def existing_customers(connection: sa.Connection, ids: list[str],
              columns: list[sa.ColumnElement[Any]]) -> Iterator[sa.Row[Any]]:
    """The customers among `ids` that exist, with these columns."""
    id_column = customers.c.customer_id
    postgres = connection.dialect.name == "postgresql"
    for start in range(0, len(ids), LOOKUP_CHUNK):
        chunk = ids[start:start + LOOKUP_CHUNK]
        found = (id_column == sa.any_(sa.bindparam("ids", chunk, type_=ARRAY(sa.String)))
                 if postgres else id_column.in_(chunk))  # one array beats thousands of binds
        yield from connection.execute(sa.select(id_column, *columns).where(found))
