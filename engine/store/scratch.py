"""Scratch schemas on a PostgreSQL server: one empty schema per `retain test` test, dropped
with everything in it afterwards (`retain test --on postgresql://...`).

Schema changes happen in engine.store and nowhere else (docs/ARCHITECTURE.md), so the CREATE
and DROP SCHEMA live here; engine/playtest/stores.py migrates the schema with `open_store`
like any other store.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from engine.errors import StoreError
from engine.store.open import normalize_url

SCRATCH_PREFIX = "retain_test_"
CONNECT_TIMEOUT_S = 10
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def shown_url(url: str) -> str:
    """The URL as a message names it: the password hidden."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<not a database URL>"


def schema_url(url: str, schema: str) -> str:
    """`url` with its search_path set to `schema` (kept beside any other `options` it has):
    every table the store creates or reads on it is in that schema."""
    parsed = sa.engine.make_url(normalize_url(url))
    options = " ".join(o for o in (parsed.query.get("options"), f"-csearch_path={schema}") if o)
    return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)


class ScratchServer:
    """A PostgreSQL server on which scratch schemas are made and dropped; `close` drops any
    this object made that is still there and lets go of its connection."""

    def __init__(self, url: str) -> None:
        try:
            parsed = sa.engine.make_url(normalize_url(url))
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"not a database URL: {shown_url(url)}") from exc
        if parsed.get_backend_name() != "postgresql":
            raise StoreError(f"not a PostgreSQL URL: {shown_url(url)}")
        self.url = url
        self.token = uuid.uuid4().hex[:8]
        self.made: list[str] = []
        self.engine = sa.create_engine(parsed, pool_size=1,
                                       connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except DBAPIError as exc:
            self.engine.dispose()
            reason = " ".join(str(exc.orig).split())
            raise StoreError(f"cannot connect to {shown_url(url)}: {reason}") from exc

    def _name(self) -> str:
        name = f"{SCRATCH_PREFIX}{self.token}_{len(self.made)}"
        assert _NAME.match(name), name
        return name

    @contextmanager
    def schema(self) -> Iterator[str]:
        """A new empty schema; yields the URL whose search_path is it. Dropped on the way out,
        whatever happened inside (connections to it must be closed by then)."""
        name = self._name()
        with self.engine.begin() as connection:
            connection.exec_driver_sql(f"CREATE SCHEMA {name}")
        self.made.append(name)
        try:
            yield schema_url(self.url, name)
        finally:
            self._drop(name)

    def _drop(self, name: str) -> None:
        with self.engine.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {name} CASCADE")

    def left(self) -> list[str]:
        """The schemas this object made that still exist (none, once each test ended)."""
        with self.engine.connect() as connection:
            found = connection.execute(
                sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"),
                {"p": f"{SCRATCH_PREFIX}{self.token}\\_%"}).scalars()
            return sorted(found)

    def close(self) -> None:
        try:
            for name in self.left():
                self._drop(name)
        finally:
            self.engine.dispose()
