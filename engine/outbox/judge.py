"""Decisions made on a claimed row before it is sent: given up, unknown kind, or blocked.

- A row claimed once more than its connector's attempts allow ends `dead`: its earlier claims
  never finished (each crashed or killed its worker), and trying again would loop forever.
- A row for a connector that is not installed ends `dead`, naming the installed ones
  (`retain outbox retry` re-drives it once the plugin is back).
- A row of a channel in its quiet hours for the customer at as-of is deferred to their end
  (a late dispatch, a retry landing at night), its attempt given back.
- An email to an address unsubscribed or bounced since the plan ends `suppressed`, with the
  reason (RELIABILITY 16): the connector's own `blocked` check, on the frozen recipient, any
  letter case (RELIABILITY 17).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from email.utils import parseaddr
from typing import Any

import sqlalchemy as sa

from engine.outbox.claim import Claimed
from engine.outbox.idset import among
from engine.store.tables import attempts, customers, suppressions


def finished_attempts(connection: sa.Connection, ids: Sequence[int]) -> dict[int, int]:
    """How many attempts of each action were recorded (the rest crashed their worker)."""
    if not ids:
        return {}
    query = (sa.select(attempts.c.action_id, sa.func.count())
             .where(among(connection.dialect, attempts.c.action_id, ids))
             .group_by(attempts.c.action_id))
    return {action: count for action, count in connection.execute(query).all()}


def gave_up_reason(row: Claimed, maximum: int, finished: int) -> str:
    """Why a row claimed past its connector's attempts is dead."""
    crashed = max(1, row.attempts - 1 - finished)
    return (f"gave up after {row.attempts - 1} attempts: it crashed its worker {crashed} "
            f"time(s) (killed, or died mid-send); the {row.connector} connector allows "
            f"{maximum}")


def recipient(payload: Mapping[str, Any]) -> str | None:
    """The bare address a frozen email payload goes to: its `address`, else read from `to`
    (`"Ann" <ann@x>` -> `ann@x`)."""
    address = payload.get("address")
    if isinstance(address, str) and address.strip():
        return address.strip()
    value = payload.get("to")
    if isinstance(value, str) and value.strip():
        return parseaddr(value)[1] or value.strip()
    return None


def addresses(connection: sa.Connection, rows: Sequence[Claimed]) -> dict[int, str | None]:
    """Each email row's recipient: the frozen one, else the customer's current address."""
    found = {row.id: recipient(row.payload) for row in rows}
    missing = sorted({row.customer_id for row in rows if found[row.id] is None})
    if missing:
        current = dict(connection.execute(
            sa.select(customers.c.customer_id, customers.c.email)
            .where(among(connection.dialect, customers.c.customer_id, missing))).all())
        for row in rows:
            if found[row.id] is None:
                found[row.id] = current.get(row.customer_id)
    return found


def suppressed(connection: sa.Connection, wanted: Sequence[str]) -> dict[str, str]:
    """Lower-cased address -> reason, for the suppressed ones among `wanted`."""
    lowered = sorted({address.strip().lower() for address in wanted})
    if not lowered:
        return {}
    query = sa.select(suppressions.c.email, suppressions.c.reason).where(
        among(connection.dialect, suppressions.c.email, lowered))  # stored lower-cased
    return {email.lower(): reason for email, reason in connection.execute(query).all()}


def time_zones(connection: sa.Connection, ids: Sequence[str]) -> dict[str, str | None]:
    """Each customer's time zone name (None: the configured default applies)."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    return dict(connection.execute(sa.select(customers.c.customer_id, customers.c.timezone)
                                   .where(among(connection.dialect, customers.c.customer_id,
                                                wanted))).all())
