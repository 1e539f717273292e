"""Bulk writes for sync, per backend: the few statements where SQLAlchemy's per-row work dominates.

Sync inserts millions of rows; going through SQLAlchemy's type processing per value costs more
than the database does. These writers hand the driver values already in storage form: on SQLite
times as the exact text SQLAlchemy's DateTime stores (`YYYY-MM-DD HH:MM:SS.ffffff`, UTC), dates
as `YYYY-MM-DD` and JSON as text, so what SQLAlchemy reads back (through `UTCDateTime`, `JSON`)
is identical to what it would have written; on PostgreSQL aware datetimes and JSON text, which
psycopg sends untyped for the server to cast. Everything else in sync uses SQLAlchemy Core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence, Sized
from contextlib import contextmanager
from datetime import date, datetime
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import visitors

from engine.clock import aware_utc
from engine.store.facts import DERIVED_FACTS
from engine.store.tables import Event, UTCDateTime, customers
from engine.sync.arrow import ParsedBatch
from engine.sync.conflicts import LineIndex, differing_ids
from engine.sync.rows import EventValues, json_text, utc_text

SQLITE_CACHE_KIB = 64 * 1024
SQLITE_FINISH_CACHE_KIB = 16 * 1024
"""The page cache while a sync finishes (`finishing_cache`)."""
EVENT_SQL_COLUMNS = "event_id, customer_id, type, occurred_at, amount, score, properties"


def bulk_session(connection: sa.Connection) -> Callable[[], None]:
    """Tune a SQLite connection for a sync (call outside a transaction); returns the undo.

    A bigger page cache keeps the events indexes in memory between commits (inserts land all
    over the customer index). Foreign-key checks are off while sync writes (a fifth of the
    insert time): every event's customer was just looked up in the same transaction, customers
    are never deleted, and the customers table has no foreign keys. No `PRAGMA threads`:
    on 2 cores its helper sorter threads sped up one index build of a 1M load (2.3 s ->
    1.8 s) and no other step measurably (nothing when the cores were busy), and each takes its
    own sort buffer (that index: 143 MB -> 211 MB of peak memory), which the 500 MB budget of
    a 1M sync cannot spare. After an error sync invalidates the connection instead of
    undoing, so none of this reaches another user.
    """
    if connection.dialect.name != "sqlite":
        return _nothing
    previous = connection.exec_driver_sql("PRAGMA cache_size").scalar()
    connection.exec_driver_sql(f"PRAGMA cache_size={-SQLITE_CACHE_KIB}")
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")

    def undo() -> None:
        connection.exec_driver_sql(f"PRAGMA cache_size={previous}")
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")

    return undo


def finishing_cache(connection: sa.Connection) -> None:
    """SQLite, once a sync has written its rows: a smaller page cache for what follows (the
    index builds of a first load, the fact refresh, RFM's ranking); the undo of
    `bulk_session` restores the cache at the end.

    SQLite gives each sort the page cache's size as its memory before it spills to disk, and
    ranking everyone runs three window sorts and an ORDER BY at once: with 64 MB that UPDATE
    alone added 119 MB to the peak of a 1M `many` first load (613 MB). With 16 MB, at 1M
    `few` on a copy of the loaded database: the three events/facts index builds 4.4 s ->
    3.7 s (143 MB -> 47 MB), the refresh 5.4 s -> 5.1 s (145 -> 95 MB), the ranking 5.2 s ->
    5.0 s (230 -> 133 MB); smaller sort runs fit the CPU's caches better.
    """
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql(f"PRAGMA cache_size={-SQLITE_FINISH_CACHE_KIB}")


def _nothing() -> None:
    """Nothing to undo."""


BULK_ROWS = 2_000
"""A batch of at least this many rows makes a load a bulk one (`is_bulk`)."""


def is_bulk(batch: Sized) -> bool:
    """Whether a batch makes its load a bulk load, worth dropping indexes for and building
    them after: a block parsed by column (engine/sync/arrow.py: a CSV file of 8 MB or more,
    whatever rows a block holds) or a batch of BULK_ROWS rows or more. A smaller load (a
    `retain test` history, a few rows from a script) keeps its indexes. Measured on fresh
    SQLite stores (few shape, CPU): 30 customers 3.6 ms kept against 5.9 dropped, their 66
    events 11.5 against 13.2; even at 300 and 1,000 customers (690 and 2,200 events); 3,000
    customers 107 ms either way, their 6,600 events 139 kept against 129 dropped."""
    return isinstance(batch, ParsedBatch) or len(batch) >= BULK_ROWS


def defer_indexes(connection: sa.Connection, table: sa.Table) -> list[sa.Index]:
    """Into an empty table: drop its secondary indexes, to be built by `build_indexes`.

    SQLite and PostgreSQL build an index from sorted rows faster than they maintain one under
    inserts in random key order (emails, ids). Unique indexes stay: they check as rows come.
    Should the process die before they are built, `engine.store.open_store` recreates missing
    indexes. Returns the indexes dropped (none into a table with rows).
    """
    if connection.execute(sa.select(sa.literal(1)).select_from(table).limit(1)).first() is not None:
        return []
    deferred = [index for index in table.indexes if not index.unique]
    for index in deferred:
        index.drop(connection)
    return deferred


def build_indexes(connection: sa.Connection, deferred: list[sa.Index]) -> None:
    """Build the indexes `defer_indexes` dropped."""
    for index in deferred:
        index.create(connection)


@contextmanager
def fact_indexes_dropped(connection: sa.Connection,
                         everyone: bool) -> Iterator[Callable[[], None]]:
    """SQLite, while a refresh rewrites the facts of nearly every customer (`everyone`: a bulk
    first load of events) and RFM ranks them all: the customer indexes that read a derived fact
    or a ranked value (the facts index, RFM's) are dropped, then built again from the refreshed
    rows, which costs less than moving each entry (1M customers of the few shape: refresh and
    ranking 24 s with them kept, 15 s without). Yields the rebuild, for a step that needs the
    indexes before the end (RFM's bounds are index walks); it runs at the end otherwise. After
    an error they stay dropped for `open_store` to build.
    """
    dropped: list[sa.Index] = []
    if everyone and connection.dialect.name == "sqlite":  # PostgreSQL would lock readers out
        dropped = [index for index in customers.indexes
                   if not index.unique and _reads_facts(index)]
    for index in dropped:
        index.drop(connection)

    def rebuild() -> None:
        build_indexes(connection, dropped)
        dropped.clear()

    yield rebuild
    rebuild()


def _reads_facts(index: sa.Index) -> bool:
    """The index has a derived fact or an RFM ranked value among its columns or its WHERE."""
    where = index.dialect_options["sqlite"].get("where")
    parts = [*index.expressions, *([where] if where is not None else [])]
    names = {node.name for part in parts for node in visitors.iterate(part)
             if isinstance(node, sa.Column)}
    return any(name in DERIVED_FACTS or name.startswith("rfm_") for name in names)


class EventWriter:
    """SQLite: executemany of INSERT ... ON CONFLICT DO NOTHING on the driver's cursor.

    Into an empty events table (a first load) the secondary indexes are dropped and built again
    at `close`: SQLite builds an index from sorted rows many times faster than it maintains one
    under random inserts. Only the unique `event_id` index, which deduplicates, stays. Should the
    process die before `close`, `engine.store.open_store` recreates missing indexes.

    Once a batch had known event ids (a re-sync, an overlapping export), the following batches
    are staged in a temporary table first and inserted from it, so that the database can
    compare them with the stored events (`differing`) without binding every value twice.
    """

    sql = (f"INSERT INTO events ({EVENT_SQL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
           " ON CONFLICT (event_id) DO NOTHING")
    known = "retain_event_known"
    """The temporary table of the batch being written, once some batch had known event ids."""
    from_known = (f"INSERT INTO events ({EVENT_SQL_COLUMNS}) SELECT {EVENT_SQL_COLUMNS}"
                  f" FROM {known} WHERE true ORDER BY rowid ON CONFLICT (event_id) DO NOTHING")

    guarded = (f"INSERT INTO events ({EVENT_SQL_COLUMNS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7"
               " WHERE EXISTS (SELECT 1 FROM customers WHERE customer_id = ?2)"
               " ON CONFLICT (event_id) DO NOTHING")
    HOPES = 2
    """Batches `write_new` may find not all new in a row before the sync stops trying."""

    def __init__(self, connection: sa.Connection) -> None:
        self.connection = connection
        self.top = _largest_id(connection)
        self.lines = LineIndex(self.top)
        self.staging = False
        self.hopes = self.HOPES
        self.deferred: list[sa.Index] | None = None  # decided by `begin`

    def begin(self, bulk: bool) -> None:
        """Before each batch; the first decides: a first load (no events yet) whose first batch
        is a bulk one (`bulk`, `is_bulk`) drops the secondary indexes, for `close` to build (SQLite and
        PostgreSQL sort once faster than they insert every row's entries: a third of a large
        first load's time on PostgreSQL)."""
        if self.deferred is None:
            self.deferred = [ix for ix in Event.__table__.indexes if not ix.unique] if (
                bulk and self.top == 0) else []
            for index in self.deferred:
                index.drop(self.connection)

    def write(self, rows: list[EventValues], lines: list[int]) -> int:
        """Insert rows (read from these lines), skipping known event ids; how many were new.

        The lines of the inserted events are remembered in `self.lines` by row id. SQLite gives
        a new row the largest id plus one, and this transaction holds the write lock from its
        first insert on, so when every row was new their ids are the run ending at the last one.
        """
        if self.staging:
            self._stage(rows)
            count = self.connection.exec_driver_sql(self.from_known).rowcount
        else:
            count = self.connection.exec_driver_sql(self.sql, rows).rowcount  # type: ignore[arg-type]
        if count == len(rows):
            last = self.connection.exec_driver_sql("SELECT last_insert_rowid()").scalar_one()
            self.lines.record_run(last, lines)
            self.top = last
        elif count:
            line_of = dict(zip((row[0] for row in rows), lines, strict=True))
            found = self.connection.exec_driver_sql(
                "SELECT id, event_id FROM events WHERE id > ?", (self.top,)).all()
            self._record(found, line_of)
        return count

    @property
    def hopeful(self) -> bool:
        """Whether `write_new` is worth trying (it has not failed HOPES times in a row)."""
        return self.hopes > 0 and not self.staging

    def write_new(self, rows: list[EventValues], lines: list[int]) -> bool:
        """Insert these rows (distinct event ids, read from these lines) if every one is a new
        event of a known customer, checking both in the one statement; else write nothing.

        This spares a first load looking its customers up from Python (a fifth of its time
        with few events per customer). The rows inserted are the run of ids ending at the last
        one (see `write`), so a statement that skipped some row is undone by deleting that run,
        and the caller writes the batch again the checked way.
        """
        count = self.connection.exec_driver_sql(self.guarded, rows).rowcount  # type: ignore[arg-type]
        if count == len(rows):
            self.hopes = self.HOPES
            if count:
                last = self.connection.exec_driver_sql("SELECT last_insert_rowid()").scalar_one()
                self.lines.record_run(last, lines)
                self.top = last
            return True
        if count:
            last = self.connection.exec_driver_sql("SELECT last_insert_rowid()").scalar_one()
            self.connection.exec_driver_sql("DELETE FROM events WHERE id > ? AND id <= ?",
                                            (last - count, last))
        self.hopes -= 1
        return False

    def differing(self, rows: list[EventValues]) -> set[str]:
        """The ids among the rows just written whose stored event may say otherwise.

        Only asked after a batch in which some event was not inserted, so a first load never
        stages anything: the first such batch is staged here, and `write` stages the next ones
        (engine/sync/conflicts.py `differing_ids` compares).
        """
        if not self.staging:
            self._stage(rows)
            self.staging = True
        return differing_ids(self.connection, self.known)

    def _stage(self, rows: list[EventValues]) -> None:
        """Put these rows, and only these, in the temporary table, in their order."""
        self.connection.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.known} (event_id TEXT, customer_id TEXT,"
            " type TEXT, occurred_at TEXT, amount REAL, score REAL, properties TEXT)")
        self.connection.exec_driver_sql(f"DELETE FROM {self.known}")
        self.connection.exec_driver_sql(
            f"INSERT INTO {self.known} ({EVENT_SQL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows)  # type: ignore[arg-type]

    def _record(self, found: list[Any], line_of: dict[str, int]) -> None:
        """Remember the lines of these (row id, event_id) pairs that this batch wrote."""
        ours = [(row_id, line_of[event_id]) for row_id, event_id in found if event_id in line_of]
        if ours:
            ids, lines = zip(*ours, strict=True)
            self.lines.record(ids, lines)
            self.top = max(self.top, *ids)

    def close(self) -> None:
        """Build the indexes a first load deferred; drop the temporary table if there is one."""
        build_indexes(self.connection, self.deferred or [])
        self.connection.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{self.known}")


class PostgresEventWriter(EventWriter):
    """PostgreSQL: COPY into a temporary table, then one INSERT ... SELECT ... ON CONFLICT."""

    table = "retain_event_batch"
    hopeful = False  # `= ANY(array)` looks customers up cheaply enough

    def __init__(self, connection: sa.Connection) -> None:
        self.connection = connection
        self.top = _largest_id(connection)
        self.lines = LineIndex(self.top)
        self.deferred = None  # decided by `begin`
        connection.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.table} (line integer, event_id text,"
            " customer_id text, type text, occurred_at timestamptz, amount double precision,"
            " score double precision, properties jsonb)")

    def write(self, rows: list[EventValues], lines: list[int]) -> int:
        """Insert rows (read from these lines), skipping known event ids; how many were new.

        The batch stays staged until the next one, for `differing` to compare.
        """
        self.connection.exec_driver_sql(f"TRUNCATE {self.table}")
        driver = self.connection.connection.driver_connection
        with driver.cursor() as cursor, cursor.copy(  # type: ignore[union-attr]
                f"COPY {self.table} (line, {EVENT_SQL_COLUMNS}) FROM STDIN") as copy:
            for line, row in zip(lines, rows, strict=True):  # times are UTC, whatever the session's
                copy.write_row((line, *row[:3], row[3] + "+00", *row[4:]))
        found = self.connection.exec_driver_sql(
            f"INSERT INTO events ({EVENT_SQL_COLUMNS}) SELECT {EVENT_SQL_COLUMNS} FROM {self.table}"
            " ORDER BY line ON CONFLICT (event_id) DO NOTHING RETURNING id, event_id").all()
        self._record(found, dict(zip((row[0] for row in rows), lines, strict=True)))
        return len(found)

    def differing(self, rows: list[EventValues]) -> set[str]:
        """The ids among the rows just written whose stored event may say otherwise.

        The batch is still staged from `write`, so the database compares it as it is.
        """
        return differing_ids(self.connection, self.table)

    def close(self) -> None:
        """Build the indexes a first load deferred; drop the temporary table."""
        build_indexes(self.connection, self.deferred or [])
        self.connection.exec_driver_sql(f"DROP TABLE IF EXISTS {self.table}")


def _largest_id(connection: sa.Connection) -> int:
    """The largest event row id so far (0 for an empty table): ids above it are this sync's."""
    return connection.execute(sa.select(sa.func.max(Event.id))).scalar() or 0


def event_writer(connection: sa.Connection) -> EventWriter:
    """The event writer for this connection's backend."""
    if connection.dialect.name == "postgresql":
        return PostgresEventWriter(connection)
    return EventWriter(connection)


NEW_CUSTOMER_COLUMNS = ("customer_id, email, name, created_at, birthday, timezone, country,"
                        " segment, tags, file_tags, attributes, first_synced_at, last_active_at,"
                        " first_purchase_at, last_purchase_at, purchase_count, total_spent,"
                        " last_feedback_score, last_feedback_at, points_balance, last_emailed_at,"
                        " rfm_score, rfm_segment")
"""What engine/sync/ingest.py `_new_customer` writes; the facts are a new customer's defaults
(its FACT_DEFAULTS), last_active_at its created_at."""
_NEW_CUSTOMER_FACTS = "NULL, NULL, 0, 0.0, NULL, NULL, 0, NULL, NULL, NULL"


def insert_new_customers(connection: sa.Connection, rows: list[tuple[Any, ...]],
                         now: datetime) -> set[str]:
    """Insert customers that do not exist yet, from stored values in the order of
    engine/sync/arrow_customers.py `STORED` (created_at None: `now`); the ids that existed.

    SQLite: INSERT ... ON CONFLICT DO NOTHING through the driver. Should a row be skipped, the
    ones inserted are the run of row ids ending at the last one (the statement holds the write
    lock, and SQLite gives each new row the largest id plus one), so the others existed.
    PostgreSQL: COPY into a temporary table, then one INSERT ... SELECT ... ON CONFLICT DO
    NOTHING RETURNING the ids inserted.
    """
    if not rows:
        return set()
    if connection.dialect.name == "postgresql":
        return _copy_new_customers(connection, rows, now)
    stamp = f"'{utc_text(now)}'"  # fixed digits: safe as a literal
    created = f"coalesce(?4, {stamp})"
    sql = (f"INSERT INTO customers ({NEW_CUSTOMER_COLUMNS}) VALUES (?1, ?2, ?3, {created}, ?5,"
           f" ?6, ?7, ?8, ?9, ?9, ?10, {stamp}, {created}, {_NEW_CUSTOMER_FACTS})"
           " ON CONFLICT (customer_id) DO NOTHING")
    count = connection.exec_driver_sql(sql, rows).rowcount  # type: ignore[arg-type]
    if count == len(rows):
        return set()
    inserted: set[str] = set()
    if count:
        last = connection.exec_driver_sql("SELECT last_insert_rowid()").scalar_one()
        inserted = set(connection.exec_driver_sql(
            "SELECT customer_id FROM customers WHERE rowid > ?", (last - count,)).scalars())
    return {row[0] for row in rows} - inserted


_CUSTOMER_BATCH = "retain_customer_batch"


def _copy_new_customers(connection: sa.Connection, rows: list[tuple[Any, ...]],
                        now: datetime) -> set[str]:
    connection.exec_driver_sql(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {_CUSTOMER_BATCH} (customer_id text, email text,"
        " name text, created_at timestamptz, birthday date, timezone text, country text,"
        " segment text, tags jsonb, attributes jsonb)")
    connection.exec_driver_sql(f"TRUNCATE {_CUSTOMER_BATCH}")
    driver = connection.connection.driver_connection
    with driver.cursor() as cursor, cursor.copy(  # type: ignore[union-attr]
            f"COPY {_CUSTOMER_BATCH} FROM STDIN") as copy:
        for row in rows:  # times are UTC, whatever the session's
            copy.write_row((*row[:3], None if row[3] is None else row[3] + "+00", *row[4:]))
    created = "coalesce(created_at, %(now)s)"
    inserted = connection.exec_driver_sql(
        f"INSERT INTO customers ({NEW_CUSTOMER_COLUMNS}) SELECT customer_id, email, name,"
        f" {created}, birthday, timezone, country, segment, tags, tags, attributes, %(now)s,"
        f" {created}, {_NEW_CUSTOMER_FACTS} FROM {_CUSTOMER_BATCH}"
        " ON CONFLICT (customer_id) DO NOTHING RETURNING customer_id", {"now": now}).scalars()
    return {row[0] for row in rows} - set(inserted)


def drop_customer_batch(connection: sa.Connection) -> None:
    """Drop the temporary table of `insert_new_customers` on PostgreSQL, if there is one."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {_CUSTOMER_BATCH}")


def insert_rows(connection: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """Plain INSERT of complete rows (every dict has every key of the first one)."""
    if not rows:
        return
    names = list(rows[0])
    sqlite = connection.dialect.name == "sqlite"
    encoders = [(i, _encoder(table.c[name].type, sqlite)) for i, name in enumerate(names)]
    encoders = [(i, encode) for i, encode in encoders if encode is not None]
    marker = "?" if sqlite else "%s"
    sql = (f"INSERT INTO {table.name} ({', '.join(names)})"
           f" VALUES ({', '.join([marker] * len(names))})")
    pick = itemgetter(*names)
    values = []
    for row in rows:
        value = list(pick(row))
        for i, encode in encoders:
            if value[i] is not None:
                value[i] = encode(value[i])
        values.append(tuple(value))
    connection.exec_driver_sql(sql, values)  # type: ignore[arg-type]


def _encoder(column_type: sa.types.TypeEngine[Any], sqlite: bool) -> Any:
    """How a non-null value of this type goes to the driver; None when as it is."""
    if isinstance(column_type, sa.JSON):
        return json_text
    if isinstance(column_type, UTCDateTime):
        return utc_text if sqlite else aware_utc
    if sqlite and isinstance(column_type, sa.Date):
        return date.isoformat
    return None




GROWTH_TO_ANALYZE = 0.1


def analyze_if_grown(connection: sa.Connection, table: str, inserted: int) -> bool:
    """PostgreSQL: refresh the planner's statistics of a table this sync grew substantially.

    Without statistics (autovacuum off, as in CI, or not yet run after a bulk load) PostgreSQL
    guesses, and picked a plan that made a dry-run after loading CDNOW take 64-230 s instead of
    about 2 s. So a sync that inserted more than a tenth of a table's rows, or into a table never
    analyzed, runs ANALYZE on it (a sample: about a second on millions of rows). SQLite plans
    these queries well without statistics; it is left alone. Returns whether it ran.
    """
    if connection.dialect.name != "postgresql" or inserted <= 0:
        return False
    estimate = connection.exec_driver_sql(
        "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", (table,)).scalar()
    if estimate is not None and estimate > 0 and inserted <= GROWTH_TO_ANALYZE * estimate:
        return False
    connection.exec_driver_sql(f"ANALYZE {table}")
    connection.commit()
    return True
