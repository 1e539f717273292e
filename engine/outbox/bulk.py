"""Set-based inserts for a live commit: a batch of rows as ONE statement with ONE parameter.

Writing 150,000 enrollments and their actions through SQLAlchemy's executemany spent more time in
Python (a bind processor per value, a parameter dict per row) than the database spent writing.
Here the batch's varying values go to the database as one JSON array of arrays, already in the
form the column stores (see `Bulk.cell`), and the database unpacks it: `json_each` on SQLite,
`jsonb_array_elements` on PostgreSQL, in an `INSERT ... SELECT` that keeps `ON CONFLICT DO
NOTHING` and `RETURNING`. Values that are the same for every row of a call (the playbook, as-of)
are bound once, through their column types. Rows are inserted in the order given, so ids grow
in plan order as they did row by row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.clock import aware_utc
from engine.store.tables import UTCDateTime


class Bulk:
    """One table's set-based insert: which columns vary per row (in the JSON array, in this
    order), which are bound once per call, the unique key to skip conflicts on, and what to
    return of the rows inserted."""

    def __init__(self, table: sa.Table, dialect: sa.Dialect, varying: Sequence[str],
                 constant: Sequence[str], conflict: Sequence[str],
                 returning: Sequence[str] = ()) -> None:
        self.table, self.dialect = table, dialect
        self.varying, self.constant = tuple(varying), tuple(constant)
        self.pg = dialect.name == "postgresql"
        self.times = {name for name in varying if isinstance(table.c[name].type, UTCDateTime)}
        self.jsons = {name for name in varying if isinstance(table.c[name].type, sa.JSON)}
        self.statement = sa.text(self._sql(conflict, returning)).bindparams(
            sa.bindparam("rows", type_=sa.String()),
            *(sa.bindparam(f"k_{name}", type_=table.c[name].type) for name in self.constant))
        if returning:
            self.statement = self.statement.columns(*(table.c[name] for name in returning))
        self._stored: dict[datetime, str] = {}

    def _sql(self, conflict: Sequence[str], returning: Sequence[str]) -> str:
        columns = ", ".join((*self.varying, *self.constant))
        constants = [f":k_{name}" for name in self.constant]
        if self.pg:
            cells = [f"CAST(r.v ->> {i} AS {self._pg_type(name)})"
                     for i, name in enumerate(self.varying)]
            source = ("FROM jsonb_array_elements(CAST(:rows AS jsonb)) WITH ORDINALITY "
                      "AS r(v, n) ORDER BY r.n")
        else:
            cells = [f"json_extract(value, '$[{i}]')" for i in range(len(self.varying))]
            source = "FROM json_each(:rows) WHERE true ORDER BY key"  # WHERE: SQLite's upsert
        sql = (f"INSERT INTO {self.table.name} ({columns}) SELECT {', '.join(cells + constants)}"
               f" {source} ON CONFLICT ({', '.join(conflict)}) DO NOTHING")
        return sql + (f" RETURNING {', '.join(returning)}" if returning else "")

    def _pg_type(self, name: str) -> str:
        if name in self.jsons:
            return "jsonb"
        if name in self.times:
            return "timestamptz"
        return str(self.table.c[name].type.compile(self.dialect))

    def time(self, value: datetime | None) -> str | None:
        """A time as this database stores it (SQLite: the naive UTC text SQLAlchemy writes;
        PostgreSQL: ISO 8601 with its offset, cast to timestamptz), converted once per value."""
        if value is None:
            return None
        stored = self._stored.get(value)
        if stored is None:
            if self.pg:
                stored = aware_utc(value).isoformat()
            else:
                column_type = self.table.c[next(iter(self.times))].type
                process = column_type.dialect_impl(self.dialect).bind_processor(self.dialect)
                stored = process(value) if process else str(value)
            if len(self._stored) < 10_000:
                self._stored[value] = stored
        return stored

    @staticmethod
    def document(value: Any) -> str | None:
        """A JSON column's value as SQLAlchemy's JSON type would store it (`json.dumps`)."""
        return None if value is None else json.dumps(value)

    def execute(self, connection: sa.Connection, rows: Sequence[Sequence[Any]],
                constants: Mapping[str, Any]) -> sa.CursorResult[Any]:
        """Insert `rows` (values in `varying` order, times and JSON already converted)."""
        params = {f"k_{name}": constants[name] for name in self.constant}
        return connection.execute(self.statement, {"rows": json.dumps(rows), **params})

    def execute_dicts(self, connection: sa.Connection,
                      rows: Sequence[Mapping[str, Any]]) -> sa.CursorResult[Any] | None:
        """Insert rows given as column -> value dicts (times as datetimes, JSON as data); a
        `constant` column's value is taken from the first row."""
        if not rows:
            return None
        packed = [[self.time(row[name]) if name in self.times
                   else self.document(row[name]) if name in self.jsons else row[name]
                   for name in self.varying] for row in rows]
        return self.execute(connection, packed, rows[0])
