"""`retain test`'s SQLite stores: a fresh copy of a migrated template per test, through one
engine, and the template kept between processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.playtest.stores import SqliteStores
from engine.sync.ingest import ingest_customers

REPO = Path(__file__).resolve().parent.parent


def _schema(path: Path) -> list[tuple[str, ...]]:
    """Every table and index with its definition's lines sorted (two migrations of the same
    code may list a table's constraints in another order), and the schema revision."""
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT type, name, sql FROM sqlite_master ORDER BY type, name").all()
        revision = connection.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    engine.dispose()
    shown = [(kind, name, *sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))
             for kind, name, sql in rows]
    return [*shown, *(tuple(row) for row in revision)]


def test_a_kept_template_is_the_migrated_schema(tmp_path: Path) -> None:
    first = SqliteStores(tmp_path)
    second = SqliteStores(tmp_path)
    uncached = SqliteStores(use_cache=False)
    try:
        assert (first.migrated, second.migrated, uncached.migrated) == (True, False, True)
        assert [p.name.startswith("template-") for p in tmp_path.iterdir()] == [True]
        assert _schema(second.template) == _schema(uncached.template) != []
    finally:
        for stores in (first, second, uncached):
            stores.close()


def test_each_store_starts_empty_though_the_engine_is_shared(tmp_path: Path) -> None:
    stores = SqliteStores(tmp_path)
    count = sa.text("SELECT count(*) FROM customers")
    try:
        with stores.fresh() as engine:
            ingest_customers(engine, [(0, {"customer_id": "ana"})], "test",
                             now=datetime(2026, 1, 5, tzinfo=UTC))
            with engine.connect() as connection:
                assert connection.execute(count).scalar() == 1
            first = engine
        with stores.fresh() as engine:
            assert engine is first
            with engine.connect() as connection:
                assert connection.execute(count).scalar() == 0
    finally:
        stores.close()
    assert not stores.folder.exists()


def test_one_store_at_a_time(tmp_path: Path) -> None:
    stores = SqliteStores(tmp_path)
    try:
        with stores.fresh(), pytest.raises(RuntimeError, match="one store at a time"), \
                stores.fresh():
            pass
        with stores.fresh():  # free again after the error
            pass
    finally:
        stores.close()


def test_a_later_test_with_the_same_rows_starts_from_the_synced_store(tmp_path: Path) -> None:
    """The sample test run twice: the second starts from a copy of the store the first one's
    sync made (before its steps ran: ana enters again), and sees the same customers."""
    from engine.playtest.run import run_case
    from engine.playtest.suite import load_suite

    loaded, folders, issues = load_suite([REPO / "playbooks" / "tests" / "winback-30d.test.yaml"])
    assert issues == []
    test_file, case = loaded[0], loaded[0].cases[0]
    stores = SqliteStores(tmp_path)
    seen = []

    def fresh() -> Iterator[sa.Engine]:
        with stores.fresh() as engine:
            yield engine
            with engine.connect() as connection:
                seen.append(connection.exec_driver_sql(
                    "SELECT customer_id, purchase_count, rfm_score FROM customers "
                    "ORDER BY customer_id").all())

    try:
        results = [run_case(test_file, case, folders[test_file.playbook_folder],
                            contextmanager(fresh)) for _ in range(2)]
        assert [r.outcome for r in results] == ["passed", "passed"], results
        assert len(stores.givens) == 1
        assert seen[0] == seen[1] and len(seen[0]) == 6
    finally:
        stores.close()
