"""What the synced data calls things: event types and the property keys seen on each type.

Read for the typo warnings of engine/format/references.py (shown by dry-run, and by validate
when a database is given). Kept cheap whatever the number of events:

- the event types: a loose index scan of the (type, occurred_at) index, one seek per type;
- property keys: only for the types a playbook reads properties of, the keys of that type's
  latest SAMPLE events (the index again, newest first). A named key missing from the sample is
  looked for in the type's latest BOUND events before it is called unseen, so a rare key is not
  flagged, and a typo costs one bounded scan.

Only reads.
"""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa

from engine.errors import Issue
from engine.format.playbook import Playbook
from engine.format.references import Reference, Vocabulary, references, unseen
from engine.format.validation import locate
from engine.query.evaluate import distinct_values
from engine.store.dialect import json_reading
from engine.store.facts import events

SAMPLE = 1000
BOUND = 100_000


def typo_warnings(connection: sa.Connection, playbooks: list[Playbook]) -> list[Issue]:
    """Each event type or property the playbooks name that the synced data never had."""
    found = {playbook.id: references(playbook) for playbook in playbooks}
    vocabulary = read_vocabulary(connection, [ref for refs in found.values() for ref in refs])
    return sorted(locate(playbook, problem) for playbook in playbooks
                  for problem in unseen(found[playbook.id], vocabulary))


def read_vocabulary(connection: sa.Connection, refs: list[Reference]) -> Vocabulary:
    """The synced event types, and the keys seen on the types whose properties `refs` name."""
    types = frozenset(distinct_values(connection, events.c.type))
    wanted: dict[str | None, set[str]] = defaultdict(set)
    for ref in refs:
        if ref.is_property and (ref.event_type is None or ref.event_type in types):
            wanted[ref.event_type].add(ref.name)
    keys: dict[str, set[str]] = defaultdict(set)
    for event_type, names in wanted.items():
        kinds = [event_type] if event_type is not None else sorted(types)
        for kind in kinds:
            keys[kind] |= sampled_keys(connection, kind)
        for name in names - set().union(*(keys[kind] for kind in kinds)):
            owner = next((kind for kind in kinds if has_key(connection, kind, name)), None)
            if owner is not None:
                keys[owner].add(name)
    return Vocabulary(types, {kind: frozenset(found) for kind, found in keys.items()})


def _latest(event_type: str, limit: int) -> sa.Subquery:
    return (sa.select(events.c.properties).where(events.c.type == event_type)
            .order_by(events.c.occurred_at.desc()).limit(limit).subquery())


def sampled_keys(connection: sa.Connection, event_type: str) -> set[str]:
    """The property keys of the type's latest SAMPLE events."""
    found: set[str] = set()
    for properties in connection.execute(sa.select(_latest(event_type, SAMPLE))).scalars():
        if isinstance(properties, dict):
            found.update(key for key, value in properties.items() if value is not None)
    return found


def has_key(connection: sa.Connection, event_type: str, key: str) -> bool:
    """Whether one of the type's latest BOUND events has `key` (with a value)."""
    latest = _latest(event_type, BOUND)
    try:
        present = ~json_reading(latest.c.properties, key, "missing")
    except ValueError:  # a name no JSON path can hold (quotes): never seen
        return False
    query = sa.select(sa.literal(1)).select_from(latest).where(present).limit(1)
    return connection.execute(query).first() is not None
