"""Database access: engine factory for SQLite and PostgreSQL, and schema upgrades via Alembic.

SQLite gets WAL, a busy timeout and foreign keys on every connection so that the CLI, the daemon
and a second process can share one file. PostgreSQL URLs are routed to psycopg 3.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.exc import OperationalError

from engine.config import DEFAULT_URL
from engine.errors import StoreError

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 10_000


def normalize_url(url: str) -> str:
    """Route plain PostgreSQL URLs to the psycopg 3 driver that Retain depends on."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _on_sqlite_connect(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str = DEFAULT_URL) -> sa.Engine:
    """Create an engine with the per-dialect settings Retain relies on (no schema changes)."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def alembic_config(connection: sa.Connection) -> Config:
    """An Alembic config that runs the packaged migrations on `connection`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest revision; a no-op on an up-to-date database."""
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")
    except OperationalError as exc:
        raise StoreError(f"cannot open database {engine.url!r}: {exc.orig}") from exc


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
    """The engine for `url`, with the schema created or upgraded first."""
    engine = make_engine(url)
    migrate(engine)
    ensure_indexes(engine)
    return engine


def open_existing_store(url: str = DEFAULT_URL) -> sa.Engine:
    """Like `open_store`, but a SQLite file that does not exist is an error, not a new database:
    reading commands (dry-run, explain, show) must not leave an empty `retain.db` behind."""
    database = sa.engine.make_url(normalize_url(url)).database
    if url.startswith("sqlite") and database not in (None, "", ":memory:") and not Path(
            database).is_file():
        raise StoreError(f"no database at {database}: run `retain sync` or `retain demo` first")
    return open_store(url)
