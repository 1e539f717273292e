"""The rows an outcome writes in its own transaction: exactly once by the action's key.

An in-database connector (task, points, tag) sends nothing: `send` returns
`Sent(writes=(Write(kind, values), ...))` and the dispatcher applies each here, in the same
transaction that marks the action `sent`. Exactly-once then rests on one unique key in one
transaction (DESIGN 3): a re-run after a crash inserts nothing twice (`ON CONFLICT DO NOTHING`
on the idempotency key), and a balance or an event follows only a ledger row that was inserted.

Kinds: `task` (a tasks row), `points` (a ledger row; then the balance and a `points_awarded`
event), `tags` (engine/outbox/tags.py), `event` (an event the engine records). The email facts
(`email_sent` and `last_emailed_at`, RELIABILITY 7) are written for every sent email, batched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from engine.clock import aware_utc
from engine.outbox.bulk import Bulk
from engine.outbox.claim import Claimed
from engine.outbox.idset import among
from engine.store.facts import EMAIL_SENT
from engine.store.status import TASK_OPEN
from engine.store.tables import customers, events, points, suppressions, tasks

POINTS_AWARDED = "points_awarded"


def insert_new(connection: sa.Connection, table: sa.Table, key: str) -> Any:
    """`INSERT ... ON CONFLICT (key) DO NOTHING` in this connection's dialect."""
    module = postgresql if connection.dialect.name == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing(index_elements=[key])


def apply(connection: sa.Connection, kind: str, values: Mapping[str, Any], row: Claimed,
          as_of: datetime) -> None:
    """Apply one `Write` of an action's outcome; an unknown kind is a connector's bug."""
    writer = WRITERS.get(kind)
    if writer is None:
        raise ValueError(f"action {row.id} ({row.connector}): unknown write kind {kind!r} "
                         f"(known: {', '.join(sorted(WRITERS))})")
    writer(connection, values, row, as_of)


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return None if value is None else aware_utc(value)
    return aware_utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))


def write_task(connection: sa.Connection, values: Mapping[str, Any], row: Claimed,
               as_of: datetime) -> None:
    """A follow-up task, once per key."""
    connection.execute(insert_new(connection, tasks, "idempotency_key").values(
        idempotency_key=row.key, customer_id=values.get("customer_id", row.customer_id),
        playbook_id=row.playbook_id, title=values["title"], assignee=values.get("assignee"),
        note=values.get("note"), due_at=_time(values.get("due_at")), status=TASK_OPEN,
        created_at=as_of))


def write_points(connection: sa.Connection, values: Mapping[str, Any], row: Claimed,
                 as_of: datetime) -> None:
    """A ledger line once per key; only when it is new, the balance and `points_awarded`."""
    customer_id, amount = values.get("customer_id", row.customer_id), int(values["amount"])
    inserted = connection.execute(insert_new(connection, points, "idempotency_key").values(
        idempotency_key=row.key, customer_id=customer_id, playbook_id=row.playbook_id,
        amount=amount, reason=values.get("reason"), created_at=as_of
    ).returning(points.c.id)).first()
    if inserted is None:
        return
    connection.execute(sa.update(customers).where(customers.c.customer_id == customer_id)
                       .values(points_balance=customers.c.points_balance + amount))
    connection.execute(insert_new(connection, events, "event_id").values(
        event_id=row.key, customer_id=customer_id, type=POINTS_AWARDED, occurred_at=as_of,
        amount=amount, properties={"reason": values.get("reason"), "playbook": row.playbook_id}))


def write_tags(connection: sa.Connection, values: Mapping[str, Any], row: Claimed,
               as_of: datetime) -> None:
    """Playbook tags, through the one writer of customers' tag columns."""
    try:
        from engine.outbox.tags import apply_tags
    except ImportError as exc:  # the tag connector's write ships with it (issue 12, tags part)
        raise RuntimeError(f"action {row.id}: a tags write needs engine/outbox/tags.py "
                           "(apply_tags), which is not installed") from exc
    apply_tags(connection, values.get("customer_id", row.customer_id),
               list(values.get("add", ())), list(values.get("remove", ())))


def write_event(connection: sa.Connection, values: Mapping[str, Any], row: Claimed,
                as_of: datetime) -> None:
    """An event the engine records (at as-of unless given), once per event id."""
    kind = values["type"]
    connection.execute(insert_new(connection, events, "event_id").values(
        event_id=values.get("event_id", f"{row.key}:{kind}"),
        customer_id=values.get("customer_id", row.customer_id), type=kind,
        occurred_at=_time(values.get("occurred_at")) or as_of, amount=values.get("amount"),
        score=values.get("score"), properties=dict(values.get("properties") or {})))


WRITERS = {"task": write_task, "points": write_points, "tags": write_tags, "event": write_event}


def record_emails(connection: sa.Connection, sent: Sequence[Claimed], as_of: datetime) -> None:
    """One `email_sent` per action key (a lost-ack re-send records none twice) and
    `last_emailed_at = max(it, as_of)`, for a batch of sent emails: one statement each."""
    if not sent:
        return
    bulk = _events_bulk(connection.dialect)
    bulk.execute(connection, [[row.key, row.customer_id, bulk.document(_email_properties(row))]
                              for row in sent], {"type": EMAIL_SENT, "occurred_at": as_of})
    connection.execute(
        sa.update(customers)
        .where(among(connection.dialect, customers.c.customer_id,
                     sorted({row.customer_id for row in sent})),
               sa.or_(customers.c.last_emailed_at.is_(None),
                      customers.c.last_emailed_at < as_of))
        .values(last_emailed_at=as_of))


@lru_cache(maxsize=8)
def _events_bulk(dialect: sa.Dialect) -> Bulk:
    return Bulk(events, dialect, varying=("event_id", "customer_id", "properties"),
                constant=("type", "occurred_at"), conflict=("event_id",))


def _email_properties(row: Claimed) -> dict[str, Any]:
    properties: dict[str, Any] = {"playbook": row.playbook_id, "action": row.id}
    for name in ("subject", "message_id"):
        if isinstance(row.payload.get(name), str):
            properties[name] = row.payload[name]
    return properties


def suppress(connection: sa.Connection, addresses: Mapping[str, str], as_of: datetime) -> None:
    """Suppress addresses (lower-cased) for a reason (`bounced`), keeping an existing entry."""
    if addresses:
        connection.execute(insert_new(connection, suppressions, "email"), [
            {"email": address.strip().lower(), "reason": reason, "created_at": as_of}
            for address, reason in addresses.items()])
