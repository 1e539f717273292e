"""Outbox rows in tests, with the payload kept in its own table (`action_payloads`).

A test that writes an outbox row by hand gives its payload like any other column;
`insert_actions` puts it where the engine keeps it. A test that reads rows back selects
`select_actions()`: the `actions` columns plus `payload`, as one row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from engine.store.tables import actions, payloads

WITH_PAYLOAD = actions.outerjoin(payloads, payloads.c.action_id == actions.c.id)
"""`actions` joined to its payloads (a row written without one reads a NULL payload)."""
PAYLOAD = payloads.c.payload


def insert_actions(connection: sa.Connection, rows: Iterable[Mapping[str, Any]]) -> list[int]:
    """Insert outbox rows given with a `payload` (default `{}`); their ids, in order."""
    rows = list(rows)
    if not rows:
        return []
    plain = [{name: value for name, value in row.items() if name != "payload"} for row in rows]
    ids = list(connection.execute(
        sa.insert(actions).returning(actions.c.id, sort_by_parameter_order=True),
        plain).scalars())
    connection.execute(sa.insert(payloads), [
        {"action_id": ident, "payload": row.get("payload") or {}}
        for ident, row in zip(ids, rows, strict=True)])
    return ids


def insert_action(connection: sa.Connection, **values: Any) -> int:
    """One outbox row (`payload` among the values); its id."""
    return insert_actions(connection, [values])[0]


def select_actions(*where: Any) -> sa.Select[Any]:
    """`SELECT actions.*, payload` with the filters given."""
    return sa.select(actions, PAYLOAD).select_from(WITH_PAYLOAD).where(*where)
