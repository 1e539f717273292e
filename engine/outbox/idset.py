"""A batch's ids as one parameter: `column = ANY(:ids)` on PostgreSQL, `IN (...)` on SQLite.

The dispatcher reads and writes rows 256 at a time by id (or address, or customer). Spelled as
`IN (...)`, SQLAlchemy expands one parameter per value at every execution, with a type cast
each on PostgreSQL, and the statement text is new for each batch size (psycopg parses it again:
it caches only short statements): about 30 µs per message of the dispatcher's own work went to
that (docs/BENCHMARKS.md "Dispatch"). PostgreSQL takes the list as one array parameter and the
statement text never changes. SQLite keeps `IN`: its driver binds values in C, and it has no
array type.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


def among(dialect: sa.Dialect, column: sa.ColumnElement[Any], values: Collection[Any]
          ) -> sa.ColumnElement[bool]:
    """`column` is one of `values`, spelled for this dialect."""
    if dialect.name == "postgresql":
        array = sa.bindparam(None, list(values), type_=postgresql.ARRAY(column.type))
        return column == sa.any_(array)
    return column.in_(list(values))
