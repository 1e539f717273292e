"""A fresh store for every test, whatever RETAIN_DATABASE_URL says.

SQLite: a database file copied from one migrated once per process, in a RAM-backed temporary
folder where the system has one (/dev/shm on Linux). Not `:memory:`: the live run path reads
its plan on one connection while it commits on others, which needs SQLite's WAL snapshots,
and an in-memory database has no WAL (its shared cache would lock the reader against the
writer instead). Copying a migrated file costs a millisecond; migrating costs a hundred.
Every test's copy is at the same path and opened by the same engine: SQLAlchemy keeps the
statements it compiled per engine, and a new engine per test compiled every statement of sync,
run and explain again (a quarter of a test's time). The engine's connections are closed
before the file is replaced, so nothing of one test's store reaches the next.

PostgreSQL (`retain test --on URL`): a schema of its own per test, migrated, dropped after.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from engine.store.open import make_engine, open_store


def _ram_folder() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


class SqliteStores:
    """Fresh SQLite stores, one at a time, in one temporary folder removed by `close`."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="retain-test-", dir=_ram_folder()))
        self.template = self.folder / "template.db"
        engine = open_store(f"sqlite:///{self.template}")
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        for suffix in ("-wal", "-shm"):
            Path(f"{self.template}{suffix}").unlink(missing_ok=True)
        self.path = self.folder / "test.db"
        self.engine = make_engine(f"sqlite:///{self.path}")
        self.busy = False

    @contextmanager
    def fresh(self) -> Iterator[sa.Engine]:
        """The writer engine on a new copy of the migrated template, deleted afterwards."""
        if self.busy:
            raise RuntimeError("SqliteStores gives one store at a time")
        self.busy = True
        shutil.copyfile(self.template, self.path)
        try:
            yield self.engine
        finally:
            self.engine.dispose()  # every connection to this copy closed: the next is new
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self.busy = False

    def close(self) -> None:
        self.engine.dispose()
        shutil.rmtree(self.folder, ignore_errors=True)
