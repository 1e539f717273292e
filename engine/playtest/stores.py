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

The migrated template is kept between processes (a pre-commit hook starts a new one each
time): in a folder of the user's own in that temporary place, under a name that changes with
the code that makes it (every file of the engine package: its size and modification time) and
the versions of SQLAlchemy, SQLModel, Alembic and SQLite. A process that finds it copies it and
neither imports Alembic nor migrates (~0.1 s of CPU less); one that does not, migrates and
leaves its template there for the next.

Tests of one file often sync the same customers and events (the file's) before their steps:
the store that sync made is kept (`keep`, up to KEPT_GIVENS of them) and a later test with the
very same rows at the same clock starts from a copy of it (`start_from`) instead of syncing
them again: the same sync's result, byte for byte, for ~15 ms less per test.

PostgreSQL (`retain test --on URL`): a schema of its own per test (engine/store/scratch.py),
migrated by `open_store` as any store is, dropped after with everything in it. Migrating costs
about 0.2 s a test on this machine; copying a migrated template schema was measured at about a
third of that, but PostgreSQL has no one-statement copy of a schema (sequences, foreign keys
and index names would each need rebuilding), so every test migrates: slower, and plainly the
schema `retain migrate` makes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
import tempfile
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.errors import InputError, StoreError
from engine.store.open import make_engine, open_store
from engine.store.scratch import ScratchServer

ENGINE_PACKAGE = Path(__file__).resolve().parent.parent
KEEP_OTHERS = 86_400  # seconds an unused template of other code stays in the cache folder
KEPT_GIVENS = 32  # stores kept after a test's first sync, for later tests with the same rows


def _ram_folder() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


def default_cache() -> Path | None:
    """The folder that keeps migrated templates between processes: this user's own, in the
    temporary place; None where it cannot be made or is not private to the user (or the system
    has no user ids to tell)."""
    if not hasattr(os, "getuid"):
        return None
    folder = Path(_ram_folder() or tempfile.gettempdir()) / f"retain-test-cache-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        found = folder.lstat()
    except OSError:
        return None
    private = stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid() \
        and not found.st_mode & 0o077
    return folder if private else None


def template_key() -> str:
    """A name for the migrated template of this code: the engine package's files (the
    migrations import the tables, which import more of it), by size and modification time,
    and the versions of the libraries and of SQLite that make the schema."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    for path in sorted(ENGINE_PACKAGE.rglob("*.py")):
        found = path.stat()
        digest.update(f"{path.relative_to(ENGINE_PACKAGE)}:{found.st_size}:"
                      f"{found.st_mtime_ns}\n".encode())
    for name in ("sqlalchemy", "sqlmodel", "alembic"):
        digest.update(f"{name}={version(name)}\n".encode())
    digest.update(f"sqlite={sqlite3.sqlite_version}\n".encode())
    return digest.hexdigest()[:24]


class SqliteStores:
    """Fresh SQLite stores, one at a time, in one temporary folder removed by `close`.

    `cache`: the folder that keeps the migrated template between processes (None: this user's
    `default_cache()`); `use_cache=False` migrates a template of its own, keeping none."""

    def __init__(self, cache: Path | None = None, *, use_cache: bool = True) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="retain-test-", dir=_ram_folder()))
        self.template = self.folder / "template.db"
        if use_cache and cache is None:
            cache = default_cache()
        kept = cache / f"template-{template_key()}.db" if use_cache and cache else None
        self.migrated = True
        if kept is not None and kept.is_file():
            shutil.copyfile(kept, self.template)
            self.migrated = False
            with suppress(OSError):
                os.utime(kept)  # in use: not removed as another code's old template
        else:
            self._migrate()
            if kept is not None:
                _keep(self.template, kept)
        self.path = self.folder / "test.db"
        self.engine = make_engine(f"sqlite:///{self.path}")
        self.busy = False
        self.givens: dict[str, tuple[Path, Any]] = {}
        _OWNERS[self.engine] = self

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

    def start_from(self, key: str) -> Any | None:
        """Make the store in use a copy of the one kept for `key` and return what was kept with
        it; None (the store untouched) when none was. Before the store is first written."""
        found = self.givens.get(key)
        if found is None:
            return None
        self.engine.dispose()
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(found[0], self.path)
        return found[1]

    def keep(self, key: str, extra: Any) -> bool:
        """Keep a copy of the store in use as it is now, and `extra` with it, for `start_from`
        (not when KEPT_GIVENS are kept, or the WAL could not be emptied into the file)."""
        if key in self.givens or len(self.givens) >= KEPT_GIVENS:
            return False
        with self.engine.connect() as connection:
            busy = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()
        if busy is None or busy[0]:  # a reader held back the checkpoint: the file is not whole
            return False
        kept = self.folder / f"given-{len(self.givens)}.db"
        shutil.copyfile(self.path, kept)
        self.givens[key] = (kept, extra)
        return True

    def _migrate(self) -> None:
        engine = open_store(f"sqlite:///{self.template}")
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        for suffix in ("-wal", "-shm"):
            Path(f"{self.template}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        self.engine.dispose()
        shutil.rmtree(self.folder, ignore_errors=True)


_OWNERS: weakref.WeakKeyDictionary[sa.Engine, SqliteStores] = weakref.WeakKeyDictionary()


def stores_of(engine: sa.Engine) -> SqliteStores | None:
    """The SqliteStores whose store `engine` opens, if it is one (it keeps synced stores)."""
    return _OWNERS.get(engine)


def _keep(template: Path, kept: Path) -> None:
    """Leave a copy of the migrated template for the next process (whole or not at all: a
    copy under a name of its own, renamed), and remove other code's not used for a day."""
    partial = kept.with_name(f"{kept.name}.{os.getpid()}.partial")
    try:
        shutil.copyfile(template, partial)
        os.replace(partial, kept)
        for other in kept.parent.glob("template-*.db*"):
            if other != kept and time.time() - other.stat().st_mtime > KEEP_OTHERS:
                other.unlink(missing_ok=True)
    except OSError:  # a full or read-only temporary folder: the next process migrates
        partial.unlink(missing_ok=True)


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
