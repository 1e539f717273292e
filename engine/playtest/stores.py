"""A fresh store for every test, whatever RETAIN_DATABASE_URL says.

SQLite: a database file copied from one migrated once per process, in a RAM-backed temporary
folder where the system has one (/dev/shm on Linux). Not `:memory:`: the live run path reads
its plan on one connection while it commits on others, which needs SQLite's WAL snapshots,
and an in-memory database has no WAL (its shared cache would lock the reader against the
writer instead). Copying a migrated file costs a millisecond; migrating costs a hundred.

PostgreSQL (`retain test --on URL`): a schema of its own per test (engine/store/scratch.py),
migrated by `open_store` as any store is, dropped after with everything in it. Migrating costs
about 0.2 s a test on this machine; copying a migrated template schema was measured at about a
third of that, but PostgreSQL has no one-statement copy of a schema (sequences, foreign keys
and index names would each need rebuilding), so every test migrates: slower, and plainly the
schema `retain migrate` makes.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from engine.errors import InputError, StoreError
from engine.store.open import make_engine, open_store
from engine.store.scratch import ScratchServer


def _ram_folder() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


class SqliteStores:
    """Fresh SQLite stores in one temporary folder, removed by `close`."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="retain-test-", dir=_ram_folder()))
        self.template = self.folder / "template.db"
        engine = open_store(f"sqlite:///{self.template}")
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        for suffix in ("-wal", "-shm"):
            Path(f"{self.template}{suffix}").unlink(missing_ok=True)

    @contextmanager
    def fresh(self) -> Iterator[sa.Engine]:
        """A writer engine on a new copy of the migrated template, deleted afterwards."""
        path = self.folder / f"{uuid.uuid4().hex}.db"
        shutil.copyfile(self.template, path)
        engine = make_engine(f"sqlite:///{path}")
        try:
            yield engine
        finally:
            engine.dispose()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class PostgresStores:
    """Fresh PostgreSQL stores on the server at `url`, a migrated schema each; `close` drops
    any left (a test interrupted half-way) and disconnects. A server that cannot be reached
    is an InputError naming the URL (without its password)."""

    def __init__(self, url: str) -> None:
        try:
            self.server = ScratchServer(url)
        except StoreError as exc:
            raise InputError(f"--on: {exc}") from exc

    @contextmanager
    def fresh(self) -> Iterator[sa.Engine]:
        """A writer engine on a new schema, migrated; the schema is dropped afterwards."""
        with self.server.schema() as url:
            engine = open_store(url)
            try:
                yield engine
            finally:
                engine.dispose()

    def close(self) -> None:
        self.server.close()
