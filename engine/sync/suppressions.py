"""Sync of suppressed addresses (unsubscribed, bounced): the addresses that get no email.

Each row is `email` with an optional `reason` (default `unsubscribed`) and `suppressed_at`
(default: the time of the sync). Addresses are stored lower-cased and matched that way, so
`Ada@Example.com` in one export and `ada@example.com` in another are one suppression. Like
customers, a known address is updated with the values a row gives (a later row of the same file
wins) and counted unchanged when they already match; nothing is ever deleted here: lifting a
suppression is a decision for a person, not a side effect of a shorter export.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.clock import utcnow
from engine.store.tables import suppressions
from engine.sync.batches import (
    Progress,
    bytes_progress,
    nothing,
    parse_batch,
    require_columns,
    run_batches,
)
from engine.sync.bulk import insert_rows
from engine.sync.files import Row, open_data_file
from engine.sync.report import SyncReport
from engine.sync.rows import EMAIL, RowProblem, blank, parse_time

DEFAULT_REASON = "unsubscribed"
SuppressionValues = tuple[str, str | None, datetime | None]
"""(email lower-cased, reason or None, suppressed_at or None): None = not given, keep or default."""
BATCH = 5_000


def sync_suppressions(engine: sa.Engine, path: Path, fmt: str | None = None,
                      progress: Progress | None = None,
                      now: datetime | None = None) -> SyncReport:
    """Load the suppressed addresses of a CSV/JSONL file; `progress` gets bytes read."""
    with open_data_file(path, fmt) as data:
        require_columns(data, "suppressions")
        return ingest_suppressions(engine, data.rows, str(path), bytes_progress(data, progress),
                                   now)


def ingest_suppressions(engine: sa.Engine, rows: Iterable[Row], source: str,
                        progress: Progress | None = None,
                        now: datetime | None = None) -> SyncReport:
    """Upsert suppression rows by lower-cased address."""
    report = SyncReport("suppressions", source)
    moment = now or utcnow()

    def start(connection: sa.Connection) -> tuple[object, object]:
        return (lambda batch: _upsert(connection, batch, report, moment)), nothing

    return run_batches(engine, rows, report, start, progress, BATCH,  # type: ignore[arg-type]
                   refresh_each_batch=False, commit_every=BATCH)


def suppression_values(row: dict[str, Any]) -> SuppressionValues:
    """The values of one suppression row, or RowProblem with every reason it is bad."""
    problems: list[str] = []
    email = _text(row, "email", problems)
    if email is None:
        problems.append("missing email")
    elif not EMAIL.fullmatch(email):
        problems.append(f"bad email {row['email']!r}: not an email address")
    reason = _text(row, "reason", problems)
    when = None
    if not blank(row.get("suppressed_at")):
        try:
            when = parse_time(row["suppressed_at"])
        except (ValueError, OverflowError):
            problems.append(f"bad suppressed_at {row['suppressed_at']!r}: not an ISO 8601 time")
    if problems:
        raise RowProblem("; ".join(problems))
    return (email or "").lower(), reason, when


def _text(row: dict[str, Any], key: str, problems: list[str]) -> str | None:
    value = row.get(key)
    if blank(value):
        return None
    if not isinstance(value, str):
        problems.append(f"bad {key} {value!r}: expected text")
        return None
    return value.strip()


def _upsert(connection: sa.Connection, batch: list[Row], report: SyncReport,
            now: datetime) -> set[str]:
    """Insert new addresses and update changed ones; no customer's facts change."""
    pending: dict[str, SuppressionValues] = {}
    for _, _, values in parse_batch(batch, suppression_values, report):
        earlier = pending.get(values[0])
        if earlier is not None:
            merged = (values[0], values[1] or earlier[1], values[2] or earlier[2])
            report.unchanged += merged == earlier
            report.updated += merged != earlier
            values = merged
        pending[values[0]] = values
    found = connection.execute(sa.select(suppressions).where(
        suppressions.c.email.in_(list(pending)))).all() if pending else []
    stored = {row.email: row for row in found}
    inserts, updates = [], []
    for email, (_, reason, when) in pending.items():
        old = stored.get(email)
        if old is None:
            inserts.append({"email": email, "reason": reason or DEFAULT_REASON,
                            "created_at": when or now})
            continue
        new = {"reason": reason or old.reason, "created_at": when or old.created_at}
        if (new["reason"], new["created_at"]) == (old.reason, old.created_at):
            report.unchanged += 1
        else:
            updates.append({"_email": email, **new})
    insert_rows(connection, suppressions, inserts)
    if updates:
        connection.execute(
            sa.update(suppressions).where(suppressions.c.email == sa.bindparam("_email"))
            .values(reason=sa.bindparam("reason"), created_at=sa.bindparam("created_at")),
            updates)
    report.inserted += len(inserts)
    report.updated += len(updates)
    return set()
