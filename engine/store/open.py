"""Opening a database: a writer that migrates, or a reader that never writes a byte.

The one place that decides how a command opens the store:

- `open_store(url)`, the writer (sync, demo, later run and the daemon): upgrades the schema with
  Alembic, recreates missing indexes, and sets SQLite to WAL so the CLI, the daemon and a second
  process can share one file.
- `open_reader(url)`, the reader (dry-run, explain, customer show, report, validate --db): SQLite
  through a `mode=ro` URI, PostgreSQL in read-only transactions. It never migrates, builds indexes
  or changes the journal mode; a database at another schema version is refused with a message
  naming `retain migrate`, because evaluating playbooks on a schema the code does not expect would
  give wrong answers or fail half-way.
- `upgrade_store(url)`, `retain migrate`: the writer's upgrade on its own, saying from and to.

PostgreSQL URLs are routed to psycopg 3 either way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from engine.config import DEFAULT_URL
from engine.errors import StoreError
from engine.store.dialect import SHA256, sqlite_sha256

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 10_000
MIGRATE_HINT = "run `retain migrate`"


def schema_revisions() -> list[str]:
    """Every schema revision this Retain knows, oldest first; the last one is what it needs.

    Read from the migration file names (`0002_segment_membership.py` is revision 0002), so a
    reading command learns the head without importing Alembic; tests/test_store.py checks that
    Alembic's own history says the same.
    """
    names = (p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))
    return sorted(names)


def normalize_url(url: str) -> str:
    """Route plain PostgreSQL URLs to the psycopg 3 driver that Retain depends on."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database or another backend."""
    parsed = sa.engine.make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


# --- the writer ------------------------------------------------------------------------------


def _on_sqlite_connect(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()
    _sqlite_functions(dbapi_connection)


def _sqlite_functions(dbapi_connection: Any) -> None:
    """SQL functions PostgreSQL has built in and SQLite lacks (engine/store/dialect.py)."""
    dbapi_connection.create_function(SHA256, -1, sqlite_sha256, deterministic=True)


def make_engine(url: str = DEFAULT_URL) -> sa.Engine:
    """A writer's engine with the per-dialect settings Retain relies on (no schema changes yet)."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def migrate(engine: sa.Engine, to: str = "head") -> None:
    """Bring the schema to the newest revision (tests: to an older one); a no-op when it is there.

    A database made by a newer Retain is refused before Alembic sees it (Alembic would fail on
    the revision it cannot find)."""
    from alembic import command
    from alembic.config import Config

    try:
        with engine.connect() as connection, _migration_lock(connection):
            found = current_revision(connection)
            if found is not None and found not in schema_revisions():
                raise StoreError(_unknown_schema(found))
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, to)
    except DBAPIError as exc:
        raise StoreError(f"cannot open database {engine.url!r}: {exc.orig}") from exc


MIGRATION_LOCK = 0x5245_5441_494E  # "RETAIN": the advisory lock key of schema migrations


@contextmanager
def _migration_lock(connection: sa.Connection) -> Iterator[None]:
    """One transaction that migrates, holding a lock no other migrator can share, taken BEFORE
    the revision is read: two processes opening one fresh database at once then run the
    migrations once, the second finding the schema made when it gets the lock (issue 13).

    PostgreSQL: `pg_advisory_xact_lock` on the migrating connection, released by the commit or
    rollback of that very transaction (no session lock left behind on a pooled connection).
    SQLite: `BEGIN IMMEDIATE`, its write lock, waited for up to the busy timeout."""
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        connection.begin()
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                           {"key": MIGRATION_LOCK})
    try:
        yield
    except BaseException:
        connection.rollback()
        raise
    connection.commit()


def ensure_indexes(engine: sa.Engine) -> None:
    """Create declared indexes that are missing (a bulk load that died before rebuilding them)."""
    from engine.store.tables import Customer, Event

    with engine.begin() as connection:
        inspector = sa.inspect(connection)
        for table in (Event.__table__, Customer.__table__):
            existing = {ix["name"] for ix in inspector.get_indexes(table.name)}
            for index in table.indexes:  # type: ignore[attr-defined]
                if index.name not in existing:
                    index.create(connection)


def open_store(url: str = DEFAULT_URL) -> sa.Engine:
    """The writer's engine for `url`, with the schema created or upgraded first."""
    engine = make_engine(url)
    migrate(engine)
    ensure_indexes(engine)
    return engine


@dataclass(frozen=True)
class SchemaChange:
    """What `retain migrate` did: the revision before (None: no Retain schema yet) and after."""

    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def upgrade_store(url: str = DEFAULT_URL) -> SchemaChange:
    """Upgrade the database at `url` to the schema this Retain needs (creating it if new)."""
    engine = make_engine(url)
    try:
        before = read_revision(engine)
        migrate(engine)
        ensure_indexes(engine)
        return SchemaChange(before, read_revision(engine) or "")
    finally:
        engine.dispose()


# --- the reader ------------------------------------------------------------------------------


def _on_sqlite_reader_connect(dbapi_connection: object, _record: object) -> None:
    """Wait for a writer instead of failing, and refuse writes even to the TEMP schema."""
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()
    _sqlite_functions(dbapi_connection)


def _on_pg_reader_connect(dbapi_connection: object, _record: object) -> None:
    """Every transaction of this session is READ ONLY: the server refuses any write.

    JIT is off too: compiling a statement costs ~0.3 s, more than these queries gain from it, and
    a plan's reader runs one per batch (a historical dry-run of CDNOW: 8.3 s with JIT, 3.5 s
    without).
    """
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    cursor.execute("SET jit = off")
    cursor.close()
    dbapi_connection.commit()  # type: ignore[attr-defined]  # a SET rolled back would not hold


def read_only_url(url: str) -> sa.URL:
    """The URL a reader connects with: for a SQLite file, a `mode=ro` URI of its absolute path."""
    parsed = sa.engine.make_url(normalize_url(url))
    path = sqlite_file(url)
    if path is None:
        return parsed
    if parsed.query.get("uri") == "true":  # already a `file:` URI: only add the mode
        return parsed.update_query_dict({"mode": "ro"})
    return parsed.set(database="file:" + quote(os.path.abspath(path))).update_query_dict(
        {"mode": "ro", "uri": "true"})


def make_reader_engine(url: str = DEFAULT_URL) -> sa.Engine:
    """An engine that cannot write, whatever is executed on it (no schema check)."""
    target = read_only_url(url)
    if target.get_backend_name() == "sqlite":
        engine = sa.create_engine(target, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        sa.event.listen(engine, "connect", _on_sqlite_reader_connect)
        return engine
    engine = sa.create_engine(target, pool_pre_ping=True)
    sa.event.listen(engine, "connect", _on_pg_reader_connect)
    return engine


def open_reader(url: str = DEFAULT_URL) -> sa.Engine:
    """A read-only engine on an existing database at the schema this Retain needs.

    A SQLite file that does not exist is an error, not a new database: reading commands must not
    leave an empty `retain.db` behind. A schema at another revision is an error naming `retain
    migrate` (older) or a newer Retain (unknown)."""
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise StoreError(f"no database at {path}: run `retain sync` or `retain demo` first")
    engine = make_reader_engine(url)
    try:
        require_current_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine




# --- schema versions -------------------------------------------------------------------------


def current_revision(connection: sa.Connection) -> str | None:
    """The Alembic revision the database is at; None when it has no Retain schema at all."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def read_revision(engine: sa.Engine) -> str | None:
    """`current_revision` on a connection of its own; an unreachable database is a StoreError."""
    try:
        with engine.connect() as connection:
            found = current_revision(connection)
            connection.rollback()
            return found
    except DBAPIError as exc:
        raise StoreError(f"cannot open database {_shown(engine)}: {exc.orig}") from exc


def require_current_schema(engine: sa.Engine) -> None:
    """Refuse a database at any revision but the newest, with what to do about it."""
    found = read_revision(engine)
    known = schema_revisions()
    if found == known[-1]:
        return
    if found is None:
        raise StoreError(f"database {_shown(engine)} has no Retain schema: {MIGRATE_HINT} "
                         "(or `retain sync`, which migrates)")
    if found in known:
        raise StoreError(f"database at schema {found}, this Retain needs {known[-1]}: "
                         f"{MIGRATE_HINT}")
    raise StoreError(_unknown_schema(found))


def _unknown_schema(found: str) -> str:
    return (f"database at schema {found}, unknown to this Retain (it needs "
            f"{schema_revisions()[-1]}): the database was made by a newer Retain; upgrade Retain")


def _shown(engine: sa.Engine) -> str:
    """The database as a message names it: a SQLite file's path, else the URL sans password."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database:
        return unquote(url.database.removeprefix("file:"))
    return url.render_as_string(hide_password=True)
