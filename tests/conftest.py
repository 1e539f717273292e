"""Shared fixtures: real SQLite files and a real PostgreSQL schema per test.

PostgreSQL tests skip with a stated reason when no server answers on a developer's machine; with
`CI=true` they fail instead, so CI never silently drops a backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.store.open import open_store

PG_URL = os.environ.get("RETAIN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def _pg_reachable() -> str | None:
    try:
        engine = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as connection:
            connection.exec_driver_sql("select 1")
        engine.dispose()
    except Exception as exc:  # noqa: BLE001  (any failure means "not reachable", with its text)
        return f"PostgreSQL not reachable at {PG_URL}: {exc.__class__.__name__}"
    return None


def require_postgres() -> None:
    """Skip (locally) or fail (in CI) when the PostgreSQL server is absent."""
    reason = _pg_reachable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the PostgreSQL tests")
    pytest.skip(reason)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as connection:
        connection.exec_driver_sql(f"create schema {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"drop schema {schema} cascade")
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file URL in the test's own folder."""
    return f"sqlite:///{tmp_path / 'retain.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'retain.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def db(db_url: str) -> Iterator[sa.Engine]:
    """A migrated engine on each backend."""
    engine = open_store(db_url)
    yield engine
    engine.dispose()


Cli = Callable[[list[str]], tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run `retain ARGS` in-process: (exit code, stdout, stderr)."""
    from cli.main import main

    def run(args: list[str]) -> tuple[int, str, str]:
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """An empty templates/ folder for a test to write template files into."""
    folder = tmp_path / "templates"
    folder.mkdir()
    return folder
