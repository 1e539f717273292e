"""One SQL expression spelled per database: JSON reading, text search and tag membership.

SQLite and PostgreSQL spell JSON and text functions differently; `PerDialect` carries both
spellings and the compiler picks one, so the condition compiler (engine/format/compile.py) stays
dialect-free. Values read from JSON never raise on either database: a value of the wrong kind
reads as NULL.
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import operators
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BooleanClauseList, UnaryExpression
from sqlalchemy.sql.visitors import InternalTraversal

from engine.store.tables import UTCDateTime

Bool = sa.ColumnElement[bool]
Column = sa.ColumnElement[Any]
NUMBER_TEXT = r"^-?[0-9]+(\.[0-9]+)?$"
ISO_TIME = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
            r"(\.[0-9]{1,6})?(Z|[+-](0[0-9]|1[0-4]):[0-5][0-9])?)?$")
ZONE_SUFFIX = r"(Z|[+-][0-9]{2}:[0-9]{2})$"
KIND_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "number": sa.Float(), "text": sa.String(), "bool": sa.Boolean(), "time": UTCDateTime(),
    "date": sa.Date()}


class PerDialect(sa.ColumnElement[Any]):
    """SQLite and PostgreSQL spell JSON and text functions differently; this picks at compile time.

    Both spellings are kept as children, so statement caching sees (and rebinds) both. Other
    dialects get the SQLite spelling (Retain runs on these two only).
    """

    inherit_cache = True
    _traverse_internals = [("sqlite", InternalTraversal.dp_clauseelement),
                           ("postgresql", InternalTraversal.dp_clauseelement)]

    def __init__(self, sqlite: Column, postgresql: Column,
                 type_: sa.types.TypeEngine[Any] | None = None) -> None:
        self.sqlite = sqlite
        self.postgresql = postgresql
        self.type = type_ if type_ is not None else sa.Boolean()

    @property
    def _from_objects(self) -> list[sa.FromClause]:
        return self.postgresql._from_objects


@compiles(PerDialect)
def _compile_per_dialect(element: PerDialect, compiler: SQLCompiler, **kw: Any) -> str:
    chosen = element.postgresql if compiler.dialect.name == "postgresql" else element.sqlite
    if isinstance(chosen, BooleanClauseList):  # SQLAlchemy takes the element for one column:
        chosen = chosen.self_group()  # `NOT (a AND b)`, `(a AND b) = 0`, not `NOT a AND b`
    return compiler.process(chosen, **kw)


def _glob(value: Column, pattern: str) -> Bool:
    return value.op("GLOB", is_comparison=True)(pattern)


def concat(*parts: Column | str) -> Column:
    """Text concatenation (`||`), whatever types SQLAlchemy infers for the function results."""
    text = sa.type_coerce(parts[0], sa.String())
    for part in parts[1:]:
        text = text.op("||", return_type=sa.String())(part)
    return text


class _SqliteJson:
    """One key of a JSON document as SQLite's json1 functions see it."""

    def __init__(self, document: Column, key: str) -> None:
        self.document, self.path = document, sa.literal(f'$."{key}"')
        self.type = sa.func.json_type(document, self.path)
        self.value = sa.func.json_extract(document, self.path)

    def number(self) -> Column:
        v = self.value
        decimal = sa.and_(sa.or_(_glob(v, "[0-9]*"), _glob(v, "-[0-9]*")),
                          ~_glob(v, "?*[^0-9.]*"), ~_glob(v, "*.*.*"), ~_glob(v, "*."))
        number = sa.or_(self.type.in_(["integer", "real"]), sa.and_(self.type == "text", decimal))
        return sa.case((number, sa.cast(v, sa.Float)))

    def text(self) -> Column:
        return sa.case((self.type == "text", self.value))

    def bool(self) -> Column:
        return sa.case((self.type.in_(["true", "false"]), self.type == "true"),
                       (sa.and_(self.type == "text", self.value.in_(["true", "false"])),
                        self.value == "true"))

    def time(self) -> Column:
        """The UTC time as SQLite stores times: `YYYY-MM-DD HH:MM:SS.ffffff`, to the microsecond."""
        v, d2 = self.value, "[0-9][0-9]"
        day = f"{d2}{d2}-{d2}-{d2}"
        zone = sa.func.ltrim(sa.func.substr(v, 20), ".0123456789")
        # Only after a "."; SQLite's substr with a negative length reads backwards ("...00Z").
        fraction = sa.case((sa.func.substr(v, 20, 1) == ".", sa.func.substr(
            v, 21, sa.func.length(v) - 20 - sa.func.length(zone))), else_="")
        real_day = sa.and_(sa.func.substr(v, 1, 4) != "0000", sa.func.date(
            sa.func.substr(v, 1, 10), "+0 days") == sa.func.substr(v, 1, 10))
        clock = sa.and_(_glob(v, f"{day}[T ]{d2}:{d2}:{d2}*"), sa.func.substr(v, 12, 2) <= "23",
                        sa.func.substr(v, 15, 2) <= "59", sa.func.substr(v, 18, 2) <= "59")
        tail = sa.or_(sa.func.length(v) == 19 + sa.func.length(zone), sa.and_(
            sa.func.substr(v, 20, 1) == ".", sa.func.length(fraction).between(1, 6),
            ~_glob(fraction, "*[^0-9]*")))
        offset = sa.or_(zone.in_(["", "Z"]), sa.and_(
            _glob(zone, f"[+-]{d2}:{d2}"), sa.func.substr(zone, 2, 2) <= "14",
            sa.func.substr(zone, 5, 2) <= "59"))
        utc = concat(sa.func.strftime("%Y-%m-%d %H:%M:%S", concat(sa.func.substr(v, 1, 19), zone)),
                   ".", sa.func.substr(concat(fraction, "000000"), 1, 6))
        text = sa.and_(self.type == "text", real_day)
        return sa.case((sa.and_(text, _glob(v, day)), concat(v, " 00:00:00.000000")),
                       (sa.and_(text, clock, tail, offset), utc))

    def missing(self) -> Bool:
        return sa.func.coalesce(self.type, "null") == "null"

    def has_text(self, needle: str) -> Bool:
        each = sa.func.json_each(self.document, self.path).table_valued("value", "type")
        return sa.and_(sa.func.coalesce(self.type, "") == "array", sa.exists().where(
            each.c.type == "text", each.c.value == needle))


class _PgJson:
    """One key of a JSONB document as PostgreSQL sees it; casts only what is known to parse."""

    def __init__(self, document: Column, key: str) -> None:
        self.item = sa.type_coerce(document, JSONB())[key]
        self.type = sa.func.jsonb_typeof(self.item)
        self.value = sa.type_coerce(document, JSONB())[key].astext

    def number(self) -> Column:
        decimal = sa.and_(self.type == "string", self.value.regexp_match(NUMBER_TEXT))
        return sa.case((sa.or_(self.type == "number", decimal), sa.cast(self.value, sa.Float)))

    def text(self) -> Column:
        return sa.collate(sa.case((self.type == "string", self.value)), "C")

    def bool(self) -> Column:
        readable = sa.or_(self.type == "boolean", sa.and_(
            self.type == "string", self.value.in_(["true", "false"])))
        return sa.case((readable, self.value == "true"))

    def time(self) -> Column:
        v = self.value
        real_day = sa.func.jsonb_path_exists(
            sa.func.to_jsonb(sa.func.substr(v, 1, 10)), sa.literal_column("'$.datetime()'::jsonpath"),
            sa.literal_column("'{}'::jsonb"), sa.true())
        ok = sa.and_(self.type == "string", v.regexp_match(ISO_TIME),
                     sa.func.substr(v, 1, 4) != "0000", real_day)
        full = sa.case((sa.func.length(v) == 10, concat(v, "T00:00:00")), else_=v)
        zoned = sa.case((v.regexp_match(ZONE_SUFFIX), v), else_=concat(full, "+00:00"))
        return sa.case((ok, sa.cast(zoned, sa.DateTime(timezone=True))))

    def missing(self) -> Bool:
        return sa.func.coalesce(self.type, "null") == "null"

    def has_text(self, needle: str) -> Bool:
        return sa.and_(sa.func.coalesce(self.type, "") == "array", self.item.contains([needle]))


def json_reading(document: Column, key: str, kind: str, *args: Any) -> Column:
    """A key of a JSON column read as `kind` (number, text, bool, time), NULL when it is not one;
    or tested (`missing`, `has_text`)."""
    if '"' in key or "\\" in key:
        raise ValueError(f"a field name cannot contain quotes or backslashes: {key!r}")
    lite, pg = _SqliteJson(document, key), _PgJson(document, key)
    return PerDialect(getattr(lite, kind)(*args), getattr(pg, kind)(*args), KIND_TYPES.get(kind))


def substring(column: Column, needle: str) -> Bool:
    """Literal, case-sensitive substring test, alike on both databases."""
    return PerDialect(sa.func.instr(column, needle) > 0, column.contains(needle, autoescape=True))


def tag_member(tags: Column, tag: str) -> Bool:
    """`tag` is one of the JSON list `tags`."""
    each = sa.func.json_each(tags).table_valued("value")
    return PerDialect(sa.exists().where(each.c.value == tag),
                      sa.type_coerce(tags, JSONB()).contains([tag]))


def no_tags(tags: Column) -> Bool:
    """`tags` is NULL, JSON null or an empty list."""
    as_list = sa.case((sa.func.jsonb_typeof(tags) == "array", tags))
    return PerDialect(sa.func.coalesce(sa.func.json_array_length(tags), 0) == 0,
                      sa.func.coalesce(sa.func.jsonb_array_length(as_list), 0) == 0)


def iso_text(moment: Column) -> Column:
    """A UTC time column as text `YYYY-MM-DDTHH:MM:SSZ` (the spelling of occurrence keys)."""
    return PerDialect(sa.func.strftime("%Y-%m-%dT%H:%M:%SZ", moment),
                      sa.func.to_char(sa.func.timezone("UTC", moment),
                                      'YYYY-MM-DD"T"HH24:MI:SS"Z"'), sa.String())


def month_day(value: Column, is_date: bool) -> Column:
    """`MM-DD` of a date, or of a time's UTC date (SQLite stores both as ISO text)."""
    pg_value = value if is_date else sa.func.timezone("UTC", value)
    return PerDialect(sa.func.substr(value, 6, 5), sa.func.to_char(pg_value, "MM-DD"), sa.String())


def scanned(column: Column) -> Column:
    """The column, written so SQLite will not pick its index (`+col`; PostgreSQL unchanged).

    Without statistics SQLite takes any index that matches a range, and reading a third of a
    large table through an index is three times slower than scanning it.
    """
    plus = UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type)
    return PerDialect(plus, column, column.type)


def insert_ignoring(table: sa.Table, dialect: sa.Dialect, keys: list[str] | None) -> Any:
    """`INSERT ... ON CONFLICT (keys) DO NOTHING` for this database: the write of a row whose
    unique key may already be there (a second run, another replica), which is then skipped.
    `keys=None`: a conflict on ANY unique index is skipped (enrollments have two: the
    occurrence key and the partial index of open segment memberships)."""
    if dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=keys)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing(index_elements=keys)


SHA256 = "retain_sha256"
"""The SQLite function `sha256_hex` calls there (open.py registers it on every connection)."""


def sqlite_sha256(*parts: object) -> str:
    """SHA-256 in hex of the parts as UTF-8 text joined by NUL: what `sha256_hex` computes."""
    try:
        text = "\0".join(parts)  # type: ignore[arg-type]
    except TypeError:  # a number where text was meant: as Python would print it
        text = "\0".join(map(str, parts))
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_hex(*parts: Column | str) -> Column:
    """The hex SHA-256 of text parts joined by NUL bytes, as Python's
    `hashlib.sha256("\\0".join(parts).encode()).hexdigest()`: holdout groups and idempotency
    keys computed for many rows at once (engine/plan/set_plan.py). A `str` part is a constant.
    PostgreSQL hashes in SQL (text cannot hold NUL, bytea can); SQLite calls `sqlite_sha256`,
    registered by open.py, with neighbouring constants joined into one argument (each argument
    costs the call a conversion, and the call is most of a key's cost)."""
    separator = sa.func.decode("00", "hex")
    joined: Column | None = None
    merged: list[Column | str] = []
    for part in parts:
        text = sa.literal(part, sa.Text()) if isinstance(part, str) else sa.cast(part, sa.Text())
        data = sa.func.convert_to(text, "UTF8")
        joined = data if joined is None else joined.op("||")(separator).op("||")(data)
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] = f"{merged[-1]}\0{part}"
        else:
            merged.append(part)
    arguments = [sa.literal(p, sa.Text()) if isinstance(p, str) else p for p in merged]
    postgresql = sa.func.encode(sa.func.sha256(joined), "hex")
    return PerDialect(getattr(sa.func, SHA256)(*arguments), postgresql, sa.String())
