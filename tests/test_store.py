"""The store: migrations create every table on both backends, and the guarantees' constraints hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from engine.store.open import (
    make_engine,
    migrate,
    open_reader,
    open_store,
    read_only_url,
    schema_revisions,
)
from engine.store.tables import Customer, Enrollment, Event, payloads

TABLES = {
    "customers", "events", "playbook_versions", "enrollments", "actions", "tasks",
    "points_ledger", "suppressions", "sync_cursors",
}


def test_migrations_create_all_tables_and_are_idempotent(db: sa.Engine) -> None:
    assert set(sa.inspect(db).get_table_names()) >= TABLES
    migrate(db)  # a second upgrade is a no-op, not an error
    with db.connect() as connection:
        revision = connection.exec_driver_sql("select version_num from alembic_version").scalar()
    assert revision == schema_revisions()[-1]


def test_the_readers_revisions_are_alembics_history() -> None:
    """The reader knows the revisions from file names, without Alembic: they must agree."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from engine.store.open import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    history = [s.revision for s in ScriptDirectory.from_config(config).walk_revisions()]
    assert schema_revisions() == history[::-1]
    assert schema_revisions()[0] == "0001"


def test_the_reader_opens_a_file_whose_path_needs_quoting(tmp_path: Path) -> None:
    """A `file:` URI gives `?`, `#` and `%` meanings: the reader's URI quotes the path."""
    folder = tmp_path / "odd ?name #1 %41"
    folder.mkdir()
    url = f"sqlite:///{quote(str(folder / 'retain.db'))}"  # SQLAlchemy unquotes the path
    open_store(url).dispose()
    assert read_only_url(url).query == {"mode": "ro", "uri": "true"}
    reader = open_reader(url)
    with reader.connect() as connection:
        assert connection.exec_driver_sql("select count(*) from customers").scalar() == 0
    reader.dispose()
    assert sorted(p.name for p in folder.iterdir())[0] == "retain.db"
    assert list(tmp_path.iterdir()) == [folder]  # no file at an unquoted, truncated path


def test_the_writer_upgrades_an_old_schema(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine, to="0001")
    assert "left_at" not in {c["name"] for c in sa.inspect(engine).get_columns("enrollments")}
    engine.dispose()
    engine = open_store(db_url)
    assert "left_at" in {c["name"] for c in sa.inspect(engine).get_columns("enrollments")}
    engine.dispose()


def test_models_match_the_migrated_schema(db: sa.Engine) -> None:
    """A model change without a migration would make autogenerate see a difference."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    with db.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert diff == []


def test_times_round_trip_as_aware_utc(db: sa.Engine) -> None:
    plus_two = timezone(timedelta(hours=2))
    with db.begin() as connection:
        connection.execute(sa.insert(Customer), [{"customer_id": "c1", "created_at":
                           datetime(2024, 5, 1, 12, 0, tzinfo=plus_two), "tags": [], "attributes": {}}])
        got = connection.execute(sa.select(Customer.created_at)).scalar_one()  # type: ignore[call-overload]
    assert got == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert got.tzinfo is not None


def test_event_ids_are_unique(db: sa.Engine) -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    row = {"event_id": "e1", "customer_id": "c1", "type": "purchase", "occurred_at": now,
           "properties": {}}
    with db.begin() as connection:
        connection.execute(sa.insert(Customer), [{"customer_id": "c1", "tags": [], "attributes": {}}])
        connection.execute(sa.insert(Event), [row])
    with pytest.raises(IntegrityError), db.begin() as connection:
        connection.execute(sa.insert(Event), [row])


def test_one_enrollment_per_playbook_customer_and_occurrence(db: sa.Engine) -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    row = {"playbook_id": "p", "version": "v1", "customer_id": "c1", "occurrence_key": "k",
           "entered_at": now}
    with db.begin() as connection:
        connection.execute(sa.insert(Customer), [{"customer_id": "c1", "tags": [], "attributes": {}}])
        connection.execute(sa.insert(Enrollment), [row])
    with pytest.raises(IntegrityError), db.begin() as connection:
        connection.execute(sa.insert(Enrollment), [{**row, "version": "v2"}])


def test_sqlite_uses_wal_and_a_busy_timeout(sqlite_url: str) -> None:
    engine = open_store(sqlite_url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("pragma journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("pragma busy_timeout").scalar() >= 5000


def test_open_store_recreates_missing_event_indexes(sqlite_url: str) -> None:
    """A first bulk load defers the event indexes; a crash before rebuilding must not lose them."""
    engine = open_store(sqlite_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP INDEX ix_events_customer_type_time")
    engine.dispose()
    engine = open_store(sqlite_url)
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("events")}
    assert {"ix_events_customer_type_time", "ix_events_type_time"} <= names


def test_0003_moves_each_payload_into_action_payloads(db_url: str) -> None:
    """An outbox row written before 0003 keeps its payload, now in `action_payloads`, and
    `actions` has no payload column left to rewrite on every status update."""
    engine = make_engine(db_url)
    migrate(engine, to="0002")
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO actions (id, customer_id, step, connector, payload, idempotency_key,"
            " status, attempts, created_at) VALUES (7, 'c1', 0, 'task', :payload, 'k7',"
            " 'planned', 0, :at)"),
            {"payload": '{"title": "Call Ann", "n": 1}', "at": datetime(2024, 5, 1, tzinfo=UTC)})
    engine.dispose()
    engine = open_store(db_url)
    assert "payload" not in {c["name"] for c in sa.inspect(engine).get_columns("actions")}
    with engine.connect() as connection:
        moved = connection.execute(sa.select(payloads.c.action_id, payloads.c.payload)).all()
    engine.dispose()
    assert [tuple(row) for row in moved] == [(7, {"title": "Call Ann", "n": 1})]
