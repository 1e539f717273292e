"""Recorded playbook versions read back: a version reloaded as the Playbook it was, and the goal
each version measures.

An enrollment keeps the version it entered with until it ends (DESIGN 3): a run plans a resumed
enrollment's next stage with that version, templates included, even after the playbook file or
its templates were edited or deleted. So a recorded source is parsed exactly as a file is
(engine/format/validation.py `load_stored`: the same strict YAML, the same registries, the same
compile check), its templates come from the recorded texts through the same sandboxed
`make_environment` (a `StoredTemplates` loader instead of the folder), and its version is the
recorded string, whatever a later Retain would hash, because the keys of later stages hash it.

Reading only (engine/outbox/versions.py writes the rows).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from jinja2 import Environment
from pydantic import ValidationError

from engine.errors import PlaybookError
from engine.format.playbook import Goal, Playbook
from engine.format.registry import load_connectors
from engine.format.templates import make_environment
from engine.format.validation import load_stored
from engine.format.yamlsource import load_yaml
from engine.query.checks import compile_problems
from engine.store.tables import versions

Pair = tuple[str, str]  # (playbook id, version)


def stored_label(playbook_id: str, version: str) -> str:
    """What stands for the file of a recorded version in messages and in `Playbook.file`."""
    return f"{playbook_id}@{version} (recorded version)"


@dataclass(frozen=True)
class StoredVersion:
    """A recorded version, parsed, and the environment its recorded templates render in: what
    the Planner takes for an enrollment of this version."""

    playbook: Playbook
    environment: Environment


class Versions:
    """Recorded versions reloaded once each per (playbook id, version): a run resuming many
    enrollments of one version parses it once and compiles each template once."""

    def __init__(self, connectors: Mapping[str, Any] | None = None) -> None:
        self._connectors = connectors
        self._found: dict[Pair, StoredVersion | None] = {}

    def find(self, connection: sa.Connection, playbook_id: str,
             version: str) -> StoredVersion | None:
        """The recorded version, or None when it was never recorded. Raises PlaybookError when
        the recorded source no longer parses (a connector it uses is not installed)."""
        key = (playbook_id, version)
        if key not in self._found:
            row = _row(connection, playbook_id, version)
            self._found[key] = None if row is None else self._parse(playbook_id, version, *row)
        return self._found[key]

    def load(self, connection: sa.Connection, playbook_id: str, version: str) -> StoredVersion:
        """The recorded version; PlaybookError naming it when it is not recorded."""
        found = self.find(connection, playbook_id, version)
        if found is None:
            raise PlaybookError(f"version {version} of playbook {playbook_id!r} is not recorded")
        return found

    def _parse(self, playbook_id: str, version: str, source: str,
               templates: Mapping[str, str]) -> StoredVersion:
        label = stored_label(playbook_id, version)
        connectors = load_connectors() if self._connectors is None else self._connectors
        playbook, issues = load_stored(source, label, templates, connectors,
                                       (compile_problems,))
        if playbook is None:
            raise PlaybookError(f"the recorded version {version} of playbook {playbook_id!r} "
                                "no longer loads", issues)
        playbook = replace(playbook, version=version)  # later keys hash the recorded one
        return StoredVersion(playbook, make_environment(templates=playbook.templates or {},
                                                        label=f"{label} templates"))


_PARSED: dict[tuple[str, str, str], StoredVersion] = {}


def load_version(connection: sa.Connection, playbook_id: str, version: str) -> Playbook:
    """A recorded version as the Playbook it was (its `templates` the recorded texts); the
    environment to render it with is `version_environment`. Parsed once per (id, version)
    and recorded content; PlaybookError when the version is not recorded or no longer loads."""
    return _cached(connection, playbook_id, version).playbook


def version_environment(connection: sa.Connection, playbook_id: str,
                        version: str) -> Environment:
    """The sandboxed environment of a recorded version's templates (cached with it)."""
    return _cached(connection, playbook_id, version).environment


def _cached(connection: sa.Connection, playbook_id: str, version: str) -> StoredVersion:
    row = _row(connection, playbook_id, version)
    if row is None:
        raise PlaybookError(f"version {version} of playbook {playbook_id!r} is not recorded")
    digest = hashlib.sha256(repr((row[0], sorted(row[1].items()))).encode()).hexdigest()
    key = (playbook_id, version, digest)  # the content too: two databases may disagree
    if key not in _PARSED:
        _PARSED[key] = Versions()._parse(playbook_id, version, *row)
    return _PARSED[key]


def _row(connection: sa.Connection, playbook_id: str,
         version: str) -> tuple[str, dict[str, str]] | None:
    v = versions.c
    row = connection.execute(sa.select(v.source, v.templates).where(
        v.playbook_id == playbook_id, v.version == version)).first()
    return None if row is None else (row[0], dict(row[1] or {}))


def version_goals(connection: sa.Connection, pairs: Iterable[Pair]) -> dict[Pair, Goal | None]:
    """The `goal:` of each recorded version among `pairs` (None: that version has none), in the
    order they were recorded; pairs never recorded are left out.

    Only the goal is read (strict YAML, then the Goal model): a report must not lose a version's
    goal because a connector it used is no longer installed."""
    wanted = sorted(set(pairs))
    found: list[tuple[int, Pair, Goal | None]] = []
    v = versions.c
    for start in range(0, len(wanted), 200):
        chunk = wanted[start:start + 200]
        rows = connection.execute(
            sa.select(v.id, v.playbook_id, v.version, v.source)
            .where(sa.or_(*(sa.and_(v.playbook_id == pid, v.version == version)
                            for pid, version in chunk))))
        found += [(ident, (pid, version), _goal(source, stored_label(pid, version)))
                  for ident, pid, version, source in rows]
    return {pair: goal for _ident, pair, goal in sorted(found, key=lambda row: row[0])}


@functools.lru_cache(maxsize=256)
def _goal(source: str, label: str) -> Goal | None:
    """The goal of a recorded source (parsed once: every run judges the open enrollments' goals)."""
    document, _ = load_yaml(source, label)
    data = document.data if document is not None else None
    if not isinstance(data, dict) or data.get("goal") is None:
        return None
    try:
        return Goal.model_validate(data["goal"])
    except ValidationError:
        return None
