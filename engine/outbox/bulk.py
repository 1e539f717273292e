"""Set-based inserts for a live commit and the dispatcher's outcomes: a batch of rows in one
statement, values pre-converted.

Writing 150,000 enrollments and their actions through SQLAlchemy's executemany spent more time in
Python (a bind processor per value, a parameter dict per row, a compiled parameter set per row)
than the database spent writing. Here the caller hands rows as lists of values already in the
form the column stores (`Bulk.time`, `Bulk.document`), and one statement writes them, keeping
`ON CONFLICT DO NOTHING` and `RETURNING`:

- PostgreSQL: the rows as ONE JSON array of arrays, unpacked by `jsonb_array_elements` in an
  `INSERT ... SELECT` (measured: a multi-row VALUES of thousands of parameters, psycopg's
  executemany and `unnest` of arrays were all slower);
- SQLite: a multi-row `VALUES` of plain parameters (measured faster than `json_each` +
  `json_extract`, whose JSON parsing per cell cost more than binding).

Values that are the same for every row of a call (the playbook, as-of) are bound once. Rows are
inserted in the order given, so ids grow in plan order as they did row by row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.clock import aware_utc
from engine.store.tables import UTCDateTime

ANY_KEY = ("*",)
"""`conflict=ANY_KEY`: skip a row that conflicts on any unique index (`ON CONFLICT DO NOTHING`
with no target), for a table with more than one (enrollments)."""
SQLITE_ROWS = 500  # rows per SQLite statement: 500 x the columns stays under its 32,766 params


class Bulk:
    """One table's set-based insert: which columns vary per row (in this order), which are the
    same for every row of a call, the unique key to skip conflicts on, and what to return of
    the rows inserted."""

    def __init__(self, table: sa.Table, dialect: sa.Dialect, varying: Sequence[str],
                 constant: Sequence[str], conflict: Sequence[str],
                 returning: Sequence[str] = ()) -> None:
        self.table, self.dialect = table, dialect
        self.varying, self.constant = tuple(varying), tuple(constant)
        self.conflict, self.returning = tuple(conflict), tuple(returning)
        self.pg = dialect.name == "postgresql"
        self.times = {name for name in varying if isinstance(table.c[name].type, UTCDateTime)}
        self.jsons = {name for name in varying if isinstance(table.c[name].type, sa.JSON)}
        self._stored: dict[datetime, str] = {}
        self._sqlite: dict[int, str] = {}
        self._time_processor = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
        sample = datetime(2001, 2, 3, 4, 5, 6, 7)  # noqa: DTZ001  (naive: SQLite's stored form)
        self._isoformat = (not self.pg and self._time_processor is not None
                           and self._time_processor(sample) == _sqlite_text(sample))
        if self.pg:
            self.statement = sa.text(self._pg_sql()).bindparams(
                sa.bindparam("rows", type_=sa.String()),
                *(sa.bindparam(f"k_{name}", type_=table.c[name].type) for name in constant))

    def _tail(self) -> str:
        done = f" ON CONFLICT ({', '.join(self.conflict)}) DO NOTHING" if self.conflict else ""
        if self.conflict == ANY_KEY:
            done = " ON CONFLICT DO NOTHING"
        return done + (f" RETURNING {', '.join(self.returning)}" if self.returning else "")

    def _pg_sql(self) -> str:
        cells = [f"CAST(r.v ->> {i} AS {self._pg_type(name)})"
                 for i, name in enumerate(self.varying)]
        constants = [f":k_{name}" for name in self.constant]
        return (f"INSERT INTO {self.table.name} ({', '.join((*self.varying, *self.constant))}) "
                f"SELECT {', '.join(cells + constants)} FROM jsonb_array_elements("
                f"CAST(:rows AS jsonb)) WITH ORDINALITY AS r(v, n) ORDER BY r.n" + self._tail())

    def _pg_type(self, name: str) -> str:
        if name in self.jsons:
            return "jsonb"
        if name in self.times:
            return "timestamptz"
        return str(self.table.c[name].type.compile(self.dialect))

    def _sqlite_sql(self, count: int) -> str:
        """`INSERT ... VALUES (...), ...` for `count` rows: ?1..?k the constants, then the rows'
        values in order (numbered parameters, so each constant is bound once)."""
        sql = self._sqlite.get(count)
        if sql is None:
            k, width = len(self.constant), len(self.varying)
            constants = [f"?{i + 1}" for i in range(k)]
            rows = ", ".join(
                "(" + ", ".join([f"?{k + row * width + i + 1}" for i in range(width)]
                                + constants) + ")" for row in range(count))
            columns = ", ".join((*self.varying, *self.constant))
            sql = f"INSERT INTO {self.table.name} ({columns}) VALUES {rows}" + self._tail()
            self._sqlite[count] = sql
        return sql

    def time(self, value: datetime | None) -> str | None:
        """A time as this database stores it (SQLite: the naive UTC text SQLAlchemy writes;
        PostgreSQL: ISO 8601 with its offset, cast to timestamptz), converted once per value."""
        if value is None:
            return None
        stored = self._stored.get(value)
        if stored is None:
            if self.pg:
                stored = aware_utc(value).isoformat()
            elif self._isoformat:  # the same text, without a dict and a % format per value
                stored = _sqlite_text(aware_utc(value).replace(tzinfo=None))
            else:
                naive = aware_utc(value).replace(tzinfo=None)
                process = self._time_processor
                stored = process(naive) if process else str(naive)
            if len(self._stored) < 10_000:
                self._stored[value] = stored
        return stored

    @staticmethod
    def document(value: Any) -> str | None:
        """A JSON column's value as SQLAlchemy's JSON type stores it (`json.dumps`)."""
        return None if value is None else json.dumps(value)

    def execute(self, connection: sa.Connection, rows: Sequence[Sequence[Any]],
                constants: Mapping[str, Any]) -> list[sa.Row[Any]]:
        """Insert `rows` (values in `varying` order, times and JSON already converted); the
        `returning` columns of the rows inserted (a conflicting row is skipped)."""
        if not rows:
            return []
        if self.pg:
            params = {f"k_{name}": constants[name] for name in self.constant}
            result = connection.execute(self.statement, {"rows": json.dumps(rows), **params})
            return list(result.fetchall()) if self.returning else []
        fixed = [self.time(value) if isinstance(value, datetime) else value
                 for value in (constants[name] for name in self.constant)]
        found: list[sa.Row[Any]] = []
        for start in range(0, len(rows), SQLITE_ROWS):
            part = rows[start:start + SQLITE_ROWS]
            values = [*fixed, *(value for row in part for value in row)]
            result = connection.exec_driver_sql(self._sqlite_sql(len(part)), tuple(values))
            if self.returning:
                found.extend(result.fetchall())  # at once: iterating fetches row by row
        return found

    def execute_dicts(self, connection: sa.Connection,
                      rows: Sequence[Mapping[str, Any]]) -> list[sa.Row[Any]]:
        """Insert rows given as column -> value dicts (times as datetimes, JSON as data); a
        `constant` column's value is taken from the first row."""
        packed = [[self.time(row[name]) if name in self.times
                   else self.document(row[name]) if name in self.jsons else row[name]
                   for name in self.varying] for row in rows]
        return self.execute(connection, packed, rows[0]) if rows else []


def _sqlite_text(naive: datetime) -> str:
    """SQLAlchemy's default SQLite DATETIME text (`2001-02-03 04:05:06.000007`), in C."""
    return naive.isoformat(sep=" ", timespec="microseconds")
