"""Playbook versions at run time: recorded with their sources, looked up for resumed enrollments,
and `on_change: exit` applied.

- **record**: each enabled playbook's version is written once, with the YAML text and the text of
  every template file it uses (`Playbook.source`, `Playbook.templates`: exactly what was hashed),
  `created_at` and `enabled_at` the run's as-of. A version already recorded is left as it is, so
  the first enable of a playbook never moves (evaluate.prepare reads it for `backfill: false`).
  `INSERT ... ON CONFLICT DO NOTHING` on the unique (playbook_id, version): two runs at once
  cannot both write it.
- **on_change: exit**: the open enrollments (active, waiting) of an older version end `exited`
  ("playbook changed to version X") and their pending actions (planned, deferred, retrying) are
  `cancelled` with the same reason, in two set-based statements. A claimed action is being sent
  and is left to its outcome. With `on_change: keep` nothing changes: an enrollment finishes on
  its own version (engine/query/versions.py reloads it, templates included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from jinja2 import Environment

from engine.errors import PlaybookError
from engine.format.playbook import Playbook
from engine.outbox.lifecycle import end, in_flight
from engine.plan.build import playbook_environment
from engine.query.versions import Versions
from engine.store import status as st
from engine.store.dialect import insert_ignoring
from engine.store.tables import enrollments, versions

Lookup = Callable[[str, str], "tuple[Playbook, Environment] | None"]


@dataclass(frozen=True)
class VersionChange:
    """A version recorded by this run: `previous` is the one recorded before it (None: the
    playbook's first version, its first enable)."""

    playbook_id: str
    version: str
    previous: str | None


def record_versions(connection: sa.Connection, playbooks: list[Playbook],
                    as_of: datetime) -> dict[str, VersionChange]:
    """Record each enabled playbook's version unless it is known; returns, per playbook id, the
    version this call recorded (the ones that changed)."""
    enabled = [p for p in playbooks if p.document.enabled]
    if not enabled:
        return {}
    v = versions.c
    known: dict[str, list[str]] = {}
    for pid, version in connection.execute(
            sa.select(v.playbook_id, v.version).where(v.playbook_id.in_({p.id for p in enabled}))
            .order_by(v.id)):
        known.setdefault(pid, []).append(version)
    new = [p for p in enabled if p.version not in known.get(p.id, [])]
    if new:
        connection.execute(insert_ignoring(versions, connection.dialect,
                                           ["playbook_id", "version"]),
                           [_row(p, as_of) for p in new])
    return {p.id: VersionChange(p.id, p.version, (known.get(p.id) or [None])[-1])
            for p in new}


def _row(playbook: Playbook, as_of: datetime) -> dict[str, Any]:
    return {"playbook_id": playbook.id, "version": playbook.version, "source": playbook.source,
            "templates": dict(playbook.templates or {}), "created_at": as_of,
            "enabled_at": as_of}


def exit_changed(connection: sa.Connection, playbook: Playbook, as_of: datetime) -> int:
    """`on_change: exit`: end the enrollments of other versions still under way (open, or
    completed with actions not yet gone: the same `in_flight` as `exit_when`) and cancel their
    pending actions; returns how many ended (0 with `on_change: keep`)."""
    if playbook.document.on_change != "exit":
        return 0
    e = enrollments.c
    why = f"playbook changed to version {playbook.version}"
    older = list(connection.execute(
        sa.select(e.id).where(e.playbook_id == playbook.id, e.version != playbook.version,
                              in_flight())).scalars())
    for start in range(0, len(older), 500):
        end(connection, [{"ident": ident, "why": why} for ident in older[start:start + 500]],
            as_of, st.EXITED)
    return len(older)


def version_lookup(writer: sa.Engine, playbooks: list[Playbook],
                   connectors: Mapping[str, Any] | None = None) -> Lookup:
    """(playbook id, version) -> that version and the environment of its templates, for
    planning a resumed enrollment: the loaded playbook when it is the current version, else the
    recorded one (parsed once per version); None when it was never recorded or no longer
    loads (a connector it uses is gone), which the caller reports for that enrollment."""
    current = {(p.id, p.version): p for p in playbooks}
    found: dict[tuple[str, str], tuple[Playbook, Environment] | None] = {}
    stored = Versions(connectors)

    def lookup(playbook_id: str, version: str) -> tuple[Playbook, Environment] | None:
        key = (playbook_id, version)
        if key in found:
            return found[key]
        if key in current:
            playbook = current[key]
            found[key] = playbook, playbook_environment(playbook)
            return found[key]
        found[key] = None
        try:
            with writer.connect() as connection:  # once per version, beside the caller's
                version_found = stored.find(connection, playbook_id, version)
        except PlaybookError:
            return None
        if version_found is not None:
            found[key] = version_found.playbook, version_found.environment
        return found[key]

    return lookup
