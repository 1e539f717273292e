"""Reading never writes: every reading command opens the database read-only, never migrates.

A database made at migration 0001 keeps its main file byte for byte through every reading
command, each of which refuses it with a message naming `retain migrate`; after `retain migrate`
they all work. On PostgreSQL the reader's session refuses writes, and an old schema is left as it
was. Every command of `retain --help` is either a reading command checked here or a writer named
in WRITERS, so a new command has to say which it is.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import Cli
from test_dry_run import files_digest  # main file and WAL by content; -shm is no data

from cli.main import COMMANDS, load_command
from cli.report import report_app
from engine.errors import StoreError
from engine.store.open import make_engine, migrate, open_reader, read_revision, schema_revisions
from playbooks import SAMPLES_DIR

HEAD = schema_revisions()[-1]
MIGRATE_MESSAGE = f"database at schema 0001, this Retain needs {HEAD}: run `retain migrate`"
WRITERS = {"init", "schema", "sync", "demo", "migrate",  # write files or a database, or neither
           "unsubscribe", "run", "dispatch", "daemon",
           "test"}  # neither: its own stores (tests/test_playtest.py checks --db is not opened)
WRITING_SUBCOMMANDS = {"outbox": {"retry"}, "tasks": {"done"}}
"""Groups listed in READING whose other subcommands write (through open_store, which migrates)."""
REPORTS = [command.name for command in report_app.registered_commands]
READING = [
    ["dry-run", str(SAMPLES_DIR), "--as-of", "2024-03-01"],
    ["dry-run", str(SAMPLES_DIR), "--as-of", "2023-12-01", "--customer", "c1", "--json"],
    ["explain", "winback-30d", "c1", "--playbooks", str(SAMPLES_DIR), "--as-of", "2024-03-01"],
    ["customer", "show", "c1", "--json"],
    ["preview", "welcome-series", "c1", "--playbooks", str(SAMPLES_DIR), "--as-of", "2024-03-01"],
    ["validate", str(SAMPLES_DIR), "--json"],  # with --db (given before the command)
    ["outbox", "list", "--status", "dead"],
    ["outbox", "list", "--json"],
    ["tasks", "list", "--open", "--json"],
    *(["report", name] + (["--playbooks", str(SAMPLES_DIR)] if name == "playbooks" else [])
      for name in REPORTS),
]
CUSTOMER = ("INSERT INTO customers (customer_id, email, name, created_at, tags, attributes, "
            "first_purchase_at, last_purchase_at, last_active_at, purchase_count, total_spent, "
            "points_balance) VALUES (:id, :email, :name, :created, '[]', '{}', :first, :last, "
            ":last, :count, :spent, 0)")  # the facts as sync would have refreshed them
EVENT = ("INSERT INTO events (event_id, customer_id, type, occurred_at, properties) "
         "VALUES (:event_id, :customer_id, :type, :at, :properties)")


def day(month: int, day: int) -> datetime:
    return datetime(2023, month, day, tzinfo=UTC)


def build_at_0001(url: str) -> None:
    """A database as Retain's first schema made it: Alembic to 0001, rows by plain SQL."""
    engine = make_engine(url)
    migrate(engine, to="0001")
    with engine.begin() as connection:
        connection.execute(sa.text(CUSTOMER), [
            {"id": "c1", "email": "ann@example.com", "name": "Ann", "created": day(1, 5),
             "first": day(2, 10), "last": day(9, 10), "count": 2, "spent": 180.5},
            {"id": "c2", "email": "bob@example.com", "name": "Bob", "created": day(6, 1),
             "first": day(7, 10), "last": day(7, 10), "count": 1, "spent": 40.0}])
        connection.execute(sa.text(EVENT), [
            {"event_id": f"e{n}", "customer_id": customer, "type": kind,
             "at": day(month, 10), "properties": properties}
            for n, (customer, kind, month, properties) in enumerate([
                ("c1", "purchase", 2, '{"amount": 100.5}'), ("c1", "purchase", 9, '{"amount": 80}'),
                ("c2", "purchase", 7, '{"amount": 40}'), ("c2", "feedback", 8, '{"score": 3}')])])
    engine.dispose()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def old_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "old.db"
    build_at_0001(f"sqlite:///{path}")
    return path


def test_every_command_is_a_reader_checked_here_or_a_writer() -> None:
    readers = {args[0] for args in READING}
    assert readers | WRITERS == set(COMMANDS), "say whether a new command reads or writes"
    assert not readers & WRITERS
    assert {"retention", "value", "rfm", "nps", "playbooks"} <= set(REPORTS)
    for group, writing in WRITING_SUBCOMMANDS.items():
        subcommands = set(load_command(group).commands)  # type: ignore[attr-defined]
        checked = {args[1] for args in READING if args[0] == group}
        assert checked | writing == subcommands - {"show"}, group  # show ID needs a row


def test_old_schema_file_is_untouched_and_every_reader_names_migrate(old_sqlite: Path,
                                                                     cli: Cli) -> None:
    url = f"sqlite:///{old_sqlite}"
    before = sha256(old_sqlite)
    for args in READING:
        code, out, err = cli(["--db", url, *args])
        assert (code, out) == (1, ""), args
        assert MIGRATE_MESSAGE in err, (args, err)
        assert sha256(old_sqlite) == before, f"{args} changed the database file"
    assert read_revision(make_engine(url)) == "0001"

    code, out, _ = cli(["--db", url, "migrate", "--json"])
    assert code == 0
    assert json.loads(out) == {"from": "0001", "to": HEAD, "changed": True}
    for args in READING:
        code, out, err = cli(["--db", url, *args])
        assert code == 0, (args, err)
    code, out, _ = cli(["--db", url, "customer", "show", "c1", "--json"])
    assert json.loads(out)["customer"]["name"] == "Ann"  # the rows made at 0001 survived
    code, out, _ = cli(["--db", url, "migrate"])
    assert (code, out.strip()) == (0, f"schema {HEAD}: already current, nothing to do")


def test_current_schema_is_untouched_by_every_reader(tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "current.db"
    url = f"sqlite:///{path}"
    build_at_0001(url)
    assert cli(["--db", url, "migrate"])[0] == 0
    before = files_digest(path)
    for args in READING:
        code, _, err = cli(["--db", url, *args])
        assert code == 0, (args, err)
        assert files_digest(path) == before, f"{args} changed the database"


def test_the_reader_refuses_to_write_and_keeps_the_journal_mode(tmp_path: Path) -> None:
    """A file in rollback-journal mode stays so: the writer would have switched it to WAL."""
    path = tmp_path / "journal.db"
    build_at_0001(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    with closing(sqlite3.connect(path)) as plain:
        plain.execute("PRAGMA journal_mode=DELETE")
    reader = open_reader(f"sqlite:///{path}")
    with reader.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
        with pytest.raises(sa.exc.OperationalError, match="readonly"):
            connection.exec_driver_sql("DELETE FROM events")
    reader.dispose()
    with closing(sqlite3.connect(path)) as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_a_missing_file_is_refused_and_not_created(tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "absent.db"
    for args in READING:
        code, _, err = cli(["--db", f"sqlite:///{path}", *args])
        assert code == 1 and "no database at" in err, args
    assert list(tmp_path.iterdir()) == []


def test_an_empty_or_newer_database_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(StoreError, match="has no Retain schema: run `retain migrate`"):
        open_reader(f"sqlite:///{empty}")
    assert empty.stat().st_size == 0
    newer = f"sqlite:///{tmp_path / 'newer.db'}"
    build_at_0001(newer)
    with make_engine(newer).begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreError, match="schema 9999, unknown to this Retain .*upgrade Retain"):
        open_reader(newer)
    with pytest.raises(StoreError, match="schema 9999, unknown"):  # nor does the writer touch it
        migrate(make_engine(newer))


def test_postgres_reader_cannot_write_and_old_schema_is_not_migrated(pg_url: str,
                                                                     cli: Cli) -> None:
    build_at_0001(pg_url)
    for args in (READING[0], READING[3], ["report", "rfm"]):
        code, _, err = cli(["--db", pg_url, *args])
        assert code == 1 and MIGRATE_MESSAGE in err, (args, err)
    assert read_revision(make_engine(pg_url)) == "0001"
    columns = {c["name"] for c in sa.inspect(make_engine(pg_url)).get_columns("enrollments")}
    assert "left_at" not in columns  # 0002's column: nothing was migrated

    assert cli(["--db", pg_url, "migrate"])[0] == 0
    reader = open_reader(pg_url)
    with reader.connect() as connection:
        assert connection.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
        with pytest.raises(sa.exc.DBAPIError, match="read-only transaction"):
            connection.exec_driver_sql("DELETE FROM events")
    reader.dispose()
    code, out, err = cli(["--db", pg_url, "dry-run", str(SAMPLES_DIR), "--as-of", "2024-03-01",
                          "--json"])
    assert code == 0, err
    assert {p["id"] for p in json.loads(out)["playbooks"]} >= {"winback-30d"}
