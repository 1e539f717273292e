"""The writes a person makes by hand: unsubscribe, re-drive dead actions, close tasks, and the
one write consent needs (the signing key the engine keeps for itself).

Each function takes a connection inside the caller's transaction, so a command's whole effect
commits or rolls back as one, and each write is a single conditional statement (`UPDATE ...
WHERE status = 'dead'`, `INSERT ... ON CONFLICT DO NOTHING`), so two people, or a person and a
running dispatcher, cannot both win: whoever loses is told what the row is now.

Unsubscribe marks the address's waiting email actions `suppressed` in the same transaction,
rather than leaving them for the dispatcher's send-time check (which still runs, for a row
claimed at this moment or for an address the customer record no longer carries): `outbox list`
then says at once what will not be sent, and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.clock import utcnow
from engine.consent import SIGNING_KEY_NAME, new_key, require_address, verify_token
from engine.errors import InputError
from engine.store.dialect import insert_ignoring
from engine.store.status import DEAD, RETRYING, SUPPRESSED, TASK_DONE, WAITING
from engine.store.tables import actions, customers, secrets, suppressions, tasks

UNSUBSCRIBED = "unsubscribed"
SECRET_KEY_ENV = "RETAIN_SECRET_KEY"
MIN_SECRET_KEY = 16
EMAIL_CONNECTOR = "email"


# --- the signing key -----------------------------------------------------------------------------


def signing_key(connection: sa.Connection, settings: Any) -> bytes:
    """The key unsubscribe tokens are signed with: `RETAIN_SECRET_KEY` when set, else a random
    key made once and kept in `engine_secrets`, so links survive restarts and every replica
    signs and verifies alike.

    Race-safe on both databases: every process inserts a candidate with ON CONFLICT DO NOTHING
    and then reads back whichever insert won (on PostgreSQL at READ COMMITTED the read is a new
    snapshot that sees a winner committed meanwhile). The caller commits.
    """
    configured = _secret(getattr(settings, "secret_key", None))
    if configured:
        if len(configured) < MIN_SECRET_KEY:
            raise InputError(f"{SECRET_KEY_ENV} is too short: use at least {MIN_SECRET_KEY} "
                             "random characters (e.g. `python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))'`)")
        return configured.encode()
    stored = _stored_key(connection)
    if stored is None:
        _insert_ignore(connection, secrets, {"name": SIGNING_KEY_NAME, "value": new_key(),
                                             "created_at": utcnow()})
        stored = _stored_key(connection)
    if stored is None:  # pragma: no cover - the insert or a competitor's row is there
        raise RuntimeError("the unsubscribe signing key could not be stored")
    return stored.encode()


def _stored_key(connection: sa.Connection) -> str | None:
    return connection.execute(sa.select(secrets.c.value).where(
        secrets.c.name == SIGNING_KEY_NAME)).scalar_one_or_none()


def _secret(value: Any) -> str | None:
    """A plain string from a pydantic SecretStr, a str, or None."""
    if value is None:
        return None
    reveal = getattr(value, "get_secret_value", None)
    return str(reveal() if reveal is not None else value) or None


def _insert_ignore(connection: sa.Connection, table: sa.Table, values: dict[str, Any]) -> int:
    """INSERT a row unless its primary key is taken; 1 if this call inserted it, else 0.

    Counted by RETURNING, not `rowcount`: psycopg reports -1 for an INSERT that did nothing."""
    keys = [column.name for column in table.primary_key.columns]
    statement = insert_ignoring(table, connection.dialect, keys).values(**values).returning(
        *table.primary_key.columns)
    return len(connection.execute(statement).all())


# --- unsubscribe ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unsubscribed:
    """What `unsubscribe` did: the address as stored, whether it was suppressed before (and
    why), and how many waiting email actions it stopped."""

    address: str
    already: str | None  # the earlier reason (unsubscribed, bounced), or None: new
    stopped: int


def unsubscribe(connection: sa.Connection, address: str, now: datetime) -> Unsubscribed:
    """Suppress `address` (lower-cased) as unsubscribed and stop its waiting email actions.

    An address suppressed before keeps its reason and time (a bounce stays a bounce); its
    waiting email actions are stopped all the same, which is what the person asked for.
    """
    email = require_address(address)
    inserted = _insert_ignore(connection, suppressions, {"email": email, "reason": UNSUBSCRIBED,
                                                         "created_at": now})
    already = None if inserted else connection.execute(sa.select(suppressions.c.reason).where(
        suppressions.c.email == email)).scalar_one()
    reason = f"address is suppressed ({already or UNSUBSCRIBED})"  # blocked()'s wording
    owners = sa.select(customers.c.customer_id).where(sa.func.lower(customers.c.email) == email)
    stopped = connection.execute(
        sa.update(actions).where(actions.c.connector == EMAIL_CONNECTOR,
                                 actions.c.status.in_(WAITING),
                                 actions.c.customer_id.in_(owners))
        .values(status=SUPPRESSED, reason=reason, updated_at=now)).rowcount
    return Unsubscribed(email, already, stopped)


def unsubscribe_by_token(connection: sa.Connection, token: str, settings: Any,
                         now: datetime) -> Unsubscribed:
    """Apply an unsubscribe link's token (`retain unsubscribe --token`, later the daemon's
    one-click POST): verified with the signing key, then as `unsubscribe`. A forged or altered
    token is an InputError and changes nothing."""
    return unsubscribe(connection, verify_token(token, signing_key(connection, settings)), now)


# --- retry ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retried:
    """What a retry did: rows put back, and dead rows left dead because they never had a
    message to send (dead-lettered at commit: a template that failed for the customer)."""

    retried: int
    unsendable: int = 0


def retry_action(connection: sa.Connection, action_id: int, due: datetime) -> Retried:
    """Put one dead action back: `retrying`, due at `due`, its attempts counted from 0 again.

    Its earlier attempts and their errors stay in `action_attempts` (and `last_error` on the row
    until the next attempt replaces it). Anything but a dead row is refused with what it is.
    """
    done = connection.execute(_retry_statement(due).where(actions.c.id == action_id)).rowcount
    if done:
        return Retried(done)
    row = connection.execute(sa.select(actions.c.status, actions.c.attempts,
                                       actions.c.last_error).where(actions.c.id == action_id)
                             ).first()
    if row is None:
        raise InputError(f"no action {action_id} in the outbox")
    if row.status == DEAD:
        raise InputError(f"action {action_id} was dead-lettered when planned, before any "
                         f"attempt ({row.last_error or 'no message was made'}): it has no "
                         "message to send; fix the cause and let a later run plan anew")
    raise InputError(f"action {action_id} is {row.status}, not {DEAD}: only dead actions are "
                     "retried")


def retry_dead(connection: sa.Connection, due: datetime, playbook: str | None = None) -> Retried:
    """Put every dead action (of one playbook, if given) back, as `retry_action` does one."""
    scope = [actions.c.playbook_id == playbook] if playbook is not None else []
    retried = connection.execute(_retry_statement(due).where(*scope)).rowcount
    unsendable = connection.execute(sa.select(sa.func.count()).select_from(actions).where(
        actions.c.status == DEAD, actions.c.attempts == 0, *scope)).scalar_one()
    return Retried(retried, unsendable)


def _retry_statement(due: datetime) -> sa.Update:
    """Dead rows that were attempted (attempts > 0: dead at send time) back to `retrying`.

    A row dead with 0 attempts was dead-lettered at commit (its payload never rendered), so
    there is nothing to re-send."""
    return sa.update(actions).where(actions.c.status == DEAD, actions.c.attempts > 0).values(
        status=RETRYING, attempts=0, next_attempt_at=due, lease_until=None, leased_by=None,
        updated_at=due)


# --- tasks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskDone:
    """What `complete_task` did: whether the task was closed now or already, and when."""

    task_id: int
    title: str
    already: bool
    done_at: datetime | None


def complete_task(connection: sa.Connection, task_id: int, now: datetime) -> TaskDone:
    """Mark a follow-up task done at `now`; a task done before keeps its first `done_at`."""
    closed = connection.execute(sa.update(tasks).where(
        tasks.c.id == task_id, tasks.c.status != TASK_DONE).values(status=TASK_DONE,
                                                                   done_at=now)).rowcount
    row = connection.execute(sa.select(tasks.c.title, tasks.c.done_at).where(
        tasks.c.id == task_id)).first()
    if row is None:
        raise InputError(f"no task {task_id}")
    return TaskDone(task_id, row.title, already=not closed, done_at=row.done_at)

