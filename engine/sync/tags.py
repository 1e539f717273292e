"""A customer file's tags, merged with the tags playbooks set, in the statement that stores them.

Two writers share `customers.tags`, what conditions read: sync, which stores the file's tags in
`file_tags`, and the `tag` action (engine/outbox/tags.py), which keeps its own in `tags_added`
and `tags_removed`. Either keeps `tags` = (file_tags | tags_added) - tags_removed, in that
order: the file's tags as the file lists them, then the playbooks'.

Sync computes `tags` in the UPDATE itself from the row's stored `tags_added` and `tags_removed`
rather than from values it read earlier: a `tag` action applied between sync's read and its
write is then never lost (PostgreSQL re-evaluates the expression on the newest row version; on
SQLite writes are serial). A customer no playbook ever tagged, nearly everyone, takes the file's
tags as they are, without a subquery.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by

from engine.store.dialect import PerDialect
from engine.store.tables import JSONType, customers

NONE = FILE = sa.literal_column("0", sa.Integer())  # in the SQL text: no parameter to bind per row
PLAYBOOKS = sa.literal_column("1", sa.Integer())


def json_bind(name: str) -> sa.ColumnElement[Any]:
    """A JSON value bound as text the caller serialized (engine/sync/rows.py `json_text`).

    The file's tags appear four times in the statement; bound through SQLAlchemy's JSON type
    they were serialized four times per row, a fifth of a re-sync's time.
    """
    text = sa.bindparam(name, type_=sa.String())
    return PerDialect(text, sa.cast(text, JSONB()), JSONType)


def synced_tags(file_tags: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """`tags` of a customer whose file now says `file_tags` (a JSON list bound per row)."""
    c = customers.c
    untagged = PerDialect(
        sa.and_(sa.func.json_array_length(c.tags_added) == NONE,
                sa.func.json_array_length(c.tags_removed) == NONE),
        sa.and_(sa.func.jsonb_array_length(c.tags_added) == NONE,
                sa.func.jsonb_array_length(c.tags_removed) == NONE))
    merged = PerDialect(_sqlite_merged(file_tags), _pg_merged(file_tags), JSONType)
    return sa.case((untagged, file_tags), else_=merged)


def _sqlite_merged(file_tags: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """(file | added) - removed with SQLite's json1: file order, then the added ones' order.

    SQLite aggregates rows in the order of the ordered subquery (SQL promises no order there):
    only the order shown depends on it, never what a condition sees."""
    c = customers.c
    given = sa.func.json_each(file_tags).table_valued("value", "key").alias("given")
    again = sa.func.json_each(file_tags).table_valued("value").alias("again")
    added = sa.func.json_each(c.tags_added).table_valued("value", "key").alias("added")
    removed = sa.func.json_each(c.tags_removed).table_valued("value").alias("removed")
    both = sa.union_all(
        sa.select(given.c.value, FILE.label("source"), given.c.key.label("position")),
        sa.select(added.c.value, PLAYBOOKS, added.c.key)
        .where(added.c.value.not_in(sa.select(again.c.value))),
    ).order_by("source", "position").subquery("merged")
    return (sa.select(sa.func.json_group_array(both.c.value))
            .where(both.c.value.not_in(sa.select(removed.c.value)))
            .scalar_subquery())


def _pg_merged(file_tags: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """(file | added) - removed with PostgreSQL's jsonb: file order, then the added ones'."""
    c = customers.c
    file_jsonb = sa.type_coerce(file_tags, JSONB())
    given = sa.func.jsonb_array_elements_text(file_jsonb).table_valued(
        "value", with_ordinality="position").render_derived("given")
    added = sa.func.jsonb_array_elements_text(c.tags_added).table_valued(
        "value", with_ordinality="position").render_derived("added")
    both = sa.union_all(
        sa.select(given.c.value, FILE.label("source"), given.c.position),
        sa.select(added.c.value, PLAYBOOKS, added.c.position)
        .where(~file_jsonb.contains(sa.func.jsonb_build_array(added.c.value))),
    ).subquery("merged")
    kept = ~sa.type_coerce(c.tags_removed, JSONB()).contains(
        sa.func.jsonb_build_array(both.c.value))
    ordered = aggregate_order_by(both.c.value, both.c.source, both.c.position)
    return (sa.select(sa.func.coalesce(sa.func.jsonb_agg(ordered), sa.text("'[]'::jsonb")))
            .where(kept).scalar_subquery())
